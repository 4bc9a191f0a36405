//! Op attributes as they appear in the text form: `{axis = 1, name = "x", perm = [1, 0]}`.

use std::fmt;

/// One attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// An integer.
    Int(i64),
    /// A float; printed in Rust's shortest round-trip form.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A quoted string.
    Str(String),
    /// A bare word naming an enum case (`weight`, `nf4`).
    Ident(String),
    /// A list of integers.
    List(Vec<i64>),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Float(x) => write!(f, "{}", fmt_float(*x)),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Str(s) => write!(f, "{s:?}"),
            AttrValue::Ident(s) => f.write_str(s),
            AttrValue::List(xs) => {
                let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// Formats a float so that it parses back to the same bits and always reads as a float
/// (`1.0`, not `1`).
pub fn fmt_float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E', 'i', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// An ordered list of named attributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attrs(pub Vec<(String, AttrValue)>);

impl Attrs {
    /// Appends an attribute.
    pub fn push(&mut self, key: &str, value: AttrValue) {
        self.0.push((key.to_string(), value));
    }

    fn take(&mut self, key: &str) -> Option<AttrValue> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    fn need(&mut self, key: &str) -> Result<AttrValue, String> {
        self.take(key)
            .ok_or_else(|| format!("missing attribute `{key}`"))
    }

    /// Removes an integer attribute.
    pub fn take_int(&mut self, key: &str) -> Result<i64, String> {
        match self.need(key)? {
            AttrValue::Int(i) => Ok(i),
            other => Err(format!(
                "attribute `{key}` must be an integer, got `{other}`"
            )),
        }
    }

    /// Removes a non-negative integer attribute.
    pub fn take_usize(&mut self, key: &str) -> Result<usize, String> {
        let i = self.take_int(key)?;
        usize::try_from(i).map_err(|_| format!("attribute `{key}` must be non-negative, got {i}"))
    }

    /// Removes an optional non-negative integer attribute.
    pub fn take_usize_or(&mut self, key: &str, default: usize) -> Result<usize, String> {
        if self.0.iter().any(|(k, _)| k == key) {
            self.take_usize(key)
        } else {
            Ok(default)
        }
    }

    /// Removes a float attribute (an integer literal is accepted).
    pub fn take_float(&mut self, key: &str) -> Result<f64, String> {
        match self.need(key)? {
            AttrValue::Float(x) => Ok(x),
            AttrValue::Int(i) => Ok(i as f64),
            other => Err(format!("attribute `{key}` must be a float, got `{other}`")),
        }
    }

    /// Removes an optional boolean attribute.
    pub fn take_bool_or(&mut self, key: &str, default: bool) -> Result<bool, String> {
        match self.take(key) {
            None => Ok(default),
            Some(AttrValue::Bool(b)) => Ok(b),
            Some(other) => Err(format!("attribute `{key}` must be a bool, got `{other}`")),
        }
    }

    /// Removes a string attribute.
    pub fn take_str(&mut self, key: &str) -> Result<String, String> {
        match self.need(key)? {
            AttrValue::Str(s) => Ok(s),
            other => Err(format!("attribute `{key}` must be a string, got `{other}`")),
        }
    }

    /// Removes a bare-word attribute.
    pub fn take_ident(&mut self, key: &str) -> Result<String, String> {
        match self.need(key)? {
            AttrValue::Ident(s) => Ok(s),
            other => Err(format!("attribute `{key}` must be a word, got `{other}`")),
        }
    }

    /// Removes a list of non-negative integers.
    pub fn take_usize_list(&mut self, key: &str) -> Result<Vec<usize>, String> {
        match self.need(key)? {
            AttrValue::List(xs) => xs
                .into_iter()
                .map(|x| {
                    usize::try_from(x)
                        .map_err(|_| format!("attribute `{key}` has a negative entry"))
                })
                .collect(),
            other => Err(format!("attribute `{key}` must be a list, got `{other}`")),
        }
    }

    /// Fails if any attribute was not used.
    pub fn finish(self) -> Result<(), String> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!("unexpected attribute `{k}`")),
        }
    }
}

impl fmt::Display for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        let items: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        write!(f, "{{{}}}", items.join(", "))
    }
}

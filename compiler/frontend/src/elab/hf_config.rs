//! `model m = kind from "folder"`: a Hugging Face model folder's `config.json` sets the
//! module's parameters that name a config key (`hidden: int as "hidden_size"`), and the
//! folder's `model.safetensors` is the weights file. Which keys mean what is written in the
//! model's graft source, not here: this file knows JSON and scalar types only.

use super::eval::ArgVal;
use super::value::Value;
use crate::ast::{Ident, ModuleDef, ScalarType, StrLit};
use crate::diag::Diagnostic;
use std::path::{Path, PathBuf};

/// The folder `from` names, resolved against the spec's folder `base`.
pub fn folder(from: &StrLit, base: &Path) -> PathBuf {
    base.join(&from.value)
}

/// Reads `<folder>/config.json` and gives an argument for every parameter of `def` with a
/// config key that the folder's config sets and `given` does not (explicit arguments win;
/// a key the config lacks, or sets to `null`, leaves the parameter's default).
///
/// # Errors
/// The config cannot be read or parsed, or a value does not fit its parameter's type (the
/// message names the file and the key, at the `from` clause).
pub fn config_args(
    def: &ModuleDef,
    from: &StrLit,
    dir: &Path,
    given: &[ArgVal],
) -> Result<Vec<ArgVal>, Diagnostic> {
    let path = dir.join("config.json");
    let err = |msg: String| Diagnostic::error(from.span, msg, "this model folder");
    let text = crate::source::read_regular(&path).map_err(|e| {
        err(format!("cannot read {}: {e}", path.display()))
            .with_help("a Hugging Face model folder has config.json beside model.safetensors")
    })?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        err(format!(
            "{}:{}:{}: not valid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    let Some(config) = config.as_object() else {
        return Err(err(format!("{} is not a JSON object", path.display())));
    };
    let mut out = Vec::new();
    for p in &def.params {
        let Some(key) = &p.config_key else {
            continue;
        };
        if given
            .iter()
            .any(|a| a.name.as_ref().is_some_and(|n| n.name == p.name.name))
        {
            continue;
        }
        let Some(v) = config.get(&key.value).filter(|v| !v.is_null()) else {
            continue;
        };
        let value = match (p.ty, v) {
            (ScalarType::Int, serde_json::Value::Number(n)) => n.as_i64().map(Value::Int),
            (ScalarType::Float, serde_json::Value::Number(n)) => n.as_f64().map(Value::Float),
            (ScalarType::Bool, serde_json::Value::Bool(b)) => Some(Value::Bool(*b)),
            (ScalarType::String, serde_json::Value::String(s)) => Some(Value::Str(s.clone())),
            _ => None,
        }
        .ok_or_else(|| {
            err(format!(
                "{}: `{}` is {v}, but `{}` of `{}` is {}",
                path.display(),
                key.value,
                p.name.name,
                def.name.name,
                p.ty.name()
            ))
            .with_label(key.span, "the parameter it sets")
        })?;
        out.push(ArgVal {
            name: Some(Ident {
                name: p.name.name.clone(),
                span: from.span,
            }),
            value,
            span: from.span,
        });
    }
    Ok(out)
}

/// The weights file of a model folder: `model.safetensors`, or the index of a sharded
/// checkpoint (`model.safetensors.index.json`), which the runtime opens shard by shard.
///
/// # Errors
/// The folder holds neither.
pub fn weights(from: &StrLit, dir: &Path) -> Result<PathBuf, Diagnostic> {
    for name in ["model.safetensors", "model.safetensors.index.json"] {
        let p = dir.join(name);
        if crate::source::overlay::exists(&p) {
            return Ok(p);
        }
    }
    Err(Diagnostic::error(
        from.span,
        format!(
            "{} has no model.safetensors or model.safetensors.index.json",
            dir.display()
        ),
        "this model folder",
    )
    .with_help("name the weights file with `weights \"...\"`"))
}

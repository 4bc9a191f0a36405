//! A Hugging Face tokenizer: `tokenizer.json` through the `tokenizers` crate (ids identical
//! to Python's `tokenizers` on the same file), plus what `tokenizer_config.json` adds: the
//! special tokens (bos, eos, pad) and the chat template, rendered with minijinja as
//! transformers renders it with jinja2 (`trim_blocks`, `lstrip_blocks`, Python string
//! methods).

use std::path::{Path, PathBuf};

/// A tokenizer and its special tokens.
pub struct TextTokenizer {
    tok: tokenizers::Tokenizer,
    /// Where it was read from (named in errors).
    pub path: PathBuf,
    /// The beginning-of-sequence token, as text and id.
    pub bos: Option<(String, u32)>,
    /// The end-of-sequence token.
    pub eos: Option<(String, u32)>,
    /// The padding token (default: eos).
    pub pad: Option<(String, u32)>,
    /// The chat template (Jinja source).
    pub chat_template: Option<String>,
}

/// One rendered and tokenized record.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Byte offsets of each token in the text.
    pub offsets: Vec<(usize, usize)>,
}

/// A text or a pair of texts tokenized to fit a length, with what models read beside the ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Fitted {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Which text each token belongs to, as BERT's `token_type_ids` (0 or 1).
    pub type_ids: Vec<u32>,
    /// Byte offsets of each token in its own text.
    pub offsets: Vec<(usize, usize)>,
    /// Which text each token came from (`None` for a special token).
    pub sequence: Vec<Option<usize>>,
}

impl TextTokenizer {
    /// Reads `tokenizer.json` from `path` (the file, or a folder holding it) and, beside it,
    /// `tokenizer_config.json` when there is one.
    ///
    /// # Errors
    /// A file cannot be read or parsed (the message names it), or a special token the config
    /// names is not in the vocabulary.
    pub fn open(path: &Path) -> Result<TextTokenizer, String> {
        use graft_frontend::source::overlay;
        // A built binary carries the tokenizer files (`graft build` records them).
        let inside = path.join("tokenizer.json");
        let file = if overlay::get(&inside).is_some() || path.is_dir() {
            inside
        } else {
            path.to_path_buf()
        };
        if overlay::get(&file).is_none() {
            crate::files::regular_file(&file, "tokenizer").map_err(|e| {
                if path.is_dir() {
                    format!("{e} (a Hugging Face model folder has tokenizer.json for text data)")
                } else {
                    e
                }
            })?;
        }
        let bytes = overlay::read_file(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        // Parse once with serde_json first: its errors carry a line and column.
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            return Err(format!(
                "{}:{}:{}: not valid JSON: {e}",
                file.display(),
                e.line(),
                e.column()
            ));
        }
        let tok = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| format!("{}: not a tokenizer: {e}", file.display()))?;
        let mut t = TextTokenizer {
            tok,
            path: file.clone(),
            bos: None,
            eos: None,
            pad: None,
            chat_template: None,
        };
        let config = file.with_file_name("tokenizer_config.json");
        if graft_frontend::source::overlay::exists(&config) {
            t.read_config(&config)?;
        }
        if t.pad.is_none() {
            t.pad = t.eos.clone();
        }
        Ok(t)
    }

    fn read_config(&mut self, path: &Path) -> Result<(), String> {
        let text = graft_frontend::source::read_regular(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}:{}:{}: not valid JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        let special = |key: &str| -> Result<Option<(String, u32)>, String> {
            // A token is a string or an AddedToken object with `content`.
            let s = match v.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    _ => return Err(format!("{}: `{key}` has no `content`", path.display())),
                },
                _ => return Ok(None),
            };
            match self.tok.token_to_id(&s) {
                Some(id) => Ok(Some((s, id))),
                None => Err(format!(
                    "{}: `{key}` is {s:?}, which {} does not have",
                    path.display(),
                    self.path.display()
                )),
            }
        };
        self.bos = special("bos_token")?;
        self.eos = special("eos_token")?;
        self.pad = special("pad_token")?;
        self.chat_template = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: the one called "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        Ok(())
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Tokenizes `text`; `special` applies the post-processor (e.g. a leading bos), as
    /// Python's `encode(text, add_special_tokens=...)`.
    ///
    /// # Errors
    /// The tokenizer fails on this text.
    pub fn encode(&self, text: &str, special: bool) -> Result<Encoded, String> {
        let e = self
            .tok
            .encode(text, special)
            .map_err(|e| format!("cannot tokenize: {e}"))?;
        Ok(Encoded {
            ids: e.get_ids().to_vec(),
            offsets: e.get_offsets().to_vec(),
        })
    }

    /// `a` (and `b`, a pair) tokenized with the special tokens the post-processor adds (as
    /// Python's `tokenizer(a, b, truncation=..., max_length=max_len)`), cut to `max_len`
    /// tokens: from the end of `b` alone with `only_second` (`truncation="only_second"`,
    /// extractive QA's context), else from the end of the longer text first
    /// (`"longest_first"`).
    ///
    /// # Errors
    /// The tokenizer fails, or `only_second` leaves no room for `b`.
    pub fn encode_fit(
        &self,
        a: &str,
        b: Option<&str>,
        max_len: usize,
        only_second: bool,
    ) -> Result<Fitted, String> {
        use tokenizers::{PostProcessor as _, TruncationDirection};
        let enc = |t: &str| {
            self.tok
                .encode(t, false)
                .map_err(|e| format!("cannot tokenize: {e}"))
        };
        let mut ea = enc(a)?;
        let mut eb = b.map(enc).transpose()?;
        let added = self
            .tok
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(eb.is_some()));
        let room = max_len.saturating_sub(added);
        match &mut eb {
            None => ea.truncate(room, 0, TruncationDirection::Right),
            Some(eb) if only_second => {
                let left = room
                    .checked_sub(ea.len())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        format!(
                            "the first text takes {} of the {max_len} tokens, leaving none for \
                         the second",
                            ea.len() + added
                        )
                    })?;
                eb.truncate(left, 0, TruncationDirection::Right);
            }
            Some(eb) => {
                while ea.len() + eb.len() > room {
                    let longer = if ea.len() > eb.len() {
                        &mut ea
                    } else {
                        &mut *eb
                    };
                    let n = longer.len() - 1;
                    longer.truncate(n, 0, TruncationDirection::Right);
                }
            }
        }
        let e = self
            .tok
            .post_process(ea, eb, true)
            .map_err(|e| format!("cannot tokenize: {e}"))?;
        Ok(Fitted {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            offsets: e.get_offsets().to_vec(),
            sequence: e.get_sequence_ids(),
        })
    }

    /// Text from ids, special tokens left out.
    ///
    /// # Errors
    /// The decoder fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tok
            .decode(ids, true)
            .map_err(|e| format!("cannot decode: {e}"))
    }

    /// Renders chat `messages` (a JSON list of `{role, content}`) with the chat template, as
    /// transformers' `apply_chat_template(tokenize=False)` does.
    ///
    /// # Errors
    /// There is no template, or it fails on these messages (its own `raise_exception`
    /// included).
    pub fn render_chat(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let Some(src) = &self.chat_template else {
            return Err(format!(
                "chat records need a chat template, and {} has none (`chat_template` in \
                 tokenizer_config.json)",
                self.path.display()
            ));
        };
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<(), minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", src)
            .map_err(|e| format!("the chat template in {}: {e}", self.path.display()))?;
        let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
        let text = |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| s.clone());
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => text(&self.bos),
            eos_token => text(&self.eos),
            pad_token => text(&self.pad),
        })
        .map_err(|e| format!("the chat template failed: {e}"))
    }
}

//! `graft export --merged`: a model folder with the adapters folded into the base weights,
//! which transformers loads as a plain model (`AutoModelForCausalLM.from_pretrained(dir)`).
//!
//! The merged weights come from the front end's `@merge` (each adapted `linear` run on probe
//! inputs; see graft-frontend's `elab/merge.rs`), run on the interpreter with dropout off.
//! The folder gets:
//! - `model.safetensors`, in f32: every tensor of the base checkpoint, with the adapted
//!   linears' weights replaced by their merged values and trained base tensors (full
//!   fine-tuning, norms) by their trained values;
//! - the model folder's `config.json` (with `torch_dtype` set to `float32`) and its
//!   tokenizer and generation files, copied, when the model came from a folder.
//!
//! A trained tensor that is neither folded into a linear nor a base weight (a soft prompt,
//! say) cannot be merged, and an adapter whose map is not affine in its input cannot be
//! folded: both are errors naming the tensors, and nothing is written.

use crate::session::{Session, SessionError};
use graft_interp::Tensor;
use std::path::{Path, PathBuf};

/// Largest `merge_residual` accepted: the adapted map must be affine in its input up to
/// rounding (the interpreter accumulates products in f64).
pub const AFFINE_TOLERANCE: f32 = 1e-4;

/// Files copied from the model folder besides `config.json`.
const COPIED: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Writes the merged model of the spec `loaded` (with the trained tensors in `adapter`) into
/// `out`; returns the files written.
///
/// # Errors
/// See the module docs; a file that cannot be read or written.
pub fn export_merged(
    loaded: &graft_frontend::Loaded,
    adapter: Option<&Path>,
    out: &Path,
) -> Result<Vec<PathBuf>, SessionError> {
    let value = SessionError::Value;
    let program = graft_frontend::elaborate_merged(loaded)
        .map_err(|d| value(d.render(&loaded.sources, false)))?;
    let Some((weights_path, _)) = program.weights.clone() else {
        return Err(value(
            "the spec names no weights file; a merged export writes the base's weights with \
             the adapters folded in"
                .into(),
        ));
    };
    let weights = crate::WeightsFile::open(&weights_path)?;
    let merge = program
        .module
        .function("merge")
        .ok_or(SessionError::Missing("merge"))?;
    let (merge, _) = crate::eval::without_dropout(merge);
    let model_dir = program.model_dir.clone();
    let seed = program.train.seed;
    let mut session = Session::new(program, Some(&weights), seed)?;
    if let Some(a) = adapter {
        session.load_trained(a)?;
    }
    // Trained tensors that are neither folded nor base weights.
    let entries = weights.entries();
    let stranded: Vec<String> = session
        .params()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| merge.input(p).is_none() && !entries.contains_key(p))
        .collect();
    if !stranded.is_empty() {
        return Err(value(format!(
            "these trained tensors cannot be merged into the base's weights (they are not on \
             a linear layer): {}; save the adapter instead (graft train --save)",
            stranded.join(", ")
        )));
    }
    let merged = session.run_function(&merge)?;
    let mut bad = Vec::new();
    for (name, t) in &merged {
        if let Some(path) = name.strip_prefix("merge_residual.") {
            let r = t
                .as_f32()
                .and_then(|d| d.first().copied())
                .unwrap_or(f32::NAN);
            if !(r <= AFFINE_TOLERANCE) {
                bad.push(format!("{path} (off by {r:e})"));
            }
        }
    }
    if !bad.is_empty() {
        return Err(value(format!(
            "the adapted map of these layers is not affine in its input, so it cannot be \
             folded into a weight: {}",
            bad.join(", ")
        )));
    }
    let params: std::collections::HashMap<String, Tensor> = session
        .params()
        .into_iter()
        .map(|(p, t)| (p, t.clone()))
        .collect();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for name in entries.keys() {
        let t = match merged.iter().find(|(n, _)| n == name) {
            Some((_, t)) => t.clone(),
            None => match params.get(name) {
                Some(t) => t.clone(),
                None => weights.read(name)?,
            },
        };
        tensors.push((name.clone(), t));
    }
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let bytes = crate::weights::to_safetensors(&refs).map_err(value)?;
    std::fs::create_dir_all(out)
        .map_err(|e| value(format!("cannot create {}: {e}", out.display())))?;
    let io = |e: std::io::Error| value(e.to_string());
    let mut written = Vec::new();
    let model = out.join("model.safetensors");
    crate::write_atomic(&model, &bytes).map_err(io)?;
    written.push(model);
    if let Some(dir) = model_dir {
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config)
            .map_err(|e| value(format!("cannot read {}: {e}", config.display())))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| value(format!("{}: {e}", config.display())))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("torch_dtype".into(), "float32".into());
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| value(e.to_string()))?;
        let dest = out.join("config.json");
        crate::write_atomic(&dest, text.as_bytes()).map_err(io)?;
        written.push(dest);
        for f in COPIED {
            let src = dir.join(f);
            if src.is_file() {
                let b = std::fs::read(&src)
                    .map_err(|e| value(format!("cannot read {}: {e}", src.display())))?;
                let dest = out.join(f);
                crate::write_atomic(&dest, &b).map_err(io)?;
                written.push(dest);
            }
        }
    }
    Ok(written)
}

//! Hugging Face PEFT's adapter format: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys: a graft path `model.layers.0.self_attn.q_proj.lora_A.weight` is saved as
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`; a root-level path (no
//! dot, like prompt tuning's `prompt_embeddings`) is saved as is. The config is assembled from
//! the adapters' `peft "TYPE" { ... }` declarations in graft source: fields equal on every
//! adapted module are written once, `r`/`lora_alpha` that differ become `rank_pattern` /
//! `alpha_pattern`, list fields are merged, and `target_modules` lists the adapted modules'
//! names.

use crate::weights::{WeightsFile, to_safetensors};
use graft_frontend::{AdapterRecord, ConfigValue};
use graft_interp::Tensor;
use serde_json::{Map, Value, json};
use std::path::Path;

const PREFIX: &str = "base_model.model.";
/// PEFT's prompt-learning methods, whose configs have no `target_modules`.
const PROMPT_LEARNING: &[&str] = &[
    "PROMPT_TUNING",
    "P_TUNING",
    "PREFIX_TUNING",
    "MULTITASK_PROMPT_TUNING",
];

/// Why an adapter could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// No adapter in the spec declares a PEFT form.
    #[error(
        "adapter `{0}` has no `peft` declaration, so it has no PEFT adapter format (graft saves its tensors with `--save` as safetensors instead)"
    )]
    NoPeftForm(String),
    /// Modules trained in full (`full_ft`) with no method beside them.
    #[error(
        "`{0}` alone has no PEFT adapter format: PEFT stores modules trained in full (`modules_to_save`) only beside a method's tensors (graft saves its tensors with `--save` as safetensors instead)"
    )]
    OnlySaved(String),
    /// PEFT's files hold one method at a time.
    #[error("PEFT's adapter format holds one method, but this spec uses {0} and {1}")]
    Mixed(String, String),
    /// A field differs between modules and PEFT has no per-module form for it.
    #[error(
        "`{field}` differs between adapted modules ({a} vs {b}); PEFT can only vary `r` and `lora_alpha` per module"
    )]
    Differs {
        /// The field.
        field: String,
        /// One value.
        a: String,
        /// Another value.
        b: String,
    },
    /// The spec adapts nothing.
    #[error("the spec applies no adapter")]
    Empty,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
}

/// The PEFT key of a graft path.
pub fn peft_key(path: &str) -> String {
    if path.contains('.') {
        format!("{PREFIX}{path}")
    } else {
        path.to_string()
    }
}

/// The graft path of a PEFT key: `base_model.model.<path>` for a module's tensor, and
/// `base_model.<name>` for one the tuner holds itself (VeRA's shared `vera_A`).
pub fn graft_path(key: &str) -> String {
    key.strip_prefix(PREFIX)
        .or_else(|| key.strip_prefix("base_model."))
        .unwrap_or(key)
        .to_string()
}

fn json_of(v: &ConfigValue) -> Value {
    match v {
        ConfigValue::Int(i) => json!(i),
        ConfigValue::Float(x) => json!(x),
        ConfigValue::Bool(b) => json!(b),
        ConfigValue::Str(s) => json!(s),
        ConfigValue::List(items) => Value::Array(items.iter().map(json_of).collect()),
    }
}

/// What PEFT calls tensors trained in full beside a method's (`peft "MODULES_TO_SAVE" {}`,
/// full fine-tuning's declaration): listed in `modules_to_save`, stored under their own
/// names.
const MODULES_TO_SAVE: &str = "MODULES_TO_SAVE";

/// The `task_type` a program's adapter is saved with: what its model's root module declares
/// (`peft "SEQ_CLS" {}`), else `CAUSAL_LM` for the causal-LM loss, else none.
pub fn task_type(p: &graft_frontend::Program) -> Option<String> {
    p.peft_task
        .clone()
        .or_else(|| (p.train.loss == "causal_lm").then(|| "CAUSAL_LM".to_string()))
}

/// Builds `adapter_config.json` from the adapters a program applies and its `task_type`
/// ([`task_type`]).
pub fn adapter_config(records: &[AdapterRecord], task: Option<&str>) -> Result<Value, PeftError> {
    if records.is_empty() {
        return Err(PeftError::Empty);
    }
    let is_saved = |r: &&AdapterRecord| {
        r.peft
            .as_ref()
            .is_some_and(|p| p.peft_type == MODULES_TO_SAVE)
    };
    let mut saved: Vec<String> = records
        .iter()
        .filter(is_saved)
        .map(|r| last_name(&r.module_path))
        .collect();
    saved.sort();
    saved.dedup();
    let all = records;
    let records: Vec<&AdapterRecord> = all.iter().filter(|r| !is_saved(r)).collect();
    if records.is_empty() {
        return Err(PeftError::OnlySaved(all[0].adapter.clone()));
    }
    let mut exports = Vec::new();
    for &r in &records {
        let p = r
            .peft
            .as_ref()
            .ok_or_else(|| PeftError::NoPeftForm(r.adapter.clone()))?;
        exports.push((r, p));
    }
    let (_, p0) = exports[0];
    let mut cfg = Map::new();
    cfg.insert("peft_type".into(), json!(p0.peft_type));
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    for (r, p) in &exports {
        if p.peft_type != p0.peft_type {
            return Err(PeftError::Mixed(p0.peft_type.clone(), p.peft_type.clone()));
        }
        for (k, v) in &p.fields {
            let v = json_of(v);
            match (cfg.get(k), &v) {
                (None, _) => {
                    cfg.insert(k.clone(), v);
                }
                (Some(Value::Array(prev)), Value::Array(new)) => {
                    let mut all: Vec<Value> = prev.iter().chain(new).cloned().collect();
                    all.sort_by_key(|x| x.to_string());
                    all.dedup();
                    cfg.insert(k.clone(), Value::Array(all));
                }
                (Some(prev), _) if *prev == v => {}
                (Some(_), _) if k == "r" => {
                    rank_pattern.insert(r.module_path.clone(), v);
                }
                (Some(_), _) if k == "lora_alpha" => {
                    alpha_pattern.insert(r.module_path.clone(), v);
                }
                (Some(prev), _) => {
                    return Err(PeftError::Differs {
                        field: k.clone(),
                        a: prev.to_string(),
                        b: v.to_string(),
                    });
                }
            }
        }
    }
    if !PROMPT_LEARNING.contains(&p0.peft_type.as_str()) {
        let mut names: Vec<String> = records.iter().map(|r| last_name(&r.module_path)).collect();
        names.sort();
        names.dedup();
        cfg.insert("target_modules".into(), json!(names));
        if p0.peft_type == "LORA" {
            cfg.insert("rank_pattern".into(), Value::Object(rank_pattern));
            cfg.insert("alpha_pattern".into(), Value::Object(alpha_pattern));
        }
    }
    if !saved.is_empty() {
        cfg.insert("modules_to_save".into(), json!(saved));
    }
    cfg.entry("task_type").or_insert(json!(task));
    cfg.insert("base_model_name_or_path".into(), Value::Null);
    cfg.insert("inference_mode".into(), json!(true));

    Ok(Value::Object(cfg))
}

/// A module path's last name (`classifier` of `bert.classifier`), as PEFT lists modules.
fn last_name(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).to_string()
}

/// Where a saved adapter's `adapter_config.json` (`folder`) disagrees with the one the spec
/// would write (`spec`) on a setting that changes what the adapter computes: each scalar
/// setting of the spec's (`peft_type`, ranks, scaling, flags), except dropout rates, which
/// only matter while training. One line per difference.
pub fn config_mismatches(spec: &Value, folder: &Value) -> Vec<String> {
    let (Some(s), Some(f)) = (spec.as_object(), folder.as_object()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, want) in s {
        // Dropout and the task do not change what a trained adapter computes, nor does how
        // the file is stored (`save_projection`: VeRA's shared matrices written or drawn again).
        if k.contains("dropout")
            || k.starts_with("save_")
            || k == "task_type"
            || !(want.is_number() || want.is_boolean() || want.is_string())
        {
            continue;
        }
        let Some(got) = f.get(k) else {
            continue;
        };
        let same = match (want.as_f64(), got.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => want == got,
        };
        if !same {
            out.push(format!("`{k}` is {got} there, {want} in the spec"));
        }
    }
    // PEFT's initializations that also replace the base weight by a residual: the adapter
    // only means what it was trained as on that residual, so the spec must make it too.
    if let Some(init) = f.get("init_lora_weights").and_then(Value::as_str)
        && RESIDUAL_INITS.iter().any(|r| init.starts_with(r))
        && !s.contains_key("init_lora_weights")
    {
        out.push(format!(
            "`init_lora_weights` is \"{init}\" there (the base weights were replaced by a \
             residual), and the spec's adapter does not initialize so"
        ));
    }
    out
}

/// `init_lora_weights` values (prefixes) for which PEFT replaces the base weight.
const RESIDUAL_INITS: [&str; 4] = ["pissa", "olora", "corda", "loftq"];

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (atomically, as a
/// pair: a failure leaves the old pair).
pub fn save_adapter(
    dir: &Path,
    records: &[AdapterRecord],
    task: Option<&str>,
    params: &[(String, &Tensor)],
) -> Result<(), PeftError> {
    let cfg = adapter_config(records, task)?;
    let stored = crate::peft_storage::peft_form(records, params)?;
    let keyed: Vec<(String, &Tensor)> = stored.iter().map(|(p, t)| (peft_key(p), t)).collect();
    let bytes = to_safetensors(&keyed).map_err(PeftError::Io)?;
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| PeftError::Io(e.to_string()))?;
    let io = |e: std::io::Error| PeftError::Io(format!("cannot write into {}: {e}", dir.display()));
    crate::write_all_atomic(&[
        (&dir.join("adapter_model.safetensors"), &bytes),
        (&dir.join("adapter_config.json"), text.as_bytes()),
    ])
    .map_err(io)?;
    Ok(())
}

/// Reads a PEFT adapter folder: its config and its tensors under graft paths.
pub fn load_adapter(dir: &Path) -> Result<(Value, Vec<(String, Tensor)>), PeftError> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| PeftError::Io(format!("cannot read {}: {e}", cfg_path.display())))?;
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| PeftError::Io(format!("{} is not valid JSON: {e}", cfg_path.display())))?;
    let file = WeightsFile::open(&dir.join("adapter_model.safetensors"))
        .map_err(|e| PeftError::Io(e.to_string()))?;
    let mut out = Vec::new();
    for key in file.entries().keys() {
        let t = file.read(key).map_err(|e| PeftError::Io(e.to_string()))?;
        out.push((graft_path(key), t));
    }
    Ok((cfg, out))
}

#[cfg(test)]
mod tests {
    use super::config_mismatches;
    use serde_json::json;

    /// A folder trained on a residual (PiSSA) is refused by a spec that keeps the original
    /// weights, and accepted by one that makes the same residual; other initializations only
    /// set the starting point and are not compared.
    #[test]
    fn residual_initializations_must_match() {
        let plain = json!({"r": 4});
        let pissa = json!({"r": 4, "init_lora_weights": "pissa"});
        assert_eq!(config_mismatches(&plain, &pissa).len(), 1);
        assert!(config_mismatches(&pissa, &pissa).is_empty());
        let olora = json!({"r": 4, "init_lora_weights": "olora"});
        assert_eq!(config_mismatches(&pissa, &olora).len(), 1);
        let gaussian = json!({"r": 4, "init_lora_weights": "gaussian"});
        assert!(config_mismatches(&plain, &gaussian).is_empty());
        assert!(config_mismatches(&plain, &json!({"r": 4, "init_lora_weights": true})).is_empty());
    }
}

//! Where PEFT's file holds an adapter's tensors in another form than graft's params:
//! - **cut** (`peft_mask`): AdaLoRA's tensors after its final allocation keep only the indices
//!   a config mask marks true; they load back to full size with zeros elsewhere;
//! - **stacked** (`peft_stack`): prefix tuning's per-layer keys and values are one root tensor,
//!   every instance's parts concatenated along one axis in instance order; they save joined
//!   and load split.

use crate::peft::PeftError;
use graft_frontend::AdapterRecord;
use graft_interp::Tensor;
use serde_json::Value;
use std::collections::HashSet;

/// Restores tensors a PEFT folder stores cut (an adapter's `peft_mask`: AdaLoRA's tensors
/// after its final allocation keep only the triplets its config's `rank_pattern` marks true):
/// each goes back to its full size, `full(path)`, with zeros at the false indices. A folder
/// without the mask field, or without this module's entry, is left as it is.
///
/// # Errors
/// A mask that is not a list of bools of the full extent, or a tensor whose extent is not its
/// count of trues.
pub fn restore_cut(
    records: &[AdapterRecord],
    cfg: &Value,
    tensors: &mut [(String, Tensor)],
    full: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<(), PeftError> {
    let bad = |m: String| PeftError::Io(m);
    for mask in records.iter().flat_map(|r| &r.masks) {
        let Some(list) = cfg.get(&mask.field).and_then(|f| f.get(&mask.key)) else {
            continue;
        };
        let keep: Vec<bool> = list
            .as_array()
            .and_then(|a| a.iter().map(Value::as_bool).collect())
            .ok_or_else(|| {
                bad(format!(
                    "`{}` of `{}` is not a list of bools",
                    mask.field, mask.key
                ))
            })?;
        for (path, axis) in &mask.cut {
            let (Some((_, t)), Some(shape)) =
                (tensors.iter_mut().find(|(p, _)| p == path), full(path))
            else {
                continue;
            };
            let kept = keep.iter().filter(|k| **k).count();
            if keep.len() != shape[*axis] || t.shape().get(*axis) != Some(&kept) {
                return Err(bad(format!(
                    "`{path}` is stored {:?} with {kept} of {} indices kept on axis {axis}, but the spec's is {shape:?}",
                    t.shape(),
                    keep.len()
                )));
            }
            let src = t.to_f64_vec();
            let (outer, inner): (usize, usize) = (
                shape[..*axis].iter().product(),
                shape[axis + 1..].iter().product(),
            );
            let mut out = vec![0f32; shape.iter().product()];
            for o in 0..outer {
                let mut j = 0;
                for (i, k) in keep.iter().enumerate() {
                    if !k {
                        continue;
                    }
                    for n in 0..inner {
                        out[(o * keep.len() + i) * inner + n] =
                            src[(o * kept + j) * inner + n] as f32;
                    }
                    j += 1;
                }
            }
            *t = Tensor::f32(shape, out).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(())
}

/// Each `peft_stack` key and the parts it joins, in order, with its axis.
fn stacks(records: &[AdapterRecord]) -> Result<Vec<(String, usize, Vec<String>)>, PeftError> {
    let mut out: Vec<(String, usize, Vec<String>)> = Vec::new();
    for s in records.iter().flat_map(|r| &r.stacks) {
        match out.iter_mut().find(|(k, _, _)| *k == s.key) {
            Some((_, axis, parts)) if *axis == s.axis => parts.extend(s.parts.iter().cloned()),
            Some((_, axis, _)) => {
                return Err(PeftError::Io(format!(
                    "`{}` is stacked along axis {axis} by one adapter and {} by another",
                    s.key, s.axis
                )));
            }
            None => out.push((s.key.clone(), s.axis, s.parts.clone())),
        }
    }
    Ok(out)
}

/// The outer count, extent and inner count of `shape` around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Joins the params of every `peft_stack` into one tensor under its key. Returns the joined
/// tensors and the paths they hold (which are not saved on their own).
///
/// # Errors
/// Parts missing from `params`, or whose shapes differ off the stacking axis.
pub fn stack(
    records: &[AdapterRecord],
    params: &[(String, &Tensor)],
) -> Result<(Vec<(String, Tensor)>, HashSet<String>), PeftError> {
    let mut joined = Vec::new();
    let mut used = HashSet::new();
    for (key, axis, parts) in stacks(records)? {
        let mut found = Vec::new();
        for p in &parts {
            let t = params
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    PeftError::Io(format!("`{key}` needs `{p}`, which is not trained"))
                })?;
            found.push(t);
        }
        let first = found[0].shape();
        let off_axis = |s: &[usize]| {
            let mut s = s.to_vec();
            s.remove(axis);
            s
        };
        if let Some((p, t)) = parts
            .iter()
            .zip(&found)
            .find(|(_, t)| t.shape().len() != first.len() || off_axis(t.shape()) != off_axis(first))
        {
            return Err(PeftError::Io(format!(
                "`{key}` stacks tensors along axis {axis}, but `{p}` is {:?} and `{}` is {first:?}",
                t.shape(),
                parts[0]
            )));
        }
        let mut shape = first.to_vec();
        shape[axis] = found.iter().map(|t| t.shape()[axis]).sum();
        let (outer, _, inner) = around(&shape, axis);
        let data: Vec<Vec<f64>> = found.iter().map(|t| t.to_f64_vec()).collect();
        let mut out = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for (t, d) in found.iter().zip(&data) {
                let n = t.shape()[axis] * inner;
                out.extend(d[o * n..(o + 1) * n].iter().map(|x| *x as f32));
            }
        }
        joined.push((
            key,
            Tensor::f32(shape, out).map_err(|e| PeftError::Io(e.to_string()))?,
        ));
        used.extend(parts);
    }
    Ok((joined, used))
}

/// `tensors` (graft paths) in the form PEFT's file keys them: each `peft_stack`'s parts joined
/// under its key, the rest as they are (still under graft paths; [`crate::peft_key`] makes
/// PEFT's keys of both).
///
/// # Errors
/// As [`stack`].
pub fn peft_form(
    records: &[AdapterRecord],
    tensors: &[(String, &Tensor)],
) -> Result<Vec<(String, Tensor)>, PeftError> {
    let (mut out, used) = stack(records, tensors)?;
    out.extend(
        (tensors.iter())
            .filter(|(p, _)| !used.contains(p))
            .map(|(p, t)| (p.clone(), (*t).clone())),
    );
    Ok(out)
}

/// Splits each stacked tensor in `tensors` (under its key) back into its parts, each of the
/// shape `full` gives its path. Tensors under other keys are left as they are.
///
/// # Errors
/// A stacked tensor whose shape is not its parts' joined (another prefix length, another
/// number of layers), or a part the spec does not declare.
pub fn unstack(
    records: &[AdapterRecord],
    tensors: &mut Vec<(String, Tensor)>,
    full: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<(), PeftError> {
    for (key, axis, parts) in stacks(records)? {
        let Some(at) = tensors.iter().position(|(k, _)| *k == key) else {
            continue;
        };
        let (_, whole) = tensors.remove(at);
        let shapes: Vec<Vec<usize>> = parts
            .iter()
            .map(|p| full(p).ok_or_else(|| PeftError::Io(format!("`{p}` is not declared"))))
            .collect::<Result<_, _>>()?;
        let mut want = shapes[0].clone();
        want[axis] = shapes.iter().map(|s| s[axis]).sum();
        if whole.shape() != want.as_slice() {
            return Err(PeftError::Io(format!(
                "`{key}` is {:?}, but the spec's {} parts stacked along axis {axis} make {want:?}",
                whole.shape(),
                parts.len()
            )));
        }
        let (outer, extent, inner) = around(&want, axis);
        let src = whole.to_f64_vec();
        let mut start = 0;
        for (p, s) in parts.iter().zip(&shapes) {
            let n = s[axis];
            let mut out = Vec::with_capacity(s.iter().product());
            for o in 0..outer {
                let row = (o * extent + start) * inner;
                out.extend(src[row..row + n * inner].iter().map(|x| *x as f32));
            }
            start += n;
            tensors.push((
                p.clone(),
                Tensor::f32(s.clone(), out).map_err(|e| PeftError::Io(e.to_string()))?,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{restore_cut, stack, unstack};
    use graft_frontend::{AdapterRecord, PeftMask, PeftStack};
    use graft_interp::Tensor;
    use serde_json::json;

    fn masked() -> Vec<AdapterRecord> {
        vec![AdapterRecord {
            module_path: "m".into(),
            adapter: "a".into(),
            peft: None,
            masks: vec![PeftMask {
                field: "rank_pattern".into(),
                key: "m.E".into(),
                cut: vec![("m.E".into(), 0), ("m.B".into(), 1)],
            }],
            stacks: Vec::new(),
        }]
    }

    /// Rows (E, axis 0) and columns (B, axis 1) go back to the true indices, zeros between;
    /// a mask of another extent, or a tensor with another count than its trues, is refused.
    #[test]
    fn cut_tensors_are_restored_in_place() {
        let cfg = json!({"rank_pattern": {"m.E": [false, true, false, true]}});
        let full = |p: &str| Some(if p == "m.E" { vec![4, 1] } else { vec![2, 4] });
        let mut t = vec![
            (
                "m.E".to_string(),
                Tensor::f32(vec![2, 1], vec![1.0, 2.0]).unwrap(),
            ),
            (
                "m.B".to_string(),
                Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
            ),
        ];
        restore_cut(&masked(), &cfg, &mut t, full).unwrap();
        assert_eq!(t[0].1.to_f64_vec(), vec![0.0, 1.0, 0.0, 2.0]);
        assert_eq!(
            t[1].1.to_f64_vec(),
            vec![0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0]
        );
        let mut again = vec![(
            "m.E".to_string(),
            Tensor::f32(vec![3, 1], vec![1.0; 3]).unwrap(),
        )];
        let e = restore_cut(&masked(), &cfg, &mut again, full).unwrap_err();
        assert!(e.to_string().contains("2 of 4 indices kept"), "{e}");
        let short = json!({"rank_pattern": {"m.E": [true, false]}});
        assert!(restore_cut(&masked(), &short, &mut t, full).is_err());
        // No mask for this module: nothing changes.
        let none = json!({"rank_pattern": null});
        restore_cut(&masked(), &none, &mut t, full).unwrap();
    }

    fn stacked(layer: &str) -> AdapterRecord {
        AdapterRecord {
            module_path: layer.into(),
            adapter: "a".into(),
            peft: None,
            masks: Vec::new(),
            stacks: vec![PeftStack {
                key: "emb".into(),
                axis: 1,
                parts: vec![format!("{layer}.K"), format!("{layer}.V")],
            }],
        }
    }

    /// Two instances' K and V [2, 2] join along axis 1 as [K₀ V₀ K₁ V₁] row by row, and split
    /// back to the same values; a tensor of another width is refused.
    #[test]
    fn stacked_parts_join_in_instance_order_and_split_back() {
        let records = vec![stacked("l0"), stacked("l1")];
        let t = |base: f32| {
            Tensor::f32(vec![2, 2], vec![base, base + 1.0, base + 2.0, base + 3.0]).unwrap()
        };
        let (k0, v0, k1, v1) = (t(0.0), t(10.0), t(20.0), t(30.0));
        let params = vec![
            ("l0.K".to_string(), &k0),
            ("l0.V".to_string(), &v0),
            ("l1.K".to_string(), &k1),
            ("l1.V".to_string(), &v1),
            ("other".to_string(), &k0),
        ];
        let (joined, used) = stack(&records, &params).unwrap();
        assert_eq!(used.len(), 4);
        assert_eq!(joined[0].0, "emb");
        assert_eq!(joined[0].1.shape(), &[2, 8]);
        assert_eq!(
            joined[0].1.to_f64_vec(),
            vec![
                0., 1., 10., 11., 20., 21., 30., 31., 2., 3., 12., 13., 22., 23., 32., 33.
            ]
        );
        let mut back = vec![joined[0].clone()];
        unstack(&records, &mut back, |_| Some(vec![2, 2])).unwrap();
        for (p, want) in &params[..4] {
            let got = &back.iter().find(|(q, _)| q == p).unwrap().1;
            assert_eq!(got.to_f64_vec(), want.to_f64_vec(), "{p}");
        }
        let mut narrow = vec![(
            "emb".to_string(),
            Tensor::f32(vec![2, 6], vec![0.0; 12]).unwrap(),
        )];
        let e = unstack(&records, &mut narrow, |_| Some(vec![2, 2])).unwrap_err();
        assert!(e.to_string().contains("make [2, 8]"), "{e}");
    }
}

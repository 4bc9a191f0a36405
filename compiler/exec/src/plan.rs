//! The execution plan: what a compiled function runs, in order. Each [`Step`] is one kernel
//! launch (or one node the interpreter evaluates on the host) reading and writing [`Slot`]s,
//! the function's buffers. A backend's scheduler builds it; the executor ([`crate::exec`])
//! and the memory plan ([`crate::memplan`]) read it, and nothing else. It serializes, so a
//! built binary carries it beside the kernels' object code.

use graft_ir::{DType, TensorType, ValueId};
use serde::{Deserialize, Serialize};

/// What a step does, as far as running and profiling it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A fused elementwise loop nest.
    Fused,
    /// A reduction.
    Reduce,
    /// `softmax` or `log_softmax`.
    Softmax,
    /// A scalar `f64`-accumulating matmul (non-`f32` dtypes).
    MatMulScalar,
    /// Packing A of an `f32` matmul into row tiles.
    PackA,
    /// Packing B of an `f32` matmul into panels (from B, or from bound panels).
    Pack,
    /// The tiled vector GEMM reading the packed panels.
    Gemm,
    /// A node evaluated on the host by the reference interpreter.
    Host,
}

impl Kind {
    /// The name profiles report (`fused`, `reduce`, `softmax`, `matmul`, `pack_a`, `pack`,
    /// `gemm`, `host`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fused => "fused",
            Kind::Reduce => "reduce",
            Kind::Softmax => "softmax",
            Kind::MatMulScalar => "matmul",
            Kind::PackA => "pack_a",
            Kind::Pack => "pack",
            Kind::Gemm => "gemm",
            Kind::Host => "host",
        }
    }
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// What it does.
    pub kind: Kind,
    /// The node it computes.
    #[serde(with = "value_id")]
    pub root: ValueId,
    /// The kernel's symbol (empty for host steps).
    pub symbol: String,
    /// Slots read, in kernel argument order.
    pub args: Vec<usize>,
    /// The slot written.
    pub out: usize,
    /// The extent of the kernel's outermost loop, split across threads.
    pub range: usize,
    /// Rough work per range item, to decide whether threading pays (for a GEMM: its
    /// floating-point operations per range item).
    pub cost: usize,
    /// The kernel takes a status buffer and may report an error.
    pub may_fail: bool,
    /// A pack of frozen weights: it runs once, when the weights are bound
    /// ([`crate::CompiledFunction::bind`]), into a slot kept between runs, and is skipped by
    /// the runs after that (unbound runs execute it like any other step).
    pub bind: bool,
}

/// A storage buffer: one per materialized value (views share their operand's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// The dtype whose storage it holds.
    #[serde(with = "dtype")]
    pub dtype: DType,
    /// Elements.
    pub len: usize,
    /// The function input that provides it, if any.
    pub input: Option<String>,
    /// Written by a binding step: kept between runs once bound, outside the arena.
    pub bound: bool,
}

/// A scheduled function, ready to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecPlan {
    /// The slot of each materialized (or viewed) value, by node.
    pub slot_of: Vec<Option<usize>>,
    /// The buffers.
    pub slots: Vec<Slot>,
    /// The kernels, in execution order.
    pub steps: Vec<Step>,
    /// Inputs: name, type, slot.
    #[serde(with = "named_types")]
    pub inputs: Vec<(String, TensorType, usize)>,
    /// Outputs: name, type, slot.
    #[serde(with = "named_types")]
    pub outputs: Vec<(String, TensorType, usize)>,
    /// Inputs only binding steps read: runs after binding do not need them.
    pub bind_only: Vec<String>,
}

mod value_id {
    use graft_ir::ValueId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &ValueId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(v.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ValueId, D::Error> {
        Ok(ValueId(u32::deserialize(d)?))
    }
}

mod dtype {
    use graft_ir::DType;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        DType::from_name(&name).ok_or_else(|| D::Error::custom(format!("unknown dtype `{name}`")))
    }
}

mod named_types {
    use graft_ir::{DType, TensorType};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    #[derive(Serialize, Deserialize)]
    struct Named {
        name: String,
        dtype: String,
        shape: Vec<usize>,
        slot: usize,
    }

    pub fn serialize<S: Serializer>(
        v: &[(String, TensorType, usize)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let named: Vec<Named> = v
            .iter()
            .map(|(name, ty, slot)| Named {
                name: name.clone(),
                dtype: ty.dtype.name().to_string(),
                shape: ty.shape.clone(),
                slot: *slot,
            })
            .collect();
        named.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, TensorType, usize)>, D::Error> {
        Vec::<Named>::deserialize(d)?
            .into_iter()
            .map(|n| {
                let dtype = DType::from_name(&n.dtype)
                    .ok_or_else(|| D::Error::custom(format!("unknown dtype `{}`", n.dtype)))?;
                Ok((n.name, TensorType::new(dtype, n.shape), n.slot))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_plan_survives_json() {
        let plan = ExecPlan {
            slot_of: vec![Some(0), None, Some(1)],
            slots: vec![
                Slot {
                    dtype: DType::F32,
                    len: 6,
                    input: Some("x".into()),
                    bound: false,
                },
                Slot {
                    dtype: DType::U4,
                    len: 3,
                    input: None,
                    bound: true,
                },
            ],
            steps: vec![Step {
                kind: Kind::Pack,
                root: ValueId(2),
                symbol: "k0".into(),
                args: vec![0],
                out: 1,
                range: 3,
                cost: 7,
                may_fail: true,
                bind: true,
            }],
            inputs: vec![("x".into(), TensorType::new(DType::F32, vec![2, 3]), 0)],
            outputs: vec![("y".into(), TensorType::new(DType::U4, vec![3]), 1)],
            bind_only: vec!["x".into()],
        };
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<ExecPlan>(&text).unwrap(), plan);
    }
}

//! Element types and tensor types: every IR value has a dtype and a static shape.

use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 64-bit IEEE float (used by tests and f64 accumulation).
    F64,
    /// 32-bit IEEE float.
    F32,
    /// bfloat16: 8 exponent bits, 7 mantissa bits.
    BF16,
    /// IEEE half precision.
    F16,
    /// 64-bit signed integer (token ids, labels).
    I64,
    /// 32-bit signed integer.
    I32,
    /// Unsigned byte (8-bit quantized codes).
    U8,
    /// Packed 4-bit codes, two per byte, high nibble first (NF4 weights).
    U4,
    /// Boolean (comparison results, masks).
    Bool,
}

impl DType {
    /// Every dtype, in the order the text form lists them.
    pub const ALL: [DType; 9] = [
        DType::F64,
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::I64,
        DType::I32,
        DType::U8,
        DType::U4,
        DType::Bool,
    ];

    /// The name used in graft source and in the IR text form.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::U4 => "u4",
            DType::Bool => "bool",
        }
    }

    /// Parses a dtype name (`f32`, `bf16`, ...).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Storage size of one element in bits.
    pub fn bits(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 64,
            DType::F32 | DType::I32 => 32,
            DType::BF16 | DType::F16 => 16,
            DType::U8 | DType::Bool => 8,
            DType::U4 => 4,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::BF16 | DType::F16)
    }

    /// True for the integer types (including the packed and byte codes).
    pub fn is_int(self) -> bool {
        matches!(self, DType::I64 | DType::I32 | DType::U8 | DType::U4)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A static shape: one extent per axis; `[]` is a scalar.
pub type Shape = Vec<usize>;

/// The type of an IR value: dtype and static shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Extent of each axis.
    pub shape: Shape,
}

impl TensorType {
    /// Builds a tensor type.
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> Self {
        TensorType {
            dtype,
            shape: shape.into(),
        }
    }

    /// A rank-0 tensor of `dtype`.
    pub fn scalar(dtype: DType) -> Self {
        TensorType {
            dtype,
            shape: Vec::new(),
        }
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Storage size in bytes, rounding packed types up to whole bytes.
    pub fn size_bytes(&self) -> usize {
        (self.numel() * self.dtype.bits()).div_ceil(8)
    }

    /// The same shape with another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        TensorType {
            dtype,
            shape: self.shape.clone(),
        }
    }
}

/// Formats a shape as `[2, 3]`.
pub fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, shape_str(&self.shape))
    }
}

//! Errors for quantization and dequantization of user-supplied tensors.

use std::fmt;

/// Why a tensor could not be quantized or dequantized.
///
/// Every public entry point validates its input and returns one of these instead of panicking,
/// because the data comes from user files (weights, adapters, checkpoints).
#[derive(Debug, Clone, PartialEq)]
pub enum QuantError {
    /// The block size was zero.
    ZeroBlockSize,
    /// An input element was NaN or infinite; bitsandbytes would silently produce garbage.
    NonFinite {
        /// What was being read (for example `"weights"` or `"absmax"`).
        what: &'static str,
        /// Index of the first offending element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A buffer does not have the length the element count and block size imply.
    LengthMismatch {
        /// Which buffer (for example `"packed"` or `"absmax"`).
        what: &'static str,
        /// The length implied by the other arguments.
        expected: usize,
        /// The length that was passed.
        actual: usize,
    },
    /// Double quantization needs at least one absmax value to take the mean of.
    Empty,
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::ZeroBlockSize => write!(f, "block size must be at least 1"),
            QuantError::NonFinite { what, index, value } => write!(
                f,
                "{what}[{index}] is {value}; only finite values can be quantized"
            ),
            QuantError::LengthMismatch {
                what,
                expected,
                actual,
            } => write!(
                f,
                "{what} has {actual} elements but {expected} were expected"
            ),
            QuantError::Empty => write!(f, "cannot double-quantize an empty absmax vector"),
        }
    }
}

impl std::error::Error for QuantError {}

/// Returns an error naming the first non-finite element of `values`.
pub(crate) fn check_finite(what: &'static str, values: &[f32]) -> Result<(), QuantError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Returns an error unless `actual == expected`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), QuantError> {
    if expected == actual {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch {
            what,
            expected,
            actual,
        })
    }
}

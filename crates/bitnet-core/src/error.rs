use thiserror::Error;

/// Errors raised by core types and kernels.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A buffer's length does not match the shape it claims.
    #[error("{what}: expected {expected} elements, got {found}")]
    Length {
        /// Which buffer.
        what: String,
        /// Elements the shape requires.
        expected: usize,
        /// Elements present.
        found: usize,
    },
    /// A ternary matrix holds a code outside {-1, 0, +1}.
    #[error("ternary matrix holds code {code} at index {index}; only -1, 0 and +1 are allowed")]
    NotTernary {
        /// The offending value.
        code: i8,
        /// Its flat index.
        index: usize,
    },
    /// A ternary scale that cannot be right (not finite, or negative).
    #[error("ternary scale {0} is not a finite non-negative number")]
    BadScale(f32),
    /// The requested kernel does not exist or cannot run on this CPU.
    #[error("kernel '{name}' is not available here (available: {available})")]
    UnknownKernel {
        /// The name asked for.
        name: String,
        /// Comma-separated names that would work.
        available: String,
    },
}

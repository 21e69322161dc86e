//! Core types of bitnet-rs: ternary weight matrices, the int8 activation quantizer, the one
//! linear-kernel trait every backend implements, and the scalar reference implementation that all
//! other backends are tested against.
//!
//! This crate knows nothing about files, models or GPUs. Everything above it (formats, models, the
//! engine) talks to kernels only through [`LinearKernel`] and [`PreparedLinear`].
#![deny(missing_docs)]

pub mod aligned;
mod error;
pub mod kernel;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod scalar;
pub mod screen;
mod simd;
mod ternary;

pub use error::CoreError;
pub use kernel::{LinearKernel, PreparedLinear};
pub use quant::{QuantizedActivations, quantize_row};
pub use ternary::TernaryMatrix;

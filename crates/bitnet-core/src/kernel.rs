//! The one seam between models and compute: a [`LinearKernel`] prepares ternary weights once into
//! its own layout, and the resulting [`PreparedLinear`] multiplies batches of int8 activations.
//!
//! Required surface is small on purpose (two methods each); everything else is defaulted, so a new
//! backend (AVX2, AVX-512, CUDA) implements the integer product and inherits the float glue.
//! The integer result is the conformance contract: every backend must return exactly the scalar
//! reference's `i32` dot products.

use std::sync::Arc;

use crate::pool::ThreadPool;
use crate::{CoreError, QuantizedActivations, TernaryMatrix};

/// A backend that can run BitNet linears.
pub trait LinearKernel: Send + Sync {
    /// Short stable name (`scalar`, `avx2`, ...), used by `--kernel` and in reports.
    fn name(&self) -> &'static str;

    /// Repacks a ternary matrix into this backend's layout. Called once per tensor at load.
    fn prepare(&self, weights: &TernaryMatrix) -> Result<Box<dyn PreparedLinear>, CoreError>;

    /// The thread pool this kernel runs on, which the model also uses for its float work (the
    /// head); `None` for single-threaded kernels.
    fn thread_pool(&self) -> Option<Arc<ThreadPool>> {
        None
    }
}

/// A ternary matrix in a backend's layout, ready to multiply.
pub trait PreparedLinear: Send + Sync {
    /// Output features (rows of `W`).
    fn rows(&self) -> usize;

    /// Input features (columns of `W`).
    fn cols(&self) -> usize;

    /// The per-tensor weight scale `s_w`.
    fn scale(&self) -> f32;

    /// Bytes of weights one multiply streams (a decode step reads them all): 2 bits per weight
    /// unless the backend's layout says otherwise.
    fn weight_bytes(&self) -> usize {
        self.rows() * self.cols().div_ceil(4)
    }

    /// Integer products: `out[b * rows + o] = sum_i x[b * cols + i] * t[o][i]` for `batch` rows of
    /// activation codes. This is the conformance contract between backends.
    ///
    /// # Panics
    /// If the slices do not match `batch`, `rows` and `cols` (a programming error).
    fn matmul_i32(&self, x: &[i8], batch: usize, out: &mut [i32]);

    /// Float outputs of the BitLinear: `y = dot * s_w / s_x` per row, using `scratch` for the
    /// integer products so that steady-state calls do not allocate.
    fn forward(&self, x: &QuantizedActivations, out: &mut [f32], scratch: &mut Vec<i32>) {
        let (batch, rows) = (x.batch(), self.rows());
        assert_eq!(
            x.cols,
            self.cols(),
            "forward: activation width != weight columns"
        );
        assert_eq!(out.len(), batch * rows, "forward: output length mismatch");
        scratch.resize(batch * rows, 0);
        self.matmul_i32(&x.codes, batch, scratch);
        let s_w = self.scale();
        for b in 0..batch {
            let s_x = x.scales[b];
            let row = b * rows..(b + 1) * rows;
            for (y, &d) in out[row.clone()].iter_mut().zip(&scratch[row]) {
                *y = d as f32 / s_x * s_w;
            }
        }
    }
}

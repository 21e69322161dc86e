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
        self.forward_segments(x, &[(self.rows(), self.scale())], &mut [out], scratch);
    }

    /// Float outputs of several BitLinears stacked row-wise in this one matrix (q/k/v, gate/up):
    /// segment `i` is the next `segments[i].0` rows, with weight scale `segments[i].1`, and its
    /// outputs go to `outs[i]` (`batch x rows_i`), each `y = dot as f32 / s_x * s_w` exactly as
    /// [`PreparedLinear::forward`] computes it. Backends that split the rows across threads
    /// override this so each thread scales its own rows.
    ///
    /// # Panics
    /// If the segments do not cover the rows, or a slice does not match `batch` (a programming
    /// error).
    fn forward_segments(
        &self,
        x: &QuantizedActivations,
        segments: &[(usize, f32)],
        outs: &mut [&mut [f32]],
        scratch: &mut Vec<i32>,
    ) {
        let (batch, rows) = (x.batch(), self.rows());
        check_segments(x, self.cols(), rows, segments, outs);
        scratch.resize(batch * rows, 0);
        self.matmul_i32(&x.codes, batch, scratch);
        for (b, ints) in scratch.chunks_exact(rows).enumerate() {
            let mut start = 0;
            for (out, &(n, s_w)) in outs.iter_mut().zip(segments) {
                scale_into(
                    &ints[start..start + n],
                    x.scales[b],
                    s_w,
                    &mut out[b * n..(b + 1) * n],
                );
                start += n;
            }
        }
    }
}

/// `out[i] = ints[i] as f32 / s_x * s_w`: the BitLinear's float output, the one place it is
/// computed on the CPU (so stacked, threaded and plain multiplies agree bit for bit).
pub fn scale_into(ints: &[i32], s_x: f32, s_w: f32, out: &mut [f32]) {
    crate::simd::scale_i32(ints, s_x, s_w, out);
}

/// The checks of [`PreparedLinear::forward_segments`]: the activation width, the segments'
/// rows and every output's length.
///
/// # Panics
/// On any mismatch (a programming error, as in [`PreparedLinear::matmul_i32`]).
pub fn check_segments(
    x: &QuantizedActivations,
    cols: usize,
    rows: usize,
    segments: &[(usize, f32)],
    outs: &[&mut [f32]],
) {
    let batch = x.batch();
    assert_eq!(x.cols, cols, "forward: activation width != weight columns");
    assert_eq!(
        segments.iter().map(|s| s.0).sum::<usize>(),
        rows,
        "forward: segments != rows"
    );
    assert_eq!(
        outs.len(),
        segments.len(),
        "forward: one output per segment"
    );
    for (out, &(n, _)) in outs.iter().zip(segments) {
        assert_eq!(out.len(), batch * n, "forward: output length mismatch");
    }
}

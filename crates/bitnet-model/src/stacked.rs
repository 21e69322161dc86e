//! BitLinears that read the same input (q/k/v; gate/up), stacked row-wise into one prepared
//! matrix so that a step quantizes their input once and makes one multiply, one thread-pool
//! hand-off, instead of one per projection. Each projection keeps its own weight scale: the
//! integer products are exactly the separate matrices' (every output row is its own dot
//! product), and the float outputs are rescaled segment by segment with the same arithmetic as
//! [`PreparedLinear::forward`], so results are bit-identical to running them apart.

use bitnet_core::{LinearKernel, PreparedLinear, QuantizedActivations, TernaryMatrix};

use crate::ModelError;

/// Several projections of one input, multiplied as one matrix.
pub struct Stacked {
    linear: Box<dyn PreparedLinear>,
    /// Each projection's output rows and weight scale `s_w`, in stacking order.
    segments: Vec<(usize, f32)>,
}

impl Stacked {
    /// Prepares `stacked` (the projections' rows one after another, as
    /// [`crate::WeightSource::ternary_stacked`] gives them) with `kernel`; `segments` are each
    /// projection's output rows and weight scale, in order.
    pub fn prepare(
        kernel: &dyn LinearKernel,
        stacked: &TernaryMatrix,
        segments: Vec<(usize, f32)>,
    ) -> Result<Self, ModelError> {
        let rows: usize = segments.iter().map(|s| s.0).sum();
        if rows != stacked.rows() {
            return Err(ModelError::Config(format!(
                "stacked projections: segments of {rows} rows for a matrix of {}",
                stacked.rows()
            )));
        }
        // The stacked matrix's own scale is never used: `forward` applies each segment's.
        let linear = kernel.prepare(stacked)?;
        Ok(Self { linear, segments })
    }

    /// Output rows of each projection, in stacking order.
    pub fn segment_rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.segments.iter().map(|s| s.0)
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.linear.cols()
    }

    /// Bytes of weights one multiply streams.
    pub fn weight_bytes(&self) -> usize {
        self.linear.weight_bytes()
    }

    /// Float outputs of every projection, `outs[i]` getting projection `i`'s `batch x rows_i`,
    /// using `scratch` for the integer products.
    ///
    /// # Panics
    /// If `outs` does not match the segments or the activation width (a programming error).
    pub fn forward(
        &self,
        x: &QuantizedActivations,
        outs: &mut [&mut [f32]],
        scratch: &mut Vec<i32>,
    ) {
        self.linear
            .forward_segments(x, &self.segments, outs, scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::stack_matrices;
    use bitnet_core::scalar::ScalarKernel;

    fn lcg(s: &mut u64) -> u64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s >> 33
    }

    /// Stacked and separate projections give the same floats, bit for bit, on every kernel
    /// this CPU offers (alone and threaded, so the stacked matrix is cut into parts across
    /// projection boundaries), for decode and batched inputs.
    #[test]
    fn stacked_equals_separate_bit_for_bit() {
        let mut seed = 3u64;
        let cols = 300;
        let shapes = [(200usize, 0.5f32), (72, 1.25), (72, 0.031)];
        let mats: Vec<TernaryMatrix> = shapes
            .iter()
            .map(|&(rows, scale)| {
                let codes = (0..rows * cols)
                    .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
                    .collect();
                TernaryMatrix::new(rows, cols, codes, scale).unwrap()
            })
            .collect();
        let mut kernels: Vec<std::sync::Arc<dyn LinearKernel>> = bitnet_cpu::available_kernels();
        kernels.extend(
            bitnet_cpu::available_kernels()
                .into_iter()
                .map(|k| bitnet_cpu::with_threads(k, 2)),
        );
        kernels.push(std::sync::Arc::new(ScalarKernel));
        for kernel in &kernels {
            let stacked = stack(&**kernel, &mats).unwrap();
            assert_eq!(stacked.segment_rows().collect::<Vec<_>>(), [200, 72, 72]);
            for batch in [1usize, 3, 8] {
                let x: Vec<f32> = (0..batch * cols)
                    .map(|_| lcg(&mut seed) as f32 / 1e9 - 2.0)
                    .collect();
                let mut qa = QuantizedActivations::default();
                qa.quantize(&x, batch, cols);
                let mut ints = Vec::new();
                let want: Vec<Vec<f32>> = mats
                    .iter()
                    .map(|m| {
                        let mut y = vec![0.0; batch * m.rows()];
                        kernel.prepare(m).unwrap().forward(&qa, &mut y, &mut ints);
                        y
                    })
                    .collect();
                let mut got: Vec<Vec<f32>> = mats
                    .iter()
                    .map(|m| vec![f32::NAN; batch * m.rows()])
                    .collect();
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| &mut v[..]).collect();
                stacked.forward(&qa, &mut outs, &mut ints);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} batch {batch}",
                        kernel.name()
                    );
                }
            }
        }
    }

    /// `mats` stacked as the default [`crate::WeightSource::ternary_stacked`] does.
    fn stack(kernel: &dyn LinearKernel, mats: &[TernaryMatrix]) -> Result<Stacked, ModelError> {
        let (m, segments) = stack_matrices(mats)?;
        Stacked::prepare(kernel, &m, segments)
    }

    #[test]
    fn different_widths_and_wrong_segments_are_refused() {
        let a = TernaryMatrix::new(2, 3, vec![0; 6], 1.0).unwrap();
        let b = TernaryMatrix::new(2, 4, vec![0; 8], 1.0).unwrap();
        assert!(stack(&ScalarKernel, &[a.clone(), b]).is_err());
        assert!(Stacked::prepare(&ScalarKernel, &a, vec![(1, 1.0)]).is_err());
    }
}

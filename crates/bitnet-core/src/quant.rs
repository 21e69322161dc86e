//! The int8 activation quantizer of BitNet b1.58, exactly as the reference computes it:
//! `s_x = 127 / max(|x|).clamp(min = 1e-5)`, `x_q = clamp(round_half_even(x * s_x), -128, 127)`,
//! all in f32. Any deviation here flips codes at rounding ties and changes greedy tokens later,
//! so every backend must produce these codes bit for bit.

/// Quantizes one activation row into `out` and returns its scale `s_x`.
///
/// # Panics
/// If `x` and `out` differ in length (a programming error, never user input).
pub fn quantize_row(x: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(x.len(), out.len(), "quantize_row: length mismatch");
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = 127.0f32 / max.max(1e-5);
    for (q, &v) in out.iter_mut().zip(x) {
        *q = round_ties_even_small(v * scale).clamp(-128.0, 127.0) as i8;
    }
    scale
}

/// `x.round_ties_even()` for `|x| <= 2^22`, which all scaled activations are (at most 127 in
/// magnitude): adding and removing 1.5 * 2^23 leaves exactly the nearest integer, ties to even,
/// under IEEE round-to-nearest. Unlike `round_ties_even` (a libm `rintf` call on baseline
/// x86-64), this vectorizes; the quantizer was a sixth of a batched decode step before.
#[inline(always)]
fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

/// A batch of quantized activation rows with their scales; reused across calls so the
/// per-token path does not allocate once it has grown to the largest batch.
#[derive(Clone, Debug, Default)]
pub struct QuantizedActivations {
    /// Codes, `batch` rows of `cols` each.
    pub codes: Vec<i8>,
    /// One `s_x` per row.
    pub scales: Vec<f32>,
    /// Row width.
    pub cols: usize,
}

impl QuantizedActivations {
    /// Quantizes `batch` rows of width `cols` taken from `x`.
    ///
    /// # Panics
    /// If `x.len() != batch * cols` (a programming error).
    pub fn quantize(&mut self, x: &[f32], batch: usize, cols: usize) {
        assert_eq!(x.len(), batch * cols, "quantize: shape mismatch");
        self.cols = cols;
        self.codes.resize(batch * cols, 0);
        self.scales.resize(batch, 0.0);
        for b in 0..batch {
            let r = b * cols..(b + 1) * cols;
            self.scales[b] = quantize_row(&x[r.clone()], &mut self.codes[r]);
        }
    }

    /// Rows held.
    pub fn batch(&self) -> usize {
        self.scales.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_hits_127() {
        let x = [1.0f32, -1.0, 0.5 / 127.0 * 1.0, 2.5 / 127.0, 0.0];
        let mut q = [0i8; 5];
        let s = quantize_row(&x, &mut q);
        assert_eq!(s, 127.0);
        assert_eq!(q, [127, -127, 0, 2, 0]);
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        let mut x = -130.0f32;
        while x <= 130.0 {
            for v in [x, x + 0.5, -x - 0.5, x.next_up(), x.next_down()] {
                assert_eq!(round_ties_even_small(v), v.round_ties_even(), "{v}");
            }
            x += 0.25;
        }
        for v in [0.0f32, -0.0, 4_194_304.5, -4_194_303.5, 1e-30, -1e-30] {
            assert_eq!(round_ties_even_small(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn all_zero_row_uses_the_clamp() {
        let mut q = [5i8; 3];
        let s = quantize_row(&[0.0; 3], &mut q);
        assert_eq!(s, 127.0 / 1e-5);
        assert_eq!(q, [0, 0, 0]);
    }
}

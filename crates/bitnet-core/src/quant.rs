//! The int8 activation quantizer of BitNet b1.58, exactly as the reference computes it:
//! `s_x = 127 / max(|x|).clamp(min = 1e-5)`, `x_q = clamp(round_half_even(x * s_x), -128, 127)`,
//! all in f32. Any deviation here flips codes at rounding ties and changes greedy tokens later,
//! so every backend must produce these codes bit for bit.

use std::cell::RefCell;

use crate::pool::ThreadPool;

thread_local! {
    /// The row [`QuantizedActivations::quantize_rows`] makes before quantizing it, per thread.
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Quantizes one activation row into `out` and returns its scale `s_x`.
///
/// # Panics
/// If `x` and `out` differ in length (a programming error, never user input).
pub fn quantize_row(x: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(x.len(), out.len(), "quantize_row: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the features were detected on this CPU just above.
        return unsafe { quantize_row_avx512(x, out) };
    }
    quantize_row_body(x, out)
}

/// [`quantize_row_body`] in 16-wide vectors: the same IEEE operations (multiply, the rounding
/// constant added and removed, the clamp), then the exact conversion of the integral result;
/// a NaN gives 0 as `as i32` does. The baseline build converted one value at a time (~2% of a
/// batch-16 decode step).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_row_avx512(x: &[f32], out: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    let max = abs_max(x);
    let scale = 127.0f32 / max.max(1e-5);
    let (xs, x_tail) = x.as_chunks::<16>();
    let (os, o_tail) = out.as_chunks_mut::<16>();
    let (s, magic) = (_mm512_set1_ps(scale), _mm512_set1_ps(MAGIC));
    let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
    for (o, c) in os.iter_mut().zip(xs) {
        // SAFETY: `c` is 16 readable f32 and `o` 16 writable bytes; both accesses are unaligned.
        unsafe {
            let v = _mm512_loadu_ps(c.as_ptr());
            let r = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, s), magic), magic);
            let ok = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r);
            let q = _mm512_maskz_cvtps_epi32(ok, _mm512_min_ps(_mm512_max_ps(r, lo), hi));
            _mm_storeu_si128(o.as_mut_ptr().cast(), _mm512_cvtsepi32_epi8(q));
        }
    }
    for (q, &v) in o_tail.iter_mut().zip(x_tail) {
        *q = code(v, scale);
    }
    scale
}

#[inline(always)]
fn quantize_row_body(x: &[f32], out: &mut [i8]) -> f32 {
    let max = abs_max(x);
    let scale = 127.0f32 / max.max(1e-5);
    for (q, &v) in out.iter_mut().zip(x) {
        *q = code(v, scale);
    }
    scale
}

/// One value's int8 code at scale `scale`.
#[inline(always)]
fn code(v: f32, scale: f32) -> i8 {
    round_ties_even_small(v * scale).clamp(-128.0, 127.0) as i8
}

/// `max(|x|)` (0 for an empty row; NaNs ignored, as `f32::max` does), in 16 lanes so that it
/// vectorizes; a maximum is exact in any order.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let (chunks, tail) = x.as_chunks::<16>();
    let mut acc = [0.0f32; 16];
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            // A compare and select (`maxps`): `f32::max`'s NaN rule kept it scalar. NaNs
            // compare false, so they are skipped as `f32::max` skips them.
            let v = v.abs();
            if v > *a {
                *a = v;
            }
        }
    }
    acc.iter().chain(tail).fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `x.round_ties_even()` for `|x| <= 2^22`, which all scaled activations are (at most 127 in
/// magnitude): adding and removing 1.5 * 2^23 leaves exactly the nearest integer, ties to even,
/// under IEEE round-to-nearest. Unlike `round_ties_even` (a libm `rintf` call on baseline
/// x86-64), this vectorizes; the quantizer was a sixth of a batched decode step before.
#[inline(always)]
fn round_ties_even_small(x: f32) -> f32 {
    (x + MAGIC) - MAGIC
}

/// 1.5 * 2^23: see [`round_ties_even_small`].
const MAGIC: f32 = 12_582_912.0;

/// A batch of quantized activation rows with their scales; reused across calls so the
/// per-token path does not allocate once it has grown to the largest batch.
#[derive(Clone, Debug, Default)]
pub struct QuantizedActivations {
    /// Codes, `batch` rows of `cols` each, from a 64-byte boundary.
    pub codes: crate::aligned::AlignedVec<i8>,
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

    /// Quantizes `batch` rows of width `cols`, each first written by `row(t, buf)` into a
    /// buffer of `cols` values (row `t`'s norm, say): the codes and scales of [`Self::quantize`]
    /// over the rows `row` writes. With a `pool`, blocks of rows run on its threads (each row is
    /// made and quantized by one thread, so the results do not depend on the split).
    pub fn quantize_rows(
        &mut self,
        batch: usize,
        cols: usize,
        pool: Option<&ThreadPool>,
        row: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        self.cols = cols;
        self.codes.resize(batch * cols, 0);
        self.scales.resize(batch, 0.0);
        // Row t, made in this thread's buffer and quantized into `codes`; returns its scale.
        let one = |t: usize, codes: &mut [i8]| {
            ROW.with_borrow_mut(|buf| {
                buf.resize(cols, 0.0);
                row(t, buf);
                quantize_row(buf, codes)
            })
        };
        match pool {
            Some(pool) if batch > 1 && cols > 0 => {
                // Two blocks of rows per thread, so that a late thread's share is taken over.
                let per = batch.div_ceil(2 * pool.threads());
                let mut blocks: Vec<_> = (self.codes.chunks_mut(per * cols))
                    .zip(self.scales.chunks_mut(per))
                    .collect();
                pool.for_each_chunk_mut(&mut blocks, 1, &|i, block| {
                    for (codes, scales) in block.iter_mut() {
                        let rows = codes.chunks_exact_mut(cols).zip(scales.iter_mut());
                        for (j, (codes, scale)) in rows.enumerate() {
                            *scale = one(i * per + j, codes);
                        }
                    }
                });
            }
            _ => {
                for (t, scale) in self.scales.iter_mut().enumerate() {
                    *scale = one(t, &mut self.codes[t * cols..(t + 1) * cols]);
                }
            }
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

    /// Rows made and quantized on a pool's threads, in blocks, give `quantize`'s codes and
    /// scales over the same rows, for batches of one to a few blocks per thread and every width
    /// including zero.
    #[test]
    fn rows_quantized_on_a_pool_equal_the_serial_quantizer() {
        let pool = ThreadPool::new(3);
        for cols in [0usize, 1, 17, 2560] {
            for batch in [0usize, 1, 2, 5, 8, 13, 40] {
                let x: Vec<f32> = (0..batch * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + (i % 7) as f32)
                    .collect();
                let mut want = QuantizedActivations::default();
                want.quantize(&x, batch, cols);
                for pool in [None, Some(&pool)] {
                    let mut got = QuantizedActivations::default();
                    got.quantize_rows(batch, cols, pool, &|t, row| {
                        row.copy_from_slice(&x[t * cols..(t + 1) * cols])
                    });
                    assert_eq!(got.cols, cols);
                    assert_eq!(&got.codes[..], &want.codes[..], "{batch} x {cols}");
                    let bits = |q: &QuantizedActivations| -> Vec<u32> {
                        q.scales.iter().map(|s| s.to_bits()).collect()
                    };
                    assert_eq!(bits(&got), bits(&want), "{batch} x {cols}");
                }
            }
        }
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

    /// The vector quantizer (where this CPU has it) against the portable body, value for value:
    /// rounding ties at every code, values past the clamp, zeros of both signs, NaN and infinite
    /// values, and every tail length.
    #[test]
    fn vector_and_portable_quantizers_agree() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in [0usize, 1, 15, 16, 17, 33, 255, 2560, 6913] {
            for round in 0..4 {
                let mut x: Vec<f32> = (0..len)
                    .map(|_| match next() % 16 {
                        // Exact ties once scaled by 127 / 127 (the row's max is 127 below).
                        0 => (next() % 255) as f32 - 127.0 + 0.5,
                        1 => -0.0,
                        2 => f32::NAN,
                        3 if round == 3 => f32::INFINITY,
                        _ => ((next() % 19_813) as f32 - 9_906.0) / 78.0,
                    })
                    .collect();
                if let Some(first) = x.first_mut() {
                    *first = 127.0;
                }
                let (mut a, mut b) = (vec![0i8; len], vec![0i8; len]);
                let (sa, sb) = (quantize_row(&x, &mut a), quantize_row_body(&x, &mut b));
                assert_eq!(sa.to_bits(), sb.to_bits(), "scale, length {len}");
                assert_eq!(a, b, "codes, length {len}, round {round}");
            }
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

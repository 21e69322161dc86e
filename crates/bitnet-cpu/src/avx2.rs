//! The AVX2 backend: 2-bit codes unpacked 32 lanes at a time and multiplied with `maddubs`.
//!
//! `maddubs` multiplies unsigned codes `u` in {0, 1, 2} by signed activations in [-128, 127] and
//! adds adjacent pairs into `i16`: at most |2 * 2 * 128| = 512 per pair, so it never saturates,
//! and a block's four such vectors summed stay within 2048. Runs of up to [`RUN`] = 15 blocks
//! accumulate in `i16` (at most 30,720) before `madd` with ones widens them to `i32`: two vector
//! operations fewer per block and activation row than widening every block.
//! Batches of four activation rows share each unpacked weight block; at batch 1, four weight
//! rows share each activation load and one horizontal reduction.

use std::arch::x86_64::*;

use bitnet_core::{CoreError, LinearKernel, PreparedLinear, TernaryMatrix};

use crate::pack::{Act, PackedTernary, act, each_row};
use crate::quads;

/// Packed bytes per block (one 256-bit load).
const B: usize = 32;
/// Weights per block.
const W: usize = 4 * B;
/// Blocks summed in `i16` before widening: 15 x 2048 <= 32,767.
const RUN: usize = 15;

/// The AVX2 kernel (`avx2`). It can only be obtained on a CPU that has AVX2, which is what makes
/// its prepared matrices safe to run.
#[derive(Clone, Copy, Debug)]
pub struct Avx2Kernel {
    _detected: (),
}

impl Avx2Kernel {
    /// The kernel, if this CPU supports AVX2; `None` otherwise.
    pub fn new() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Self { _detected: () })
    }
}

impl LinearKernel for Avx2Kernel {
    fn name(&self) -> &'static str {
        "avx2"
    }

    fn prepare(&self, weights: &TernaryMatrix) -> Result<Box<dyn PreparedLinear>, CoreError> {
        Ok(Box::new(Avx2Linear(PackedTernary::pack(weights, B)?)))
    }
}

/// A matrix packed for the AVX2 kernel; only [`Avx2Kernel::prepare`] builds one.
struct Avx2Linear(PackedTernary);

impl PreparedLinear for Avx2Linear {
    fn rows(&self) -> usize {
        self.0.rows
    }

    fn cols(&self) -> usize {
        self.0.cols
    }

    fn scale(&self) -> f32 {
        self.0.scale
    }

    fn matmul_i32(&self, x: &[i8], batch: usize, out: &mut [i32]) {
        self.0.check(x, batch, out);
        // SAFETY: an Avx2Linear is only built by Avx2Kernel::prepare, and an Avx2Kernel only
        // exists after `Avx2Kernel::new` detected AVX2 on this CPU.
        unsafe { matmul(&self.0, x, batch, out) }
    }
}

#[target_feature(enable = "avx2")]
fn matmul(p: &PackedTernary, x: &[i8], batch: usize, out: &mut [i32]) {
    let (rows, cols, nb) = (p.rows, p.cols, p.blocks_per_row);
    if rows == 0 || batch == 0 {
        return;
    }
    if cols == 0 {
        out.fill(0);
        return;
    }
    let (blocks, _) = p.packed().as_chunks::<B>();
    let mut xs = x.chunks_exact(cols);
    let mut os = out.chunks_exact_mut(rows);
    for g in quads::groups(batch, &mut xs, &mut os, act::<W>, false) {
        let [o0, o1, o2, o3] = g.outs;
        let outs = o0.iter_mut().zip(o1).zip(o2).zip(o3);
        for (w, (((y0, y1), y2), y3)) in blocks.chunks_exact(nb).zip(outs) {
            [*y0, *y1, *y2, *y3] = dot_1x4(w, &g.acts);
        }
    }
    // One weight row at a time: one sequential stream (`pack::each_row`).
    for (xr, or) in xs.zip(os) {
        let a = act(xr);
        each_row(blocks, nb, or, |w| dot_1x1(w, &a));
    }
}

/// Loads 32 packed bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn load_w(w: &[u8; B]) -> __m256i {
    // SAFETY: the reference covers exactly 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(w.as_ptr().cast()) }
}

/// Loads activations `32 Q .. 32 Q + 32` of a block.
#[inline]
#[target_feature(enable = "avx2")]
fn load_x<const Q: usize>(x: &[i8; W]) -> __m256i {
    const { assert!(Q < 4) };
    // SAFETY: Q < 4, so bytes 32Q..32Q+32 lie inside the 128-byte array; loadu is unaligned.
    unsafe { _mm256_loadu_si256(x.as_ptr().add(32 * Q).cast()) }
}

/// The four code vectors of a block, lining up with activations 0..32, 32..64, 64..96, 96..128.
#[inline]
#[target_feature(enable = "avx2")]
fn unpack(w: &[u8; B]) -> [__m256i; 4] {
    let v = load_w(w);
    let m = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(v, m),
        _mm256_and_si256(_mm256_srli_epi16::<2>(v), m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
        _mm256_and_si256(_mm256_srli_epi16::<6>(v), m),
    ]
}

/// `dot(u, x)` of one block as sixteen `i16` partial sums (each within 2048).
#[inline]
#[target_feature(enable = "avx2")]
fn block16(u: &[__m256i; 4], x: &[i8; W]) -> __m256i {
    let p0 = _mm256_maddubs_epi16(u[0], load_x::<0>(x));
    let p1 = _mm256_maddubs_epi16(u[1], load_x::<1>(x));
    let p2 = _mm256_maddubs_epi16(u[2], load_x::<2>(x));
    let p3 = _mm256_maddubs_epi16(u[3], load_x::<3>(x));
    _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3))
}

/// `acc + dot(u, x)` with `acc` in `i16` (the caller keeps runs within [`RUN`] blocks).
#[inline]
#[target_feature(enable = "avx2")]
fn add_block(acc: __m256i, u: &[__m256i; 4], x: &[i8; W]) -> __m256i {
    _mm256_add_epi16(acc, block16(u, x))
}

/// `acc32 + acc16` widened to eight `i32` sums.
#[inline]
#[target_feature(enable = "avx2")]
fn widen(acc32: __m256i, acc16: __m256i) -> __m256i {
    _mm256_add_epi32(acc32, _mm256_madd_epi16(acc16, _mm256_set1_epi16(1)))
}

/// `dot(u, x)` of one block as eight `i32` partial sums.
#[inline]
#[target_feature(enable = "avx2")]
fn block(u: &[__m256i; 4], x: &[i8; W]) -> __m256i {
    widen(_mm256_setzero_si256(), block16(u, x))
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Horizontal sums of four vectors at once.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum4(v: [__m256i; 4]) -> [i32; 4] {
    let t01 = _mm256_hadd_epi32(v[0], v[1]);
    let t23 = _mm256_hadd_epi32(v[2], v[3]);
    let t = _mm256_hadd_epi32(t01, t23);
    let s = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
    [
        _mm_extract_epi32::<0>(s),
        _mm_extract_epi32::<1>(s),
        _mm_extract_epi32::<2>(s),
        _mm_extract_epi32::<3>(s),
    ]
}

/// One weight row by one activation row.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_1x1(w: &[[u8; B]], a: &Act<'_, W>) -> i32 {
    let mut acc = _mm256_setzero_si256();
    for (ws, xs) in w.chunks(RUN).zip(a.full.chunks(RUN)) {
        let mut run = _mm256_setzero_si256();
        for (wb, xb) in ws.iter().zip(xs) {
            run = add_block(run, &unpack(wb), xb);
        }
        acc = widen(acc, run);
    }
    if let (Some(t), Some(wb)) = (&a.tail, w.get(a.full.len())) {
        acc = _mm256_add_epi32(acc, block(&unpack(wb), t));
    }
    hsum(acc).wrapping_sub(a.sum)
}

/// One weight row by four activation rows: each unpacked block serves four activation rows.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_1x4(w: &[[u8; B]], a: &[Act<'_, W>; 4]) -> [i32; 4] {
    let mut acc = [_mm256_setzero_si256(); 4];
    for (start, ws) in (0..).step_by(RUN).zip(w[..a[0].full.len()].chunks(RUN)) {
        let mut run = [_mm256_setzero_si256(); 4];
        let xs = a[0].full[start..].iter().zip(&a[1].full[start..]);
        let xs = xs.zip(&a[2].full[start..]).zip(&a[3].full[start..]);
        for (wb, (((x0, x1), x2), x3)) in ws.iter().zip(xs) {
            let u = unpack(wb);
            run[0] = add_block(run[0], &u, x0);
            run[1] = add_block(run[1], &u, x1);
            run[2] = add_block(run[2], &u, x2);
            run[3] = add_block(run[3], &u, x3);
        }
        for (acc, run) in acc.iter_mut().zip(run) {
            *acc = widen(*acc, run);
        }
    }
    if let Some(wb) = w.get(a[0].full.len()) {
        let u = unpack(wb);
        for (acc, a) in acc.iter_mut().zip(a) {
            if let Some(t) = &a.tail {
                *acc = _mm256_add_epi32(*acc, block(&u, t));
            }
        }
    }
    let d = hsum4(acc);
    [
        d[0].wrapping_sub(a[0].sum),
        d[1].wrapping_sub(a[1].sum),
        d[2].wrapping_sub(a[2].sum),
        d[3].wrapping_sub(a[3].sum),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_core::scalar::ScalarKernel;

    #[test]
    fn matches_scalar_on_tails_and_every_batch_path() {
        let Some(k) = Avx2Kernel::new() else { return };
        // The last: three chunks of weight rows (48, 48 and 7).
        for (rows, cols, batch) in [(9, 300, 5), (7, 128, 16), (103, 10240, 9)] {
            crate::assert_matches_scalar(&k, rows, cols, batch);
        }
    }

    #[test]
    fn runs_of_i16_sums_never_overflow_on_wide_rows() {
        // 6,917 columns: three runs of up to 15 blocks and a tail. Rows of all +1, all -1 and
        // mixed weights against activations of all -128, all 127 and a pattern, every batch
        // size that takes the groups of four and the single rows.
        let Some(k) = Avx2Kernel::new() else { return };
        let (rows, cols) = (7, 6917);
        let w: Vec<i8> = (0..rows * cols)
            .map(|i| match i / cols {
                0 | 3 => 1,
                1 | 4 => -1,
                _ => (i * 5 % 3) as i8 - 1,
            })
            .collect();
        let m = TernaryMatrix::new(rows, cols, w, 1.0).unwrap();
        let (p, s) = (k.prepare(&m).unwrap(), ScalarKernel.prepare(&m).unwrap());
        for batch in 1..=13 {
            let x: Vec<i8> = (0..batch * cols)
                .map(|i| match (i / cols) % 3 {
                    0 => -128,
                    1 => 127,
                    _ => (i * 37 % 256) as u8 as i8,
                })
                .collect();
            let (mut a, mut b) = (vec![0; batch * rows], vec![0; batch * rows]);
            p.matmul_i32(&x, batch, &mut a);
            s.matmul_i32(&x, batch, &mut b);
            assert_eq!(a, b, "batch {batch}");
        }
    }
}

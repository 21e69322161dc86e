//! Dot products of block-quantized rows (Q8_0, Q6_K, Q4_K, Q4_0) with f32 activation vectors,
//! computed from the blocks themselves instead of decoding each row to f32 first: what a compact
//! output head needs to run at memory speed.
//!
//! # Numerics
//!
//! As in ggml's CPU kernels, each activation vector is first quantized to int8 per 32-element
//! block: `d = max|x| / 127` (f32, not rounded to f16), `q = round_half_even(x / d)`. Each
//! 4-element group of weight codes times activation codes is then summed exactly in i32 and scaled
//! in f32 by the weight's scales and the activation block's `d`. The only approximation is the
//! activation rounding, `|x - q d| <= d / 2`, so a product differs from the exact dot product of
//! the decoded row by at most `sum_i |w_i| d_(block of i) / 2`, plus f32 summation rounding (see
//! [`error_bound`]; the tests check it, and that greedy tokens agree).
//!
//! # Kernels
//!
//! [`DotKernel::detect`] picks AVX-512 VNNI (`vpdpbusd` on 64 bytes), AVX2 (`vpmaddubsw` on 32
//! bytes) or the portable scalar code at run time. They compute the same integer sums; only the
//! order of the f32 additions differs.

use std::cell::RefCell;

use bitnet_core::aligned::AlignedVec;

use crate::error::{GgufError, Result};
use crate::types::TensorType;

/// Elements per activation block (one f32 scale each).
pub const ACT_BLOCK: usize = 32;

/// Elements per lane: the granularity of the integer sums (`vpdpbusd` sums 4 byte products).
pub(crate) const LANE: usize = 4;

/// Activation vectors quantized to int8 per [`ACT_BLOCK`]-element block for integer dot products.
///
/// Besides the codes it keeps, per 4-element lane, the block's scale and minus the sum of the
/// lane's codes: kernels that feed unsigned (offset) weight codes to `vpdpbusd` use the sums to
/// remove the offset, and a per-lane scale vector loads straight into a register.
#[derive(Clone, Debug, Default)]
pub struct QuantizedActs {
    cols: usize,
    m: usize,
    // On 64-byte boundaries: the row kernels read codes, scales and sums in 64-byte vectors,
    // and one that straddles two cache lines costs two loads (BENCHMARKS.md, session 8).
    qs: AlignedVec<i8>,
    lane_scale: AlignedVec<f32>,
    lane_neg_sum: AlignedVec<i32>,
}

impl QuantizedActs {
    /// An empty set (quantize into it with [`QuantizedActs::quantize`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `m` vectors (`xs` is `m x cols`, row-major; `cols` a non-zero multiple of
    /// [`ACT_BLOCK`]), reusing this value's buffers.
    pub fn quantize(&mut self, xs: &[f32], m: usize) -> Result<()> {
        const CTX: &str = "activation quantizer";
        if m == 0 || !xs.len().is_multiple_of(m) {
            return Err(GgufError::input(
                CTX,
                format!("{} values do not form {m} vectors", xs.len()),
            ));
        }
        let cols = xs.len() / m;
        if cols == 0 || !cols.is_multiple_of(ACT_BLOCK) {
            return Err(GgufError::input(
                CTX,
                format!("vector length {cols} is not a non-zero multiple of {ACT_BLOCK}"),
            ));
        }
        self.cols = cols;
        self.m = m;
        self.qs.resize(xs.len(), 0);
        self.lane_scale.resize(xs.len() / LANE, 0.0);
        self.lane_neg_sum.resize(xs.len() / LANE, 0);
        let blocks = xs
            .chunks_exact(ACT_BLOCK)
            .zip(self.qs.chunks_exact_mut(ACT_BLOCK))
            .zip(self.lane_scale.chunks_exact_mut(ACT_BLOCK / LANE))
            .zip(self.lane_neg_sum.chunks_exact_mut(ACT_BLOCK / LANE));
        for (((x, q), ls), ns) in blocks {
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(x) {
                // |v * id| <= 127 up to rounding; the cast saturates (and maps NaN to 0).
                *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
            ls.fill(d);
            for (n, g) in ns.iter_mut().zip(q.chunks_exact(LANE)) {
                *n = -g.iter().map(|&v| i32::from(v)).sum::<i32>();
            }
        }
        Ok(())
    }

    /// Vector length.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of vectors.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Vector `j`'s codes.
    pub fn codes(&self, j: usize) -> &[i8] {
        &self.qs[j * self.cols..(j + 1) * self.cols]
    }

    /// Scale of block `b` of vector `j` (element `i` is `codes(j)[i] * block_scale(j, i / 32)`).
    pub fn block_scale(&self, j: usize, b: usize) -> f32 {
        self.lane_scale[(j * self.cols + b * ACT_BLOCK) / LANE]
    }

    /// Vector `j` as the kernels read it: codes, per-lane scales, per-lane negated sums.
    pub(crate) fn vector(&self, j: usize) -> ActRef<'_> {
        let l = self.cols / LANE;
        ActRef {
            q: self.codes(j),
            scale: &self.lane_scale[j * l..(j + 1) * l],
            neg_sum: &self.lane_neg_sum[j * l..(j + 1) * l],
        }
    }
}

/// One quantized vector (see [`QuantizedActs::vector`]); `scale` and `neg_sum` hold one entry
/// per 4 codes.
#[derive(Clone, Copy)]
pub(crate) struct ActRef<'a> {
    pub q: &'a [i8],
    pub scale: &'a [f32],
    pub neg_sum: &'a [i32],
}

impl ActRef<'_> {
    /// How many blocks of `block_bytes` (each covering `per_block` codes) `row` holds; panics
    /// unless this vector covers exactly those blocks (the SIMD row kernels read within them).
    pub(crate) fn blocks_of(&self, row: &[u8], block_bytes: usize, per_block: usize) -> usize {
        let n = row.len() / block_bytes;
        assert!(
            row.len() == n * block_bytes
                && self.q.len() == n * per_block
                && self.scale.len() == n * per_block / LANE
                && self.neg_sum.len() == n * per_block / LANE
        );
        n
    }
}

/// f16 bits to f32 with F16C (the block scales of the x86 row kernels).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c")]
pub(crate) fn h2f(bits: u16) -> f32 {
    use std::arch::x86_64::*;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// An implementation of the quantized dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotKernel {
    /// AVX-512 with VNNI (`vpdpbusd`) and BW, 64 bytes per step.
    Avx512Vnni,
    /// AVX2 + FMA + F16C (`vpmaddubsw`), 32 bytes per step.
    Avx2,
    /// Portable scalar code.
    Scalar,
}

impl DotKernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        Self::available()[0]
    }

    /// Every kernel this CPU runs, fastest first (always ends with [`DotKernel::Scalar`]).
    pub fn available() -> Vec<Self> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("f16c") {
                out.push(Self::Avx512Vnni);
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(Self::Avx2);
            }
        }
        out.push(Self::Scalar);
        out
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512vnni",
            Self::Avx2 => "avx2",
            Self::Scalar => "scalar",
        }
    }
}

/// Whether [`dot_rows_f32`] computes products for `kind` (Q8_0, Q6_K, Q4_K and Q4_0).
pub fn supports_dot(kind: TensorType) -> bool {
    row_dots(kind).is_some()
}

/// The row kernels of `kind`, if it has any.
fn row_dots(kind: TensorType) -> Option<&'static RowDots> {
    match kind {
        TensorType::Q8_0 => Some(&super::q8_0::ROW_DOTS),
        TensorType::Q6_K => Some(&super::q6_k::ROW_DOTS),
        TensorType::Q4_K => Some(&super::q4_k::ROW_DOTS),
        TensorType::Q4_0 => Some(&super::q4_0::ROW_DOTS),
        _ => None,
    }
}

/// `out[i * m + j] = row_(first_row + i) . xs_j` for the rows of a Q8_0, Q6_K, Q4_K or Q4_0
/// tensor whose rows hold `row_len` elements, against `m` f32 vectors (`xs` is `m x row_len`,
/// row-major); `out.len() / m` rows are computed. `data` is the whole tensor's bytes.
///
/// The vectors are quantized to int8 (see the module notes for the error this adds); the
/// quantization is cached per thread, so calls that split one head over many row ranges with
/// the same `xs` quantize it once per thread. Each product depends only on its row and its
/// vector, so `m` and the row split never change a result.
pub fn dot_rows_f32(
    kind: TensorType,
    data: &[u8],
    row_len: usize,
    first_row: usize,
    xs: &[f32],
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    thread_local! {
        static CACHE: RefCell<(Vec<f32>, QuantizedActs)> = RefCell::new((Vec::new(), QuantizedActs::new()));
    }
    CACHE.with_borrow_mut(|(key, acts)| {
        let same = !key.is_empty()
            && key.len() == xs.len()
            && acts.m == m
            && key.iter().zip(xs).all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            key.clear();
            acts.quantize(xs, m)?;
            key.extend_from_slice(xs);
        }
        dot_rows_quantized(
            DotKernel::detect(),
            kind,
            data,
            row_len,
            first_row,
            acts,
            out,
        )
    })
}

/// [`dot_rows_f32`] with vectors quantized beforehand and an explicit kernel (which must be
/// one of [`DotKernel::available`]).
pub fn dot_rows_quantized(
    kernel: DotKernel,
    kind: TensorType,
    data: &[u8],
    row_len: usize,
    first_row: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) -> Result<()> {
    let Some(dots) = row_dots(kind) else {
        return Err(GgufError::data(
            kind.name(),
            "quantized dot products support only Q8_0, Q6_K, Q4_K and Q4_0",
        ));
    };
    if !DotKernel::available().contains(&kernel) {
        return Err(GgufError::input(
            "quantized dot products",
            format!("the {} kernel does not run on this CPU", kernel.name()),
        ));
    }
    let m = acts.m();
    if acts.cols() != row_len || row_len == 0 || m == 0 || !out.len().is_multiple_of(m) {
        return Err(GgufError::input(
            "quantized dot products",
            format!(
                "{} vectors of {} values against rows of {row_len} into {} outputs",
                m,
                acts.cols(),
                out.len()
            ),
        ));
    }
    let n_rows = out.len() / m;
    if n_rows == 0 {
        return Ok(());
    }
    let out_of_range = || {
        GgufError::data(
            kind.name(),
            format!(
                "rows {first_row}..{} of {row_len} elements are past the end of {} bytes",
                first_row.saturating_add(n_rows),
                data.len()
            ),
        )
    };
    // Also checks that `row_len` is a multiple of the format's block.
    let row_bytes = usize::try_from(kind.row_bytes(row_len as u64)?).map_err(|_| out_of_range())?;
    let start = row_bytes.checked_mul(first_row).ok_or_else(out_of_range)?;
    let end = row_bytes
        .checked_mul(n_rows)
        .and_then(|len| start.checked_add(len))
        .ok_or_else(out_of_range)?;
    let rows = data.get(start..end).ok_or_else(out_of_range)?;
    dot_rows(dots, kernel, rows, row_bytes, acts, out);
    Ok(())
}

/// One block format's row-times-vector kernels.
pub(crate) struct RowDots {
    /// Portable.
    pub(crate) scalar: fn(&[u8], ActRef<'_>) -> f32,
    /// Needs AVX-512 F/BW/VNNI (and F16C).
    #[cfg(target_arch = "x86_64")]
    pub(crate) avx512: unsafe fn(&[u8], ActRef<'_>) -> f32,
    /// Needs AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    pub(crate) avx2: unsafe fn(&[u8], ActRef<'_>) -> f32,
    /// `avx2` against four vectors at once (the row's blocks unpacked once for all four), each
    /// product bit-identical to `avx2`'s; `None` where a format has none.
    #[cfg(target_arch = "x86_64")]
    pub(crate) avx2_x4: Option<RowDotsX4>,
}

/// A row kernel against four vectors.
#[cfg(target_arch = "x86_64")]
pub(crate) type RowDotsX4 = unsafe fn(&[u8], [ActRef<'_>; 4]) -> [f32; 4];

/// Dot products of rows (`rows` holds whole rows of `row_bytes`) with quantized vectors:
/// `out[i * m + j] = row_i . acts_j`. The caller checked the shapes and that `kernel` runs here.
fn dot_rows(
    dots: &RowDots,
    kernel: DotKernel,
    rows: &[u8],
    row_bytes: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    let m = acts.m();
    // Blocks of rows (~16 KB of them) against one vector at a time (four where a format's AVX2
    // kernel takes four: its blocks are then unpacked once per four vectors): the block stays
    // in L1 while each vector's codes, scales and sums (7.5 KB at 2,560 columns) are read once
    // per block instead of once per row (at 16 vectors, 120 KB per row from L2). Each product
    // is the same arithmetic whatever the order.
    let block = (BLOCK_BYTES / row_bytes.max(1)).max(1);
    let blocks = rows
        .chunks(block * row_bytes)
        .zip(out.chunks_mut(block * m));
    for (rows, out) in blocks {
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        if let (DotKernel::Avx2, Some(x4)) = (kernel, dots.avx2_x4) {
            while j + 4 <= m {
                let xs: [ActRef<'_>; 4] = std::array::from_fn(|k| acts.vector(j + k));
                for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
                    // SAFETY: `dot_rows_quantized` only passes kernels that
                    // `DotKernel::available` detected on this CPU.
                    o[j..j + 4].copy_from_slice(&unsafe { x4(row, xs) });
                }
                j += 4;
            }
        }
        for j in j..m {
            let x = acts.vector(j);
            for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
                o[j] = match kernel {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `dot_rows_quantized` only passes kernels that
                    // `DotKernel::available` detected on this CPU.
                    DotKernel::Avx512Vnni => unsafe { (dots.avx512)(row, x) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    DotKernel::Avx2 => unsafe { (dots.avx2)(row, x) },
                    _ => (dots.scalar)(row, x),
                };
            }
        }
    }
}

/// Bytes of rows per block of [`dot_rows`].
const BLOCK_BYTES: usize = 16 * 1024;

/// The bound on `|fast - exact|` for one product, from the activation rounding alone:
/// `sum_i |w_i| d_(block of i) / 2`, with `w` the decoded row and `d` the block scales of
/// vector `j` of `acts`. The f32 summation adds a relative `~1e-6` of `sum |w_i x_i|` on top.
pub fn error_bound(row: &[f32], acts: &QuantizedActs, j: usize) -> f64 {
    row.chunks(ACT_BLOCK)
        .enumerate()
        .map(|(b, w)| {
            let d = f64::from(acts.block_scale(j, b));
            w.iter().map(|&v| f64::from(v).abs()).sum::<f64>() * d / 2.0
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizer_rounds_within_half_a_step_and_keeps_sums() {
        let xs: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut a = QuantizedActs::new();
        a.quantize(&xs, 2).unwrap();
        assert_eq!((a.cols(), a.m()), (64, 2));
        // Each row of 64 codes (and of 16 lane scales and sums) starts on a 64-byte boundary.
        for j in 0..2 {
            let v = a.vector(j);
            assert_eq!(v.q.as_ptr() as usize % 64, 0);
            assert_eq!(v.scale.as_ptr() as usize % 64, 0);
            assert_eq!(v.neg_sum.as_ptr() as usize % 64, 0);
        }
        for j in 0..2 {
            let v = a.vector(j);
            for (i, &x) in xs[j * 64..(j + 1) * 64].iter().enumerate() {
                let d = a.block_scale(j, i / 32);
                assert!((f32::from(v.q[i]) * d - x).abs() <= d / 2.0 * 1.0001);
                assert_eq!(v.scale[i / 4], d);
            }
            for (l, &n) in v.neg_sum.iter().enumerate() {
                let s: i32 = v.q[4 * l..4 * l + 4].iter().map(|&q| i32::from(q)).sum();
                assert_eq!(n, -s);
            }
        }
        assert!(a.quantize(&xs, 3).is_err());
        assert!(a.quantize(&xs[..48], 1).is_err());
        assert!(a.quantize(&[], 1).is_err());
        assert!(a.quantize(&xs, 0).is_err());
        a.quantize(&[0.0; 32], 1).unwrap();
        assert!(a.codes(0).iter().all(|&q| q == 0));
    }

    #[test]
    fn bad_shapes_and_kinds_are_refused() {
        let w: Vec<f32> = (0..512).map(|i| (i % 13) as f32 - 6.0).collect();
        let data = super::super::encode_q8_0(&w).unwrap();
        let mut acts = QuantizedActs::new();
        acts.quantize(&w[..256], 1).unwrap();
        let mut out = [0.0f32; 2];
        let k = DotKernel::Scalar;
        dot_rows_quantized(k, TensorType::Q8_0, &data, 256, 0, &acts, &mut out).unwrap();
        assert!(dot_rows_quantized(k, TensorType::Q8_0, &data, 256, 1, &acts, &mut out).is_err());
        assert!(
            dot_rows_quantized(k, TensorType::Q8_0, &data, 256, usize::MAX, &acts, &mut out)
                .is_err()
        );
        assert!(dot_rows_quantized(k, TensorType::F16, &data, 256, 0, &acts, &mut out).is_err());
        assert!(dot_rows_quantized(k, TensorType::Q8_0, &data, 128, 0, &acts, &mut out).is_err());
        let mut none: [f32; 0] = [];
        dot_rows_quantized(k, TensorType::Q8_0, &data, 256, 9, &acts, &mut none).unwrap();
        assert!(dot_rows_f32(TensorType::Q8_0, &data, 256, 0, &w[..255], 1, &mut out).is_err());
    }
}

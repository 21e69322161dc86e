//! The AVX-512 VNNI backend: 2-bit codes unpacked 64 lanes at a time and multiplied with
//! `vpdpbusd`, which sums four unsigned-code by signed-activation products straight into `i32`
//! lanes (no `i16` intermediate, so no saturation to reason about).
//! Batches go in tiles of four weight rows by four activation rows ([`crate::quads`]; a batch's
//! last one to three rows by fewer): each unpacked block serves four activation rows and each
//! activation load four weight rows. At batch 1 the rows go one at a time (one sequential
//! stream of weights: `pack::PREFETCH_L2_BYTES`).

use std::arch::x86_64::*;

use bitnet_core::{CoreError, LinearKernel, PreparedLinear, TernaryMatrix};

use crate::pack::{Act, PackedTernary, act, each_row};
use crate::quads::{self, Group, Rows, put, put_row, sums16};

/// Packed bytes per block (one 512-bit load).
const B: usize = 64;
/// Weights per block.
const W: usize = 4 * B;
/// Longest row (in blocks) for which [`dot_4x1_scaled`]'s `64 * u` accumulators cannot wrap:
/// a block adds at most 4 * 2 * 128 * 64 = 2^16 to a lane, and 2^15 blocks stay below 2^31.
const MAX_SCALED_BLOCKS: usize = 1 << 15;
/// The AVX-512 VNNI kernel (`avx512vnni`). It can only be obtained on a CPU with AVX-512F,
/// AVX-512BW and AVX-512 VNNI, which is what makes its prepared matrices safe to run.
#[derive(Clone, Copy, Debug)]
pub struct Avx512Kernel {
    _detected: (),
}

impl Avx512Kernel {
    /// The kernel, if this CPU supports AVX-512F, AVX-512BW and AVX-512 VNNI; `None` otherwise.
    pub fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(Self { _detected: () })
    }
}

impl LinearKernel for Avx512Kernel {
    fn name(&self) -> &'static str {
        "avx512vnni"
    }

    fn prepare(&self, weights: &TernaryMatrix) -> Result<Box<dyn PreparedLinear>, CoreError> {
        Ok(Box::new(Avx512Linear(PackedTernary::pack(weights, B)?)))
    }
}

/// A matrix packed for the AVX-512 kernel; only [`Avx512Kernel::prepare`] builds one.
struct Avx512Linear(PackedTernary);

impl PreparedLinear for Avx512Linear {
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
        // SAFETY: an Avx512Linear is only built by Avx512Kernel::prepare, and an Avx512Kernel
        // only exists after `Avx512Kernel::new` detected AVX-512F, BW and VNNI on this CPU.
        unsafe { matmul(&self.0, x, batch, out) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
    let mut groups = quads::groups(batch, &mut xs, &mut os, act::<W>, true);
    // The closure has this function's features, so the tiles inline into it.
    quads::for_each_tile(blocks, nb, &mut groups, |rows, g, first| match rows {
        Rows::Four(w) => tile(w, g, first),
        Rows::Two(w) => tile(w, g, first),
        Rows::One(w) => tile(w, g, first),
    });
    // One weight row at a time: one sequential stream (`pack::each_row`).
    for (xr, or) in xs.zip(os) {
        let a = act(xr);
        each_row(blocks, nb, or, |w| dot_1x1(w, &a));
    }
}

/// Loads 64 packed bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn load_w(w: &[u8; B]) -> __m512i {
    // SAFETY: the reference covers exactly 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(w.as_ptr().cast()) }
}

/// Loads activations `64 Q .. 64 Q + 64` of a block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn load_x<const Q: usize>(x: &[i8; W]) -> __m512i {
    const { assert!(Q < 4) };
    // SAFETY: Q < 4, so bytes 64Q..64Q+64 lie inside the 256-byte array; loadu is unaligned.
    unsafe { _mm512_loadu_si512(x.as_ptr().add(64 * Q).cast()) }
}

/// The four code vectors of a block, lining up with activations 0..64, .., 192..256.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn unpack(w: &[u8; B]) -> [__m512i; 4] {
    let v = load_w(w);
    let m = _mm512_set1_epi8(3);
    [
        _mm512_and_si512(v, m),
        _mm512_and_si512(_mm512_srli_epi16::<2>(v), m),
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), m),
        _mm512_and_si512(_mm512_srli_epi16::<6>(v), m),
    ]
}

/// Adds `dot(u, x)` of one block into sixteen `i32` partial sums.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn block(acc: __m512i, u: &[__m512i; 4], x: &[i8; W]) -> __m512i {
    let acc = _mm512_dpbusd_epi32(acc, u[0], load_x::<0>(x));
    let acc = _mm512_dpbusd_epi32(acc, u[1], load_x::<1>(x));
    let acc = _mm512_dpbusd_epi32(acc, u[2], load_x::<2>(x));
    _mm512_dpbusd_epi32(acc, u[3], load_x::<3>(x))
}

/// The four code quarters of a block masked in place, without shifts: quarter `q` holds
/// `4^q * u` (at most 128, still a valid unsigned byte for `vpdpbusd`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn unpack_scaled(w: &[u8; B]) -> [__m512i; 4] {
    let v = load_w(w);
    [
        _mm512_and_si512(v, _mm512_set1_epi8(0x03)),
        _mm512_and_si512(v, _mm512_set1_epi8(0x0c)),
        _mm512_and_si512(v, _mm512_set1_epi8(0x30)),
        _mm512_and_si512(v, _mm512_set1_epi8(0xc0u8 as i8)),
    ]
}

/// Four weight rows by one activation row, like [`dot_4x1`] but with shift-free unpacking: each
/// quarter keeps its own accumulator of `4^q * dot`, divided back exactly (arithmetic shifts of
/// exact multiples) once per row. Saves three of the seven unpack operations per block, which
/// bound the batch-1 loop when the weights are in cache. Only valid up to
/// [`MAX_SCALED_BLOCKS`] blocks per row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_4x1_scaled(w: [&[[u8; B]]; 4], a: &Act<'_, W>) -> [i32; 4] {
    let mut acc = [[_mm512_setzero_si512(); 4]; 4];
    let rows = w[0].iter().zip(w[1]).zip(w[2]).zip(w[3]);
    let tail = a.tail.as_ref();
    let k = a.full.len();
    let xs = a.full.iter().chain(tail);
    for ((((w0, w1), w2), w3), xb) in rows.zip(xs) {
        let x = [
            load_x::<0>(xb),
            load_x::<1>(xb),
            load_x::<2>(xb),
            load_x::<3>(xb),
        ];
        for (acc, wb) in acc.iter_mut().zip([w0, w1, w2, w3]) {
            let u = unpack_scaled(wb);
            for q in 0..4 {
                acc[q] = _mm512_dpbusd_epi32(acc[q], u[q], x[q]);
            }
        }
    }
    debug_assert!(w[0].len() == k + usize::from(tail.is_some()));
    acc.map(|[a0, a1, a2, a3]| {
        let s = _mm512_add_epi32(
            _mm512_add_epi32(a0, _mm512_srai_epi32::<2>(a1)),
            _mm512_add_epi32(_mm512_srai_epi32::<4>(a2), _mm512_srai_epi32::<6>(a3)),
        );
        _mm512_reduce_add_epi32(s).wrapping_sub(a.sum)
    })
}

/// Four weight rows by one activation row: [`dot_4x1_scaled`] where its accumulators cannot
/// wrap, else [`dot_4x1`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_4x1_any(w: [&[[u8; B]]; 4], a: &Act<'_, W>) -> [i32; 4] {
    if w[0].len() <= MAX_SCALED_BLOCKS {
        dot_4x1_scaled(w, a)
    } else {
        dot_4x1(w, a)
    }
}

/// One weight row by one activation row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_1x1(w: &[[u8; B]], a: &Act<'_, W>) -> i32 {
    let mut acc = _mm512_setzero_si512();
    for (wb, xb) in w.iter().zip(a.full) {
        acc = block(acc, &unpack(wb), xb);
    }
    if let (Some(t), Some(wb)) = (&a.tail, w.get(a.full.len())) {
        acc = block(acc, &unpack(wb), t);
    }
    _mm512_reduce_add_epi32(acc).wrapping_sub(a.sum)
}

/// Four weight rows by one activation row (batch 1): one activation load serves four rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_4x1(w: [&[[u8; B]]; 4], a: &Act<'_, W>) -> [i32; 4] {
    let mut acc = [_mm512_setzero_si512(); 4];
    let rows = w[0].iter().zip(w[1]).zip(w[2]).zip(w[3]);
    for ((((w0, w1), w2), w3), xb) in rows.zip(a.full) {
        acc[0] = block(acc[0], &unpack(w0), xb);
        acc[1] = block(acc[1], &unpack(w1), xb);
        acc[2] = block(acc[2], &unpack(w2), xb);
        acc[3] = block(acc[3], &unpack(w3), xb);
    }
    if let Some(t) = &a.tail {
        let k = a.full.len();
        for (acc, row) in acc.iter_mut().zip(w) {
            if let Some(wb) = row.get(k) {
                *acc = block(*acc, &unpack(wb), t);
            }
        }
    }
    acc.map(|v| _mm512_reduce_add_epi32(v).wrapping_sub(a.sum))
}

/// `R` weight rows by the first `A` activation rows of `a` (both 1 to 4), a batch's tile
/// ([`crate::quads`]): lane `4 r + j` of the result is `dot(u, x)` of weight row `r` and
/// activation row `j` (before `- sum(x)`); the other lanes are zero. Each unpacked block serves
/// `A` activation rows and each activation load `R` weight rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_rxa<const R: usize, const A: usize>(w: [&[[u8; B]]; R], a: &[Act<'_, W>; 4]) -> [i32; 16] {
    const { assert!(R >= 1 && R <= 4 && A >= 1 && A <= 4) };
    let mut acc = [[_mm512_setzero_si512(); 4]; 4];
    let k = a[0].full.len();
    // Every activation row has the same length, and every weight row at least as many blocks
    // (one more when the rows have a partial last block): fixed lengths drop the bounds checks.
    // Sixteen accumulators whatever R, so one transposed sum serves every tile.
    let mut xs = [&[][..]; A];
    for (xs, a) in xs.iter_mut().zip(a) {
        *xs = &a.full[..k];
    }
    let mut ws = [&[][..]; R];
    for (ws, row) in ws.iter_mut().zip(w) {
        *ws = &row[..k];
    }
    for i in 0..k {
        let mut u = [[_mm512_setzero_si512(); 4]; R];
        for (u, row) in u.iter_mut().zip(ws) {
            *u = unpack(&row[i]);
        }
        for (j, x) in xs.iter().map(|x| &x[i]).enumerate() {
            let x = [
                load_x::<0>(x),
                load_x::<1>(x),
                load_x::<2>(x),
                load_x::<3>(x),
            ];
            for (q, x) in x.into_iter().enumerate() {
                for (acc, u) in acc.iter_mut().zip(&u) {
                    acc[j] = _mm512_dpbusd_epi32(acc[j], u[q], x);
                }
            }
        }
    }
    // The zero-padded last block of rows whose length is not a whole number of blocks.
    for (acc, row) in acc.iter_mut().zip(w) {
        if let Some(wb) = row.get(k) {
            let u = unpack(wb);
            for (acc, a) in acc.iter_mut().zip(a).take(A) {
                if let Some(t) = &a.tail {
                    *acc = block(*acc, &u, t);
                }
            }
        }
    }
    sums16(acc)
}

/// One tile of `R` weight rows by a group's activation rows, into the group's outputs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile<const R: usize>(w: [&[[u8; B]]; R], g: &mut Group<'_, '_, W>, first: usize) {
    // A group of one activation row (a batch's last) by four weight rows: the four-row
    // product, which unpacks without shifts (the shifts cost more than the weights' stream
    // from L2 here).
    if let (1, Ok(w4)) = (g.n, <[&[[u8; B]]; 4]>::try_from(&w[..])) {
        return put_row(g, first, dot_4x1_any(w4, &g.acts[0]));
    }
    let d = match g.n {
        4 => dot_rxa::<R, 4>(w, &g.acts),
        3 => dot_rxa::<R, 3>(w, &g.acts),
        2 => dot_rxa::<R, 2>(w, &g.acts),
        _ => dot_rxa::<R, 1>(w, &g.acts),
    };
    put::<R, W>(g, first, d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_core::scalar::ScalarKernel;

    #[test]
    fn scaled_and_shifted_unpacking_agree() {
        let Some(_) = Avx512Kernel::new() else { return };
        for cols in [1usize, 255, 256, 257, 1000, 2560] {
            let w: Vec<i8> = (0..4 * cols).map(|i| (i * 7 % 3) as i8 - 1).collect();
            let x: Vec<i8> = (0..cols)
                .map(|i| if i % 3 == 0 { -128 } else { 127 })
                .collect();
            let m = TernaryMatrix::new(4, cols, w, 1.0).unwrap();
            let p = PackedTernary::pack(&m, B).unwrap();
            let (blocks, _) = p.packed().as_chunks::<B>();
            let nb = p.blocks_per_row;
            let rows = [0, 1, 2, 3].map(|r| &blocks[r * nb..(r + 1) * nb]);
            let a = act(&x);
            // SAFETY: `new` returned Some, so this CPU has AVX-512F, BW and VNNI.
            let (s, t) = unsafe { (dot_4x1_scaled(rows, &a), dot_4x1(rows, &a)) };
            let mut want = [0i32; 4];
            ScalarKernel
                .prepare(&m)
                .unwrap()
                .matmul_i32(&x, 1, &mut want);
            assert_eq!(s, want, "scaled, cols {cols}");
            assert_eq!(t, want, "shifted, cols {cols}");
        }
    }

    #[test]
    fn matches_scalar_on_tails_and_every_batch_path() {
        let Some(k) = Avx512Kernel::new() else { return };
        for (rows, cols, batch) in [
            (9, 600, 5),
            (7, 256, 16),
            (6, 2561, 8),
            // Three chunks of weight rows (48, 48 and 7: a pair and a single row at the end).
            (103, 10240, 9),
        ] {
            crate::assert_matches_scalar(&k, rows, cols, batch);
        }
    }
}

//! The AVX-512 VBMI + VNNI backend over the 1.6-bit `t1` layout ([`crate::pack_t1`]): five
//! weights per byte, decoded with register table lookups and multiplied with `vpdpbusd`.
//!
//! Decoding one 64-byte block (320 weights) takes a load, three index operations (two `vpsrlw`,
//! a `vpxorq`) and five lookups (four `vpermb`, one `vpermi2b`), then five `vpdpbusd` against the
//! block's activations: in the batch-1 loop 19 vector instructions per block with the five
//! activation loads (3.8 per 64 weights) against the 2-bit kernel's 16 per 256 weights (4 per
//! 64: a load, three shifts, four masks, four activation loads, four `vpdpbusd`), for 0.8x the
//! bytes. TQ1_0's
//! arithmetic decode (a multiply by 3 as two byte adds, then two compares per digit) needs about
//! 7 per 64 weights and measured 2.7-2.9x slower than these lookups, compute-bound below one
//! core's share of the memory bandwidth.
//!
//! Like the 2-bit kernel, it multiplies unsigned codes `u = t + 1` and subtracts the activation
//! sum: `dot(t, x) = dot(u, x) - sum(x)`. Batches go in the same tiles of four weight rows by
//! four activation rows ([`crate::quads`]); at batch 1 the rows go one at a time, one
//! sequential stream of weights (`pack::PREFETCH_L2_BYTES` says why).
//!
//! Measured on the 2-core Zen machine this project targets (`cargo bench -p bitnet-cpu --bench
//! gemv -- t1_`): with the weights streamed from DRAM (four whole 2B4T layers), batch 1 runs
//! 1.30x (1 thread) and 1.29x (2 threads) faster than `avx512vnni`, at the same ~31 and ~50 GB/s
//! with 20% fewer bytes, and batch 16 1.10x; with one matrix already in cache, where both
//! kernels are compute-bound, it is 0-11% slower. End to end, decode with the f16 head
//! (1,179 -> 1,077 MB per token) gained 11-14% and prompt processing is unchanged, so the
//! registry offers it first: `auto` picks it (`--kernel avx512vnni` or
//! `BITNET_KERNEL=avx512vnni` for the 2-bit layout). In 4 x 4 tiles both kernels' batch-16
//! products run within 0-9% of each other (session 33).

use std::arch::x86_64::*;

use bitnet_core::{CoreError, LinearKernel, PreparedLinear, TernaryMatrix};

use crate::pack::{Act, act, each_row};
use crate::pack_t1::{B, HI, LO, MID, PackedTrits, W};
use crate::quads::{self, Group, Rows, put, put_row, sums16};

/// The AVX-512 kernel over the 1.6-bit layout (`avx512vnni-t1`). It can only be obtained on a
/// CPU with AVX-512F, AVX-512BW, AVX-512 VBMI and AVX-512 VNNI, which is what makes its prepared
/// matrices safe to run.
#[derive(Clone, Copy, Debug)]
pub struct Avx512Tq1Kernel {
    _detected: (),
}

impl Avx512Tq1Kernel {
    /// The kernel, if this CPU supports AVX-512F, BW, VBMI and VNNI; `None` otherwise.
    pub fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(Self { _detected: () })
    }
}

impl LinearKernel for Avx512Tq1Kernel {
    fn name(&self) -> &'static str {
        "avx512vnni-t1"
    }

    fn prepare(&self, weights: &TernaryMatrix) -> Result<Box<dyn PreparedLinear>, CoreError> {
        Ok(Box::new(Tq1Linear(PackedTrits::pack(weights)?)))
    }
}

/// A matrix packed for the `t1` kernel; only [`Avx512Tq1Kernel::prepare`] builds one.
struct Tq1Linear(PackedTrits);

impl PreparedLinear for Tq1Linear {
    fn rows(&self) -> usize {
        self.0.rows
    }

    fn cols(&self) -> usize {
        self.0.cols
    }

    fn scale(&self) -> f32 {
        self.0.scale
    }

    fn weight_bytes(&self) -> usize {
        self.0.packed().len()
    }

    fn matmul_i32(&self, x: &[i8], batch: usize, out: &mut [i32]) {
        self.0.check(x, batch, out);
        // SAFETY: a Tq1Linear is only built by Avx512Tq1Kernel::prepare, and an Avx512Tq1Kernel
        // only exists after `Avx512Tq1Kernel::new` detected AVX-512F, BW, VBMI and VNNI.
        unsafe { matmul(&self.0, x, batch, out) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn matmul(p: &PackedTrits, x: &[i8], batch: usize, out: &mut [i32]) {
    let (rows, cols, nb) = (p.rows, p.cols, p.blocks_per_row);
    if rows == 0 || batch == 0 {
        return;
    }
    if cols == 0 {
        out.fill(0);
        return;
    }
    let t = Tables::load();
    let (blocks, _) = p.packed().as_chunks::<B>();
    let mut xs = x.chunks_exact(cols);
    let mut os = out.chunks_exact_mut(rows);
    let mut groups = quads::groups(batch, &mut xs, &mut os, act::<W>, true);
    // The closure has this function's features, so the tiles inline into it.
    quads::for_each_tile(blocks, nb, &mut groups, |rows, g, first| match rows {
        Rows::Four(w) => tile(&t, w, g, first),
        Rows::Two(w) => tile(&t, w, g, first),
        Rows::One(w) => tile(&t, w, g, first),
    });
    // One weight row at a time: one sequential stream (`pack::each_row`).
    for (xr, or) in xs.zip(os) {
        let a = act(xr);
        each_row(blocks, nb, or, |w| dot_1x1(&t, w, &a));
    }
}

/// The decode tables of [`crate::pack_t1`], held in registers for the whole multiply.
#[derive(Clone, Copy)]
struct Tables {
    /// Digits 0 and 1, indexed by bits 0-5 of the byte.
    lo: [__m512i; 2],
    /// Digits 2 and 3, indexed by bits 2-7 of the byte.
    hi: [__m512i; 2],
    /// Digit 4's 128 entries, indexed by bits 0-6 of `|byte as i8|`: entries 0..64, 64..128.
    mid: [__m512i; 2],
}

impl Tables {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    fn load() -> Self {
        // SAFETY: every table row is a [u8; 64], 64 readable bytes; loadu has no alignment
        // requirement.
        let load = |t: [u8; 64]| unsafe { _mm512_loadu_si512(t.as_ptr().cast()) };
        Self {
            lo: LO.map(load),
            hi: HI.map(load),
            mid: MID.map(load),
        }
    }
}

/// Decodes a block into five vectors of 64 codes `u` in {0, 1, 2}; vector `i` lines up with the
/// block's activations `64 i .. 64 i + 64`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn unpack(t: &Tables, w: &[u8; B]) -> [__m512i; 5] {
    // One load and one shift by two serve all five digits once the calls are inlined.
    [
        unpack_digit::<0>(t, w),
        unpack_digit::<1>(t, w),
        unpack_digit::<2>(t, w),
        unpack_digit::<3>(t, w),
        unpack_digit::<4>(t, w),
    ]
}

/// Digit `Q` of a block alone ([`unpack`]'s vector `Q`): the batched tile decodes one digit of
/// its four rows at a time, right before the products that use it. Decoding all five digits of
/// four rows first holds twenty vectors next to sixteen accumulators and six tables, more than
/// the 32 registers, and the spills cost more than re-loading the block (an L1 hit) and
/// re-shifting it for digits 2 and 3: on a Zen 4 (512-bit operations double-pumped), a tile
/// loop with every operand in L1 ran ~160 G MAC/s decoding whole blocks and ~213 digit by digit,
/// against a `vpdpbusd` peak of ~228 (BENCHMARKS.md, session 44).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn unpack_digit<const Q: usize>(t: &Tables, w: &[u8; B]) -> __m512i {
    const { assert!(Q < 5) };
    // SAFETY: the reference covers exactly 64 readable bytes; loadu has no alignment requirement.
    let v = unsafe { _mm512_loadu_si512(w.as_ptr().cast()) };
    // vpermb: byte j of the result is table[idx[j] & 63]. Digits 2 and 3 read bits 2-7 of every
    // byte moved to bits 0-5: the shift works on 16-bit lanes, so the low byte of each lane
    // receives the high byte's bits 0-1 in its bits 6-7, which vpermb never reads. Digit 4:
    // vpermi2b, bit 6 of the index picks the table half, bits 0-5 the byte, bit 7 is unread.
    match Q {
        0 => _mm512_permutexvar_epi8(v, t.lo[0]),
        1 => _mm512_permutexvar_epi8(v, t.lo[1]),
        2 => _mm512_permutexvar_epi8(_mm512_srli_epi16::<2>(v), t.hi[0]),
        3 => _mm512_permutexvar_epi8(_mm512_srli_epi16::<2>(v), t.hi[1]),
        _ => _mm512_permutex2var_epi8(t.mid[0], mid_view(v), t.mid[1]),
    }
}

/// Digit 4's index, `v ^ (v >> 1)`: bits 0-6 of every byte are b_i ^ b_(i+1) (as in
/// `pack_t1::decode`), since within a 16-bit lane the shift by one moves a byte's own bits 1-7
/// into its bits 0-6 (bit 7, from the other byte, vpermi2b never reads).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn mid_view(v: __m512i) -> __m512i {
    _mm512_xor_si512(v, _mm512_srli_epi16::<1>(v))
}

/// Loads activations `64 Q .. 64 Q + 64` of a block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn load_x<const Q: usize>(x: &[i8; W]) -> __m512i {
    const { assert!(Q < 5) };
    // SAFETY: Q < 5, so bytes 64Q..64Q+64 lie inside the 320-byte array; loadu is unaligned.
    unsafe { _mm512_loadu_si512(x.as_ptr().add(64 * Q).cast()) }
}

/// The five activation vectors of a block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn load_xs(x: &[i8; W]) -> [__m512i; 5] {
    [
        load_x::<0>(x),
        load_x::<1>(x),
        load_x::<2>(x),
        load_x::<3>(x),
        load_x::<4>(x),
    ]
}

/// Adds `dot(u, x)` of one block into sixteen `i32` partial sums (a chain of five `vpdpbusd`;
/// callers that run several such chains at once hide its latency).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn block(acc: __m512i, u: &[__m512i; 5], x: &[i8; W]) -> __m512i {
    let acc = _mm512_dpbusd_epi32(acc, u[0], load_x::<0>(x));
    let acc = _mm512_dpbusd_epi32(acc, u[1], load_x::<1>(x));
    let acc = _mm512_dpbusd_epi32(acc, u[2], load_x::<2>(x));
    let acc = _mm512_dpbusd_epi32(acc, u[3], load_x::<3>(x));
    _mm512_dpbusd_epi32(acc, u[4], load_x::<4>(x))
}

/// One weight row by one activation row (batch 1), one accumulator per digit so that a
/// block adds one `vpdpbusd` to each chain.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn dot_1x1(t: &Tables, w: &[[u8; B]], a: &Act<'_, W>) -> i32 {
    let mut acc = [_mm512_setzero_si512(); 5];
    for (wb, xb) in w.iter().zip(a.full.iter().chain(&a.tail)) {
        for ((acc, u), x) in acc.iter_mut().zip(unpack(t, wb)).zip(load_xs(xb)) {
            *acc = _mm512_dpbusd_epi32(*acc, u, x);
        }
    }
    let [a0, a1, a2, a3, a4] = acc;
    let s = _mm512_add_epi32(
        _mm512_add_epi32(a0, a1),
        _mm512_add_epi32(_mm512_add_epi32(a2, a3), a4),
    );
    _mm512_reduce_add_epi32(s).wrapping_sub(a.sum)
}

/// Four weight rows by one activation row (a batch's last group when it holds one row): one
/// activation load serves four rows. Each row keeps two accumulators (digits 0, 2, 4 and
/// digits 1, 3), so a block's dependency chain is three `vpdpbusd` long instead of five.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn dot_4x1(t: &Tables, w: [&[[u8; B]]; 4], a: &Act<'_, W>) -> [i32; 4] {
    let mut acc = [[_mm512_setzero_si512(); 2]; 4];
    let rows = w[0].iter().zip(w[1]).zip(w[2]).zip(w[3]);
    let xs = a.full.iter().chain(&a.tail);
    for ((((w0, w1), w2), w3), xb) in rows.zip(xs) {
        let x = load_xs(xb);
        for ([even, odd], wb) in acc.iter_mut().zip([w0, w1, w2, w3]) {
            let u = unpack(t, wb);
            *even = _mm512_dpbusd_epi32(*even, u[0], x[0]);
            *odd = _mm512_dpbusd_epi32(*odd, u[1], x[1]);
            *even = _mm512_dpbusd_epi32(*even, u[2], x[2]);
            *odd = _mm512_dpbusd_epi32(*odd, u[3], x[3]);
            *even = _mm512_dpbusd_epi32(*even, u[4], x[4]);
        }
    }
    acc.map(|[even, odd]| _mm512_reduce_add_epi32(_mm512_add_epi32(even, odd)).wrapping_sub(a.sum))
}

/// `R` weight rows by the first `A` activation rows of `a` (both 1 to 4), a batch's tile
/// ([`crate::quads`]), as the 2-bit kernel's: lane `4 r + j` of the result is `dot(u, x)` of
/// weight row `r` and activation row `j` (before `- sum(x)`); the other lanes are zero. (One
/// generic tile for both layouts, with the decoding passed in, ran this layout's 13,824 x 2,560
/// product at batch 16 on two threads 12-15% slower: BENCHMARKS.md, session 33.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn dot_rxa<const R: usize, const A: usize>(
    t: &Tables,
    w: [&[[u8; B]]; R],
    a: &[Act<'_, W>; 4],
) -> [i32; 16] {
    const { assert!(R >= 1 && R <= 4 && A >= 1 && A <= 4) };
    let mut acc = [[_mm512_setzero_si512(); 4]; 4];
    let k = a[0].full.len();
    // As in the 2-bit kernel: fixed lengths drop the bounds checks.
    let mut xs = [&[][..]; A];
    for (xs, a) in xs.iter_mut().zip(a) {
        *xs = &a.full[..k];
    }
    let mut ws = [&[][..]; R];
    for (ws, row) in ws.iter_mut().zip(w) {
        *ws = &row[..k];
    }
    for i in 0..k {
        digit::<0, R, A>(t, &ws, &xs, i, &mut acc);
        digit::<1, R, A>(t, &ws, &xs, i, &mut acc);
        digit::<2, R, A>(t, &ws, &xs, i, &mut acc);
        digit::<3, R, A>(t, &ws, &xs, i, &mut acc);
        digit::<4, R, A>(t, &ws, &xs, i, &mut acc);
    }
    for (acc, row) in acc.iter_mut().zip(w) {
        if let Some(wb) = row.get(k) {
            let u = unpack(t, wb);
            for (acc, a) in acc.iter_mut().zip(a).take(A) {
                if let Some(x) = &a.tail {
                    *acc = block(*acc, &u, x);
                }
            }
        }
    }
    sums16(acc)
}

/// Digit `Q` of block `i` of a tile: its `R` rows' codes decoded ([`unpack_digit`]), then
/// multiplied with activations `64 Q .. 64 Q + 64` of block `i` of each of the `A` rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn digit<const Q: usize, const R: usize, const A: usize>(
    t: &Tables,
    ws: &[&[[u8; B]]; R],
    xs: &[&[[i8; W]]; A],
    i: usize,
    acc: &mut [[__m512i; 4]; 4],
) {
    let mut u = [_mm512_setzero_si512(); R];
    for (u, row) in u.iter_mut().zip(ws) {
        *u = unpack_digit::<Q>(t, &row[i]);
    }
    for (j, x) in xs.iter().enumerate() {
        let x = load_x::<Q>(&x[i]);
        for (acc, u) in acc.iter_mut().zip(&u) {
            acc[j] = _mm512_dpbusd_epi32(acc[j], *u, x);
        }
    }
}

/// One tile of `R` weight rows by a group's activation rows, into the group's outputs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn tile<const R: usize>(t: &Tables, w: [&[[u8; B]]; R], g: &mut Group<'_, '_, W>, first: usize) {
    // A group of one activation row (a batch's last) by four weight rows: the four-row product.
    if let (1, Ok(w4)) = (g.n, <[&[[u8; B]]; 4]>::try_from(&w[..])) {
        return put_row(g, first, dot_4x1(t, w4, &g.acts[0]));
    }
    let d = match g.n {
        4 => dot_rxa::<R, 4>(t, w, &g.acts),
        3 => dot_rxa::<R, 3>(t, w, &g.acts),
        2 => dot_rxa::<R, 2>(t, w, &g.acts),
        _ => dot_rxa::<R, 1>(t, w, &g.acts),
    };
    put::<R, W>(g, first, d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack_t1::decode;

    #[test]
    fn simd_decode_matches_the_scalar_tables_on_every_byte() {
        let Some(_) = Avx512Tq1Kernel::new() else {
            return;
        };
        let bytes: Vec<u8> = (0..=255).collect();
        let (blocks, _) = bytes.as_chunks::<B>();
        for (k, block) in blocks.iter().enumerate() {
            // SAFETY: `new` returned Some, so this CPU has AVX-512F, BW, VBMI and VNNI.
            let lanes = unsafe {
                let t = Tables::load();
                unpack(&t, block).map(|v| {
                    let mut out = [0u8; 64];
                    _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
                    out
                })
            };
            for (j, &byte) in block.iter().enumerate() {
                let got: [u8; 5] = std::array::from_fn(|i| lanes[i][j]);
                assert_eq!(got, decode(byte), "byte {} (block {k})", byte);
            }
        }
    }

    #[test]
    fn matches_scalar_on_tails_and_every_batch_path() {
        let Some(k) = Avx512Tq1Kernel::new() else {
            return;
        };
        for (rows, cols, batch) in [
            (9, 600, 5),
            (7, 320, 9),
            (5, 1, 4),
            (13, 959, 3),
            (4, 641, 1),
            (11, 700, 21),
            (6, 333, 16),
            (3, 64, 8),
            // Rows wider than 2,560 columns (the down projection's 6,912), with and without
            // a tail block.
            (5, 2561, 8),
            (7, 5120, 12),
            (3, 6912, 16),
            (5, 6000, 11),
            // Three chunks of weight rows (48, 48 and 7: a pair and a single row at the end).
            (103, 12800, 9),
        ] {
            let p = k.prepare(&TernaryMatrix::new(rows, cols, vec![0; rows * cols], 1.0).unwrap());
            assert_eq!(p.unwrap().weight_bytes(), rows * cols.div_ceil(W) * B);
            crate::assert_matches_scalar(&k, rows, cols, batch);
        }
    }
}

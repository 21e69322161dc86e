//! A measurement, not a kernel: does a lookup-table product beat `maddubs` for batches of 16
//! activation rows on AVX2? (BENCHMARKS.md, session 22: no, level on one thread and 20% slower
//! on two; kept so that the measurement can be rerun, e.g. on a new CPU.)
//!
//! The idea: each byte of the 2-bit layout (`pack.rs`) holds the codes of four weights of one
//! row, so it can index a 256-entry table whose entry is the sum of the four matching
//! activation columns times those weights, for 16 tokens at once (16 `i16` = one 256-bit
//! vector). One load and one add then do 64 multiply-adds, against 16 per `maddubs` and its add.
//! Tables are built per pass of 8 bytes (32 columns), the rows' `i16` sums stay in memory
//! across passes and widen to `i32` every 7 passes (56 lookups of at most 512 each).
//!
//! `cargo run --release -p bitnet-cpu --example lut_probe -- ROWS COLS ITERS [THREADS]`: checks
//! the table product against the AVX2 kernel on random weights, then times both (best of 7
//! alternated rounds; with THREADS = 2, two threads each running a copy, total MAC/ns).

use std::time::Instant;

use bitnet_core::{LinearKernel, TernaryMatrix};

/// Tokens per table entry (one 256-bit vector of `i16`).
const TOKENS: usize = 16;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (&rows, &cols, &iters) = match args.as_slice() {
        [r, c, i, ..] => (r, c, i),
        _ => {
            eprintln!("usage: lut_probe ROWS COLS ITERS [THREADS]");
            std::process::exit(2);
        }
    };
    let threads = args.get(3).copied().unwrap_or(1).clamp(1, 2);
    #[cfg(target_arch = "x86_64")]
    probe::run(rows, cols, iters.max(1), threads);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, cols, iters, threads);
}

/// Random codes in -1..=1 and activations, from a fixed xorshift seed.
fn random_inputs(rows: usize, cols: usize) -> (Vec<i8>, Vec<i8>) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let w = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
    let x = (0..TOKENS * cols).map(|_| next() as u8 as i8).collect();
    (w, x)
}

#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::x86_64::*;

    use super::*;

    /// Bytes (groups of four columns) per pass: their tables take ~27 KB of L1.
    const GROUPS: usize = 8;
    /// Bytes between two groups' tables: 256 entries of 32 bytes plus a skew of 6 cache lines,
    /// which spreads the 54 lines each table uses over the L1 sets (at most 8 per 8-way set).
    const STRIDE: usize = 256 * 32 + 6 * 64;
    /// Passes (8 lookups each) summed in `i16` before widening: 7 x 8 x 512 <= 32,767.
    const FLUSH: usize = 7;

    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Line([u8; 64]);

    /// The 2-bit layout of `pack.rs` for 32-byte blocks: byte j of a block holds the codes
    /// w + 1 of columns j, j + 32, j + 64 and j + 96 in bits 0-1, 2-3, 4-5 and 6-7.
    fn pack(w: &[i8], rows: usize, cols: usize) -> (Vec<u8>, usize) {
        let nb = cols.div_ceil(128);
        let mut p = vec![0u8; rows * nb * 32];
        for (r, row) in w.chunks_exact(cols).enumerate() {
            for (i, byte) in p[r * nb * 32..(r + 1) * nb * 32].iter_mut().enumerate() {
                let (b, j) = (i / 32, i % 32);
                *byte = (0..4).fold(0u8, |acc, k| {
                    let c = b * 128 + j + 32 * k;
                    let u = row.get(c).map_or(1, |&t| (t + 1) as u8);
                    acc | u << (2 * k)
                });
            }
        }
        (p, nb)
    }

    /// The tables of pass `s` of block `kb`: entry `byte` of group `jj` is the sum over its
    /// four columns of (code - 1) x activation, for every token. `xt`: per column, the 16
    /// tokens' activations as `i16`.
    #[target_feature(enable = "avx2")]
    fn build_tables(bytes: &mut [u8], xt: &[__m256i], kb: usize, s: usize) {
        let z = _mm256_setzero_si256();
        let signed = |x: __m256i| [_mm256_sub_epi16(z, x), z, x];
        for jj in 0..GROUPS {
            let c = kb * 128 + s * GROUPS + jj;
            let (d0, d1, d2, d3) = (
                signed(xt[c]),
                signed(xt[c + 32]),
                signed(xt[c + 64]),
                signed(xt[c + 96]),
            );
            let base = jj * STRIDE;
            for (f3, &e3) in d3.iter().enumerate() {
                for (f2, &e2) in d2.iter().enumerate() {
                    let hi = _mm256_add_epi16(e3, e2);
                    for (f1, &e1) in d1.iter().enumerate() {
                        let mid = _mm256_add_epi16(hi, e1);
                        for (f0, &e0) in d0.iter().enumerate() {
                            let v = _mm256_add_epi16(mid, e0);
                            let at = base + 32 * (f0 | f1 << 2 | f2 << 4 | f3 << 6);
                            let dst = &mut bytes[at..at + 32];
                            // SAFETY: dst is 32 writable bytes; storeu needs no alignment.
                            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
                        }
                    }
                }
            }
        }
    }

    /// `out[t * rows + r] = sum_c x[t][c] * w[r][c]` for 16 tokens, by table lookups.
    #[target_feature(enable = "avx2")]
    fn lut_matmul(p: &[u8], rows: usize, cols: usize, nb: usize, x: &[i8], out: &mut [i32]) {
        let mut xt = vec![_mm256_setzero_si256(); nb * 128];
        for (c, v) in xt.iter_mut().enumerate().take(cols) {
            let t: [i16; TOKENS] = std::array::from_fn(|t| x[t * cols + c] as i16);
            // SAFETY: t is 32 readable bytes; loadu needs no alignment.
            *v = unsafe { _mm256_loadu_si256(t.as_ptr().cast()) };
        }
        let mut lines = vec![Line([0; 64]); GROUPS * STRIDE / 64];
        // SAFETY: a Line is 64 plain bytes without padding, so the lines are one byte slice of
        // 64 times their count (and 64-byte aligned).
        let tab: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 64) };
        let mut acc16 = vec![_mm256_setzero_si256(); rows];
        let mut acc32 = vec![[_mm256_setzero_si256(); 2]; rows];
        let row_bytes = nb * 32;
        let passes = nb * 32 / GROUPS;
        for pass in 0..passes {
            let (kb, s) = (pass / (32 / GROUPS), pass % (32 / GROUPS));
            build_tables(tab, &xt, kb, s);
            let t = tab.as_ptr();
            for (r, acc) in acc16.iter_mut().enumerate() {
                let at = r * row_bytes + kb * 32 + s * GROUPS;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&p[at..at + 8]);
                let w = u64::from_le_bytes(bytes);
                let e = |jj: usize| {
                    let i = ((w >> (8 * jj)) & 0xff) as usize;
                    // SAFETY: jj < GROUPS and i < 256, so the 32 bytes at jj * STRIDE + 32 i
                    // lie inside the GROUPS * STRIDE bytes of `tab`, 32-byte aligned.
                    unsafe { _mm256_load_si256(t.add(jj * STRIDE + i * 32).cast()) }
                };
                let s01 = _mm256_add_epi16(e(0), e(1));
                let s23 = _mm256_add_epi16(e(2), e(3));
                let s45 = _mm256_add_epi16(e(4), e(5));
                let s67 = _mm256_add_epi16(e(6), e(7));
                let sum = _mm256_add_epi16(_mm256_add_epi16(s01, s23), _mm256_add_epi16(s45, s67));
                *acc = _mm256_add_epi16(*acc, sum);
            }
            if (pass + 1) % FLUSH == 0 || pass + 1 == passes {
                for (a16, a32) in acc16.iter_mut().zip(&mut acc32) {
                    let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(*a16));
                    let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(*a16));
                    a32[0] = _mm256_add_epi32(a32[0], lo);
                    a32[1] = _mm256_add_epi32(a32[1], hi);
                    *a16 = _mm256_setzero_si256();
                }
            }
        }
        for (r, a) in acc32.iter().enumerate() {
            let mut v = [0i32; TOKENS];
            // SAFETY: v is 64 writable bytes; storeu needs no alignment.
            unsafe {
                _mm256_storeu_si256(v.as_mut_ptr().cast(), a[0]);
                _mm256_storeu_si256(v.as_mut_ptr().add(8).cast(), a[1]);
            }
            for (t, &d) in v.iter().enumerate() {
                out[t * rows + r] = d;
            }
        }
    }

    pub(super) fn run(rows: usize, cols: usize, iters: usize, threads: usize) {
        let Some(kernel) = bitnet_cpu::Avx2Kernel::new() else {
            eprintln!("lut_probe: this CPU has no AVX2");
            return;
        };
        let (w, x) = random_inputs(rows, cols);
        let (packed, nb) = pack(&w, rows, cols);
        let m = match TernaryMatrix::new(rows, cols, w, 1.0) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("lut_probe: {e}");
                return;
            }
        };
        let Ok(avx2) = kernel.prepare(&m) else { return };
        let lut = |out: &mut [i32]| {
            // SAFETY: Avx2Kernel::new found AVX2 on this CPU.
            unsafe { lut_matmul(&packed, rows, cols, nb, &x, out) }
        };
        let (mut want, mut got) = (vec![0i32; TOKENS * rows], vec![0i32; TOKENS * rows]);
        avx2.matmul_i32(&x, TOKENS, &mut want);
        lut(&mut got);
        assert_eq!(want, got, "the table product differs from the AVX2 kernel");
        let macs = (rows * cols * TOKENS * threads) as f64;
        // Alternate the two kernels, round by round, and keep each one's best.
        let (mut a, mut b) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..7 {
            a = a.min(timed(
                threads,
                iters,
                &|o| avx2.matmul_i32(&x, TOKENS, o),
                rows,
            ));
            b = b.min(timed(threads, iters, &lut, rows));
        }
        println!(
            "{rows} x {cols}, {TOKENS} tokens, {threads} thread(s): avx2 {:.1} MAC/ns, \
             lookup tables {:.1} MAC/ns",
            macs / a / 1e9,
            macs / b / 1e9
        );
    }

    /// Seconds per call of `f` on `threads` threads at once (each its own output).
    fn timed(threads: usize, iters: usize, f: &(dyn Fn(&mut [i32]) + Sync), rows: usize) -> f64 {
        let t = Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| {
                    let mut out = vec![0i32; TOKENS * rows];
                    for _ in 0..iters {
                        f(&mut out);
                    }
                });
            }
        });
        t.elapsed().as_secs_f64() / iters as f64
    }
}

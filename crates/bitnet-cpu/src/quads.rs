//! The batched loop shared by the AVX-512 kernels (2-bit and 1.6-bit): activation rows in groups
//! of four, weight rows in groups of four, so each tile keeps sixteen `i32` accumulators. (The
//! AVX2 kernel shares only the grouping: its tiles of one weight row, in this chunked order,
//! measured 3-7% slower at batch 16 than sweeping every weight row per group.)
//!
//! Why this shape (BENCHMARKS.md, session 33; Zen 5, one thread, operands in L1): a tile of
//! 2 weight rows x 4 activation rows issues one activation load per two `vpdpbusd` and ran at
//! ~430 G MAC/s; 4 x 4 issues one per four and ran at ~500, against a `vpdpbusd` peak of ~550
//! (1 x 8: 270, 2 x 8: 485, 6 x 2: 495, 6 x 4 spills: 385). Sixteen horizontal sums per tile
//! cost as much as a 2,560-wide row's loop, so they go in one transposed pass ([`sums16`]).
//! Weight rows go by in chunks of [`CHUNK_BYTES`] that every group of four activation rows
//! passes over while the chunk is in L2, so at batch 16 the weights stream from memory once
//! per multiply rather than four times.

use std::arch::x86_64::*;

use crate::pack::{Act, prefetch_groups};

/// Bytes of packed weight rows that every group of four activation rows goes over in turn
/// (the chunk stays in L2 between groups). 32 KB measured 1-5% slower on 2B4T shapes, 512 KB
/// and no chunking (all rows per group) 0-4% slower.
const CHUNK_BYTES: usize = 128 << 10;
/// Bytes per packed block, in both AVX-512 layouts (one 512-bit load).
const B: usize = 64;

/// One, two or four weight rows of a tile (the last rows of a matrix come in ones and twos).
pub(crate) enum Rows<'w> {
    /// Four consecutive weight rows.
    Four([&'w [[u8; B]]; 4]),
    /// Two.
    Two([&'w [[u8; B]]; 2]),
    /// One.
    One([&'w [[u8; B]]; 1]),
}

/// Four activation rows of a batch and their four output rows.
pub(crate) type Group<'x, 'o, const W: usize> = ([Act<'x, W>; 4], [&'o mut [i32]; 4]);

/// Cuts the first `batch / 4 * 4` rows of `xs` and `os` into groups of four (the rest stay in
/// the iterators for the caller's one-row loop).
#[inline(always)]
pub(crate) fn groups<'x, 'o, const W: usize>(
    batch: usize,
    xs: &mut std::slice::ChunksExact<'x, i8>,
    os: &mut std::slice::ChunksExactMut<'o, i32>,
    act: impl Fn(&'x [i8]) -> Act<'x, W>,
) -> Vec<Group<'x, 'o, W>> {
    let mut groups = Vec::with_capacity(batch / 4);
    for _ in 0..batch / 4 {
        let (Some(x0), Some(x1), Some(x2), Some(x3)) = (xs.next(), xs.next(), xs.next(), xs.next())
        else {
            break;
        };
        let (Some(o0), Some(o1), Some(o2), Some(o3)) = (os.next(), os.next(), os.next(), os.next())
        else {
            break;
        };
        groups.push(([act(x0), act(x1), act(x2), act(x3)], [o0, o1, o2, o3]));
    }
    groups
}

/// Runs `tile(rows, acts, outs, first)` for every group and every tile of weight rows
/// (`first`: the index of the tile's first weight row), chunk by chunk. `blocks` holds the rows
/// back to back, `nb` blocks each.
#[inline(always)]
pub(crate) fn for_each_tile<'x, const W: usize>(
    blocks: &[[u8; B]],
    nb: usize,
    groups: &mut [Group<'x, '_, W>],
    mut tile: impl FnMut(Rows<'_>, &[Act<'x, W>; 4], &mut [&mut [i32]; 4], usize),
) {
    if nb == 0 {
        return;
    }
    let chunk_rows = (CHUNK_BYTES / (nb * B)).max(4) / 4 * 4;
    // As far ahead as the batch-1 loops (8, 16 and 32 KB measured level here).
    let quads_ahead = prefetch_groups(nb * B);
    for (c, chunk) in blocks.chunks(chunk_rows * nb).enumerate() {
        let first = c * chunk_rows;
        for (acts, outs) in groups.iter_mut() {
            let mut w4 = chunk.chunks_exact(4 * nb);
            for (g, w) in w4.by_ref().enumerate() {
                // The first group's pass streams the chunk from memory.
                let ahead = (first + 4 * (g + quads_ahead)) * nb;
                for line in blocks.get(ahead..ahead + 4 * nb).unwrap_or(&[]) {
                    // SAFETY: prefetching is a hint (SSE, part of x86-64); the address is in
                    // `blocks`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
                let (w01, w23) = w.split_at(2 * nb);
                let (r0, r1) = w01.split_at(nb);
                let (r2, r3) = w23.split_at(nb);
                tile(Rows::Four([r0, r1, r2, r3]), acts, outs, first + 4 * g);
            }
            // The last one to three weight rows (of the last chunk).
            let done = first + chunk.len() / nb / 4 * 4;
            let mut rest = w4.remainder().chunks_exact(nb);
            match (rest.next(), rest.next(), rest.next()) {
                (Some(r0), Some(r1), Some(r2)) => {
                    tile(Rows::Two([r0, r1]), acts, outs, done);
                    tile(Rows::One([r2]), acts, outs, done + 2);
                }
                (Some(r0), Some(r1), None) => tile(Rows::Two([r0, r1]), acts, outs, done),
                (Some(r0), None, _) => tile(Rows::One([r0]), acts, outs, done),
                _ => {}
            }
        }
    }
}

/// Writes a tile's results, `d[r][j]` for weight row `first + r` and activation row `j`, minus
/// each activation row's sum (`dot(t, x) = dot(t + 1, x) - sum(x)`).
#[inline(always)]
pub(crate) fn put<const R: usize, const W: usize>(
    outs: &mut [&mut [i32]; 4],
    first: usize,
    acts: &[Act<'_, W>; 4],
    d: [i32; 16],
) {
    for (r, d) in d.chunks_exact(4).take(R).enumerate() {
        for ((o, &y), a) in outs.iter_mut().zip(d).zip(acts) {
            if let Some(slot) = o.get_mut(first + r) {
                *slot = y.wrapping_sub(a.sum);
            }
        }
    }
}

/// `out[4 r + j]` is the sum of the sixteen lanes of `v[r][j]`: sixteen horizontal sums in one
/// transposed pass (15 adds and 30 shuffles, against ~8 dependent operations for each sum
/// alone). Integer adds, so the order of the additions does not matter.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn sums16(v: [[__m512i; 4]; 4]) -> [i32; 16] {
    // Two vectors: within each 128-bit quarter, lanes 0 and 2 hold partial sums of the first,
    // lanes 1 and 3 of the second.
    let pair = |a, b| _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    // Four vectors: lane `i` of each quarter holds that quarter's sum of the `i`-th vector.
    let quad = |[a, b, c, d]: [__m512i; 4]| {
        let (ab, cd) = (pair(a, b), pair(c, d));
        _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd))
    };
    // Quarters 0 + 1 and 2 + 3 of two such vectors side by side; twice over, whole sums.
    let halves = |a, b| {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0x88>(a, b),
            _mm512_shuffle_i32x4::<0xdd>(a, b),
        )
    };
    let [r0, r1, r2, r3] = v;
    let sums = halves(halves(quad(r0), quad(r1)), halves(quad(r2), quad(r3)));
    let mut out = [0i32; 16];
    // SAFETY: `out` holds 16 i32 = 64 writable bytes; storeu has no alignment requirement.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), sums) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_meets_every_weight_row_once() {
        // 40 blocks per row: chunks of 48 rows, so 103 rows are two chunks and 7 rows, the
        // last three of which come as a pair and a single row.
        for (rows, nb, batch) in [(103usize, 40usize, 9usize), (5, 3, 8), (4, 1, 4), (0, 2, 4)] {
            let blocks = vec![[0u8; B]; rows * nb];
            let x = vec![1i8; batch * 256];
            let mut out = vec![0i32; batch * rows];
            let mut xs = x.chunks_exact(256);
            let mut os = out.chunks_exact_mut(rows.max(1));
            let mut groups = groups::<256>(batch, &mut xs, &mut os, crate::pack::act);
            for_each_tile(&blocks, nb, &mut groups, |tile, _, outs, first| {
                let n = match tile {
                    Rows::Four(w) => w.len(),
                    Rows::Two(w) => w.len(),
                    Rows::One(w) => w.len(),
                };
                for o in outs.iter_mut() {
                    for y in &mut o[first..first + n] {
                        *y += 1;
                    }
                }
            });
            drop(groups);
            let grouped = batch / 4 * 4 * rows;
            assert!(
                out[..grouped].iter().all(|&y| y == 1),
                "{rows} x {nb}, batch {batch}"
            );
            assert!(
                out[grouped..].iter().all(|&y| y == 0),
                "{rows} x {nb}, batch {batch}"
            );
        }
    }

    #[test]
    fn sums16_sums_every_vector_in_order() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let lanes = |k: usize| -> [i32; 16] {
            std::array::from_fn(|l| (k as i32 + 1) * 1000 + l as i32 * (k as i32 - 7))
        };
        // SAFETY: AVX-512F was detected above; loadu reads 16 i32 from a [i32; 16].
        let got = unsafe {
            sums16(std::array::from_fn(|r| {
                std::array::from_fn(|j| {
                    let l = lanes(4 * r + j);
                    _mm512_loadu_si512(l.as_ptr().cast())
                })
            }))
        };
        let want: [i32; 16] = std::array::from_fn(|k| lanes(k).iter().sum());
        assert_eq!(got, want);
    }
}

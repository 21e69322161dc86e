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

/// Up to four activation rows of a batch and their output rows. Rows `n..4` are empty
/// (nothing to read, nowhere to write): a tile reads only the first `n`.
pub(crate) struct Group<'x, 'o, const W: usize> {
    /// The activation rows.
    pub(crate) acts: [Act<'x, W>; 4],
    /// Their output rows.
    pub(crate) outs: [&'o mut [i32]; 4],
    /// How many of the four are real (1 to 4).
    pub(crate) n: usize,
}

/// Cuts the rows of `xs` and `os` into groups of four; with `partial`, the last one to three
/// rows of a batch of two or more form one more group (a batch of one is left in the iterators
/// for the caller's one-row loop, as are the remainder rows without `partial`).
///
/// A partial group runs in the same chunked order as the others, so its rows cost their
/// arithmetic only: as single rows each streamed the weights from memory again (2B4T, two
/// threads: batch 17 took 8.7 ms more than batch 16, batch 20 20 ms more; session 33).
#[inline(always)]
pub(crate) fn groups<'x, 'o, const W: usize>(
    batch: usize,
    xs: &mut std::slice::ChunksExact<'x, i8>,
    os: &mut std::slice::ChunksExactMut<'o, i32>,
    act: impl Fn(&'x [i8]) -> Act<'x, W>,
    partial: bool,
) -> Vec<Group<'x, 'o, W>> {
    let whole = if partial && batch >= 2 {
        batch.div_ceil(4)
    } else {
        batch / 4
    };
    let mut groups = Vec::with_capacity(whole);
    for _ in 0..whole {
        let empty = || Act {
            full: &[],
            tail: None,
            sum: 0,
        };
        let mut g = Group {
            acts: [empty(), empty(), empty(), empty()],
            outs: Default::default(),
            n: 0,
        };
        for (a, o) in g.acts.iter_mut().zip(&mut g.outs) {
            let (Some(x), Some(y)) = (xs.next(), os.next()) else {
                break;
            };
            (*a, *o) = (act(x), y);
            g.n += 1;
        }
        if g.n > 0 {
            groups.push(g);
        }
    }
    groups
}

/// Runs `tile(rows, group, first)` for every group and every tile of weight rows (`first`: the
/// index of the tile's first weight row), chunk by chunk. `blocks` holds the rows back to back,
/// `nb` blocks each.
#[inline(always)]
pub(crate) fn for_each_tile<const W: usize>(
    blocks: &[[u8; B]],
    nb: usize,
    groups: &mut [Group<'_, '_, W>],
    mut tile: impl FnMut(Rows<'_>, &mut Group<'_, '_, W>, usize),
) {
    if nb == 0 {
        return;
    }
    let chunk_rows = (CHUNK_BYTES / (nb * B)).max(4) / 4 * 4;
    // `pack::PREFETCH_BYTES` ahead into L1 (8, 16 and 32 KB measured level here).
    let quads_ahead = prefetch_groups(nb * B);
    let chunk_blocks = chunk_rows * nb;
    for (c, chunk) in blocks.chunks(chunk_blocks).enumerate() {
        let first = c * chunk_rows;
        // The next chunk into L2 a few lines per tile, spread over all of this chunk's passes,
        // so the first group's pass over it finds it there instead of waiting on memory with
        // its arithmetic idle (the chunk's other passes are compute-bound).
        let next = blocks
            .get((c + 1) * chunk_blocks..)
            .map_or(&[][..], |rest| &rest[..rest.len().min(chunk_blocks)]);
        let tiles = (chunk.len() / nb).div_ceil(4) * groups.len();
        let per_tile = next.len().div_ceil(tiles.max(1));
        let mut next_lines = next.chunks(per_tile.max(1));
        for g4 in groups.iter_mut() {
            let mut w4 = chunk.chunks_exact(4 * nb);
            for (g, w) in w4.by_ref().enumerate() {
                // Lines ahead of this pass into L1 (from memory for the first chunk).
                let ahead = (first + 4 * (g + quads_ahead)) * nb;
                for line in blocks.get(ahead..ahead + 4 * nb).unwrap_or(&[]) {
                    // SAFETY: prefetching is a hint (SSE, part of x86-64); the address is in
                    // `blocks`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
                for line in next_lines.next().unwrap_or(&[]) {
                    // SAFETY: as above.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
                }
                let (w01, w23) = w.split_at(2 * nb);
                let (r0, r1) = w01.split_at(nb);
                let (r2, r3) = w23.split_at(nb);
                tile(Rows::Four([r0, r1, r2, r3]), g4, first + 4 * g);
            }
            // The last one to three weight rows (of the last chunk).
            let done = first + chunk.len() / nb / 4 * 4;
            let mut rest = w4.remainder().chunks_exact(nb);
            match (rest.next(), rest.next(), rest.next()) {
                (Some(r0), Some(r1), Some(r2)) => {
                    tile(Rows::Two([r0, r1]), g4, done);
                    tile(Rows::One([r2]), g4, done + 2);
                }
                (Some(r0), Some(r1), None) => tile(Rows::Two([r0, r1]), g4, done),
                (Some(r0), None, _) => tile(Rows::One([r0]), g4, done),
                _ => {}
            }
        }
    }
}

/// Writes a tile's results, `d[4 r + j]` for weight row `first + r` and activation row `j`,
/// minus each activation row's sum (`dot(t, x) = dot(t + 1, x) - sum(x)`), into the group's
/// real output rows.
#[inline(always)]
pub(crate) fn put<const R: usize, const W: usize>(
    g: &mut Group<'_, '_, W>,
    first: usize,
    d: [i32; 16],
) {
    for (r, d) in d.chunks_exact(4).take(R).enumerate() {
        for ((o, &y), a) in g.outs.iter_mut().zip(d).zip(&g.acts).take(g.n) {
            if let Some(slot) = o.get_mut(first + r) {
                *slot = y.wrapping_sub(a.sum);
            }
        }
    }
}

/// Writes a one-row group's results for weight rows `first..first + 4`, already less the row's
/// sum (the batch-1 tile's).
#[inline(always)]
pub(crate) fn put_row<const W: usize>(g: &mut Group<'_, '_, W>, first: usize, d: [i32; 4]) {
    if let Some(slots) = g.outs[0].get_mut(first..first + 4) {
        slots.copy_from_slice(&d);
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
        let cases = [
            (103usize, 40usize, 9usize),
            (5, 3, 8),
            (4, 1, 4),
            (0, 2, 4),
            (9, 2, 3),
        ];
        let more = [(6, 1, 1), (6, 1, 2), (7, 2, 7), (7, 2, 13)];
        for ((rows, nb, batch), partial) in
            cases.into_iter().chain(more).zip([false, true].repeat(5))
        {
            for partial in [partial, !partial] {
                let blocks = vec![[0u8; B]; rows * nb];
                let x = vec![1i8; batch * 256];
                let mut out = vec![0i32; batch * rows];
                let mut xs = x.chunks_exact(256);
                let mut os = out.chunks_exact_mut(rows.max(1));
                let mut groups = groups::<256>(batch, &mut xs, &mut os, crate::pack::act, partial);
                assert!(groups.iter().all(|g| (1..=4).contains(&g.n)));
                for_each_tile(&blocks, nb, &mut groups, |tile, g, first| {
                    let n = match tile {
                        Rows::Four(w) => w.len(),
                        Rows::Two(w) => w.len(),
                        Rows::One(w) => w.len(),
                    };
                    for o in g.outs.iter_mut().take(g.n) {
                        for y in &mut o[first..first + n] {
                            *y += 1;
                        }
                    }
                    // The empty rows of a partial group have no outputs.
                    assert!(g.outs[g.n..].iter().all(|o| o.is_empty()));
                });
                drop(groups);
                let covered = if partial && batch >= 2 {
                    batch
                } else {
                    batch / 4 * 4
                };
                let what = format!("{rows} x {nb}, batch {batch}, partial {partial}");
                assert!(out[..covered * rows].iter().all(|&y| y == 1), "{what}");
                assert!(out[covered * rows..].iter().all(|&y| y == 0), "{what}");
            }
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

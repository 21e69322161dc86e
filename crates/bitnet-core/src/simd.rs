//! Vectorized float dot products for the output head (f16 and f32 rows against an f32 vector),
//! selected at run time. The head is the largest single read of a decode step (56% of 2B4T's
//! bytes), so it must run at memory speed; the scalar loops in `ops` are the fallback.

use half::f16;

/// `a . x` for an f16 row.
pub fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU just above.
            return unsafe { x86::dot_f16_avx512(a, x) };
        }
        if avx2_f16() {
            // SAFETY: the features were detected on this CPU just above.
            return unsafe { x86::dot_f16_avx2(a, x) };
        }
    }
    crate::ops::dot_with(a, x, |h| h.to_f32())
}

/// Whether this CPU runs the AVX2 f16 kernels (AVX2, FMA and F16C).
#[cfg(target_arch = "x86_64")]
fn avx2_f16() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// `out[r * m + j] = rows_r . xs_j` for f16 rows (each `cols` long, `rows.len() / cols` of
/// them) against `m` vectors. Every product is bit-identical to [`dot_f16`] of the same pair;
/// the work is register-blocked (AVX-512: up to 3 rows x 4 vectors, AVX2: 2 x 3) so each
/// loaded activation serves several rows and each converted weight several vectors.
///
/// # Panics
/// If `out` (`rows x m`) asks for more rows than `rows` holds, or `xs` holds fewer than `m`
/// vectors (a programming error: the SIMD kernels index them unchecked).
pub fn dots_f16(rows: &[f16], cols: usize, xs: &[f32], m: usize, out: &mut [f32]) {
    assert!(
        out.len() / m.max(1) * cols <= rows.len() && m * cols <= xs.len(),
        "dots_f16: operands shorter than the output asks"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if cols > 0 && m > 0 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU just above.
            return unsafe { x86::dots_f16_avx512(rows, cols, xs, m, out) };
        }
        if cols > 0 && m > 0 && avx2_f16() {
            // SAFETY: the features were detected on this CPU just above.
            return unsafe { x86::dots_f16_avx2(rows, cols, xs, m, out) };
        }
    }
    for (r, o) in out.chunks_exact_mut(m).enumerate() {
        let row = &rows[r * cols..(r + 1) * cols];
        for (j, y) in o.iter_mut().enumerate() {
            *y = dot_f16(row, &xs[j * cols..(j + 1) * cols]);
        }
    }
}

/// `a . x` for an f32 row.
pub fn dot_f32(a: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU just above.
            return unsafe { x86::dot_f32_avx512(a, x) };
        }
    }
    crate::ops::dot(a, x)
}

/// `out[i] = ints[i] as f32 / s_x * s_w` (see [`crate::kernel::scale_into`]), 16 or 8 lanes
/// at a time where the CPU has them: each lane's conversion, division and multiplication are
/// the scalar ones, correctly rounded, so the results are the same bits. (Built for the
/// baseline x86-64, the loop ran four divisions at a time: 2.5% of a batch-16 step on Zen 5.)
pub(crate) fn scale_i32(ints: &[i32], s_x: f32, s_w: f32, out: &mut [f32]) {
    let n = ints.len().min(out.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU just above.
            done = unsafe { x86::scale_i32_avx512(&ints[..n], s_x, s_w, &mut out[..n]) };
        } else if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: as above.
            done = unsafe { x86::scale_i32_avx(&ints[..n], s_x, s_w, &mut out[..n]) };
        }
    }
    for (y, &d) in out[done..n].iter_mut().zip(&ints[done..n]) {
        *y = d as f32 / s_x * s_w;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_f16_avx512(a: &[f16], x: &[f32]) -> f32 {
        let n = a.len().min(x.len());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                // SAFETY: o + 16 <= n for both slices; f16 is a transparent u16.
                unsafe {
                    let h = _mm256_loadu_si256(a.as_ptr().add(o).cast());
                    let v = _mm512_loadu_ps(x.as_ptr().add(o));
                    *acc = _mm512_fmadd_ps(_mm512_cvtph_ps(h), v, *acc);
                }
            }
            i += 32;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        for k in i..n {
            sum += a[k].to_f32() * x[k];
        }
        sum
    }

    /// Rows per block of [`dots_blocked`]: every tile of vectors passes over a block's rows
    /// (24 rows x 2,560 f16 = 120 KB, in L2 after the first tile's pass) while the tiles
    /// prefetch the next block's. Measured at batch 16 (BENCHMARKS.md, session 31): 24 and 48
    /// rows level, 12 rows 6% and 6 rows 15% slower.
    const BLOCK_ROWS: usize = 24;
    /// Columns per pass of a tile over its rows: a tile's vectors over this many columns
    /// (4 x 1,280 f32 = 20 KB) stay in L1 while the block's rows pass under them. A 2,560-wide
    /// row in one pass was 23% slower at batch 16, in three or four 8-14%.
    const PASS_COLS: usize = 1280;
    /// The most vectors in a tile (of either instruction set).
    const MAX_TILE_VECTORS: usize = 4;

    /// Register-blocked [`dot_f16_avx512`]: the same per-pair accumulation order (two
    /// accumulators over alternating 16-lane chunks, reduced, then a scalar tail), in tiles of
    /// 3 rows x 4 vectors, 4 x 3, 6 x 2 or 4 x 1 (24 accumulators at most, their converted rows
    /// and a vector: up to 31 of the 32 registers), [`dots_blocked`].
    #[target_feature(enable = "avx512f")]
    pub(super) fn dots_f16_avx512(
        rows: &[f16],
        cols: usize,
        xs: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        thread_local! {
            static ACC: std::cell::RefCell<Vec<__m512>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let reduce = |a: __m512, b: __m512| _mm512_reduce_add_ps(_mm512_add_ps(a, b));
        let tile = |rr: usize, jj: usize, t: &Tile<'_>, out: &mut [f32], acc: &mut [__m512]| {
            // SAFETY: `dots_blocked` passes tiles that lie within the rows, vectors, columns
            // and output, and an `acc` of BLOCK_ROWS x MAX_TILE_VECTORS x 2.
            unsafe {
                match (rr, jj) {
                    (3, 4) => dots_tile::<__m512, 3, 4>(t, out, acc, reduce),
                    (2, 4) => dots_tile::<__m512, 2, 4>(t, out, acc, reduce),
                    (_, 4) => dots_tile::<__m512, 1, 4>(t, out, acc, reduce),
                    (4, 3) => dots_tile::<__m512, 4, 3>(t, out, acc, reduce),
                    (3, 3) => dots_tile::<__m512, 3, 3>(t, out, acc, reduce),
                    (2, 3) => dots_tile::<__m512, 2, 3>(t, out, acc, reduce),
                    (_, 3) => dots_tile::<__m512, 1, 3>(t, out, acc, reduce),
                    (6, 2) => dots_tile::<__m512, 6, 2>(t, out, acc, reduce),
                    (5, 2) => dots_tile::<__m512, 5, 2>(t, out, acc, reduce),
                    (4, 2) => dots_tile::<__m512, 4, 2>(t, out, acc, reduce),
                    (3, 2) => dots_tile::<__m512, 3, 2>(t, out, acc, reduce),
                    (2, 2) => dots_tile::<__m512, 2, 2>(t, out, acc, reduce),
                    (_, 2) => dots_tile::<__m512, 1, 2>(t, out, acc, reduce),
                    (4, _) => dots_tile::<__m512, 4, 1>(t, out, acc, reduce),
                    (3, _) => dots_tile::<__m512, 3, 1>(t, out, acc, reduce),
                    (2, _) => dots_tile::<__m512, 2, 1>(t, out, acc, reduce),
                    _ => dots_tile::<__m512, 1, 1>(t, out, acc, reduce),
                }
            }
        };
        let geometry = Geometry {
            max_vectors: 4,
            tile_rows: [0, 4, 6, 4, 3],
        };
        ACC.with_borrow_mut(|acc| dots_blocked(rows, cols, xs, m, out, acc, &geometry, tile));
    }

    /// A blocked head's tiles: at most `max_vectors` vectors, and `tile_rows[jj]` rows for a
    /// tile of `jj` vectors.
    struct Geometry {
        max_vectors: usize,
        tile_rows: [usize; MAX_TILE_VECTORS + 1],
    }

    /// The blocked product of both instruction sets' heads (`m` vectors in `xs`). The rows go
    /// in blocks of [`BLOCK_ROWS`]; within a block, the vectors in tiles of up to
    /// `g.max_vectors`, and for each the columns in passes of about [`PASS_COLS`], each
    /// pass running the block's row tiles (`tile(rows, vectors, ..)`, each tile shape its own
    /// instance, so that its accumulators and converted rows stay in registers through the
    /// pass). So a tile's vectors stay in L1 and the block's rows in L2 while they are reused,
    /// and the accumulators go to `acc` only between passes. The block's rows come from memory
    /// on the first vector tile's passes; meanwhile and after, the tiles prefetch the next
    /// block's rows, spread evenly over the block's tiles. (The heads used to go over 256-column
    /// chunks with all the vectors of a chunk: each tile's call, which reloaded and saved its
    /// accumulators, cost as much as its work, 34% slower at batch 16 with AVX-512, 28% with
    /// AVX2: BENCHMARKS.md, session 31.)
    ///
    /// Inlined into each instruction set's entry point, whose features it then runs with.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn dots_blocked<V: Lanes>(
        rows: &[f16],
        cols: usize,
        xs: &[f32],
        m: usize,
        out: &mut [f32],
        acc: &mut Vec<V>,
        g: &Geometry,
        tile: impl Fn(usize, usize, &Tile<'_>, &mut [f32], &mut [V]),
    ) {
        let n_rows = out.len() / m;
        let step = 2 * V::N;
        let steps = cols / step;
        let full = steps * step;
        let passes = steps.div_ceil(PASS_COLS / step).max(1);
        // SAFETY: the caller (an entry point with V's features) runs on a CPU with them.
        acc.resize(BLOCK_ROWS * MAX_TILE_VECTORS * 2, unsafe { V::zero() });
        let mut r0 = 0;
        while r0 < n_rows {
            let nr = (n_rows - r0).min(BLOCK_ROWS);
            let next = r0 + nr;
            let next_lines = ((n_rows - next).min(BLOCK_ROWS) * cols * 2).div_ceil(64);
            let tiles: usize = (0..m)
                .step_by(g.max_vectors)
                .map(|j| nr.div_ceil(g.tile_rows[(m - j).min(g.max_vectors)]) * passes)
                .sum();
            let per_tile = next_lines.div_ceil(tiles);
            let mut prefetched = 0;
            for j in (0..m).step_by(g.max_vectors) {
                let jj = (m - j).min(g.max_vectors);
                for p in 0..passes {
                    let mut r = r0;
                    while r < next {
                        let rr = (next - r).min(g.tile_rows[jj]);
                        let lines = per_tile.min(next_lines - prefetched);
                        let t = Tile {
                            rows,
                            cols,
                            xs,
                            m,
                            r,
                            j,
                            c0: steps * p / passes * step,
                            c1: steps * (p + 1) / passes * step,
                            full,
                            acc_row: r - r0,
                            // Only ever a prefetch address (inside `rows` while lines remain).
                            prefetch: rows
                                .as_ptr()
                                .wrapping_add(next * cols)
                                .cast::<u8>()
                                .wrapping_add(prefetched * 64),
                            prefetch_lines: lines,
                        };
                        tile(rr, jj, &t, out, acc);
                        prefetched += lines;
                        r += rr;
                    }
                }
            }
            r0 = next;
        }
    }

    /// A tile of [`dots_blocked`]: rows from `r` against vectors from `j` (of `m` in `xs`) over
    /// columns `c0..c1` of the `full` that the vector loop covers; its accumulators are saved in
    /// the block's buffer from row `acc_row` of the block; on the way it prefetches
    /// `prefetch_lines` cache lines from `prefetch`.
    struct Tile<'a> {
        rows: &'a [f16],
        cols: usize,
        xs: &'a [f32],
        m: usize,
        r: usize,
        j: usize,
        c0: usize,
        c1: usize,
        full: usize,
        acc_row: usize,
        prefetch: *const u8,
        prefetch_lines: usize,
    }

    /// `RR` rows from `t.r` against `JJ` vectors from `t.j` over columns `t.c0..t.c1`: two
    /// accumulators per pair over alternating `V::N`-column chunks, resumed from `acc` (from
    /// zero in the first pass) and saved there, or after the last pass reduced by `reduce`,
    /// completed by the scalar tail as the single product does and written to
    /// `out[row * m + vector]`. Inlined into each instruction set's entry point, whose features
    /// it then runs with.
    ///
    /// # Safety
    ///
    /// The CPU has `V`'s instruction set; rows `t.r..t.r + RR` and vectors `t.j..t.j + JJ`
    /// exist; `t.c0..t.c1` lies in `t.full`, a multiple of `2 V::N` no larger than `t.cols`;
    /// `acc` holds `(t.acc_row + RR) * MAX_TILE_VECTORS * 2` accumulators.
    #[inline(always)]
    unsafe fn dots_tile<V: Lanes, const RR: usize, const JJ: usize>(
        t: &Tile<'_>,
        out: &mut [f32],
        acc: &mut [V],
        reduce: impl Fn(V, V) -> f32,
    ) {
        let slot = |a: usize, b: usize| ((t.acc_row + a) * MAX_TILE_VECTORS + b) * 2;
        // SAFETY: the instruction set is there (the caller's promise).
        let zero = unsafe { V::zero() };
        let mut reg = [[[zero; 2]; JJ]; RR];
        if t.c0 > 0 {
            for (a, reg_a) in reg.iter_mut().enumerate() {
                for (b, reg_ab) in reg_a.iter_mut().enumerate() {
                    *reg_ab = [acc[slot(a, b)], acc[slot(a, b) + 1]];
                }
            }
        }
        // SAFETY: the caller's promises are `tile_pass`'s.
        let reg = unsafe { tile_pass::<V, RR, JJ>(t, reg) };
        if t.c1 < t.full {
            for (a, reg_a) in reg.iter().enumerate() {
                for (b, reg_ab) in reg_a.iter().enumerate() {
                    acc[slot(a, b)] = reg_ab[0];
                    acc[slot(a, b) + 1] = reg_ab[1];
                }
            }
            return;
        }
        for (a, reg_a) in reg.iter().enumerate() {
            let row = &t.rows[(t.r + a) * t.cols..(t.r + a + 1) * t.cols];
            for (b, reg_ab) in reg_a.iter().enumerate() {
                let x = &t.xs[(t.j + b) * t.cols..(t.j + b + 1) * t.cols];
                let mut sum = reduce(reg_ab[0], reg_ab[1]);
                for k in t.full..t.cols {
                    sum += row[k].to_f32() * x[k];
                }
                out[(t.r + a) * t.m + t.j + b] = sum;
            }
        }
    }

    /// The column loop of [`dots_tile`], with the accumulators in and out by value: kept in
    /// their own function, they stay in registers (with the saving and reduction in the same
    /// body, the compiler stored every accumulator after each multiply-add: 23% slower).
    ///
    /// # Safety
    ///
    /// As for [`dots_tile`].
    #[inline(always)]
    unsafe fn tile_pass<V: Lanes, const RR: usize, const JJ: usize>(
        t: &Tile<'_>,
        mut reg: [[[V; 2]; JJ]; RR],
    ) -> [[[V; 2]; JJ]; RR] {
        let (rows, cols, xs, r, j) = (t.rows, t.cols, t.xs, t.r, t.j);
        // SAFETY (every call below): the instruction set is there (the caller's promise), and
        // rows r + a, vectors j + b and columns o..o + V::N exist.
        let zero = unsafe { V::zero() };
        let steps = (t.c1 - t.c0) / (2 * V::N);
        let per_step = t.prefetch_lines.div_ceil(steps.max(1));
        let mut line = 0;
        let mut i = t.c0;
        while i < t.c1 {
            for _ in 0..per_step {
                if line < t.prefetch_lines {
                    // SAFETY: SSE is part of every x86-64 CPU; a prefetch is a hint that
                    // accesses nothing (the line lies in the next block's rows).
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(t.prefetch.wrapping_add(line * 64).cast())
                    };
                    line += 1;
                }
            }
            for s in 0..2 {
                let o = i + V::N * s;
                let mut w = [zero; RR];
                for (a, wv) in w.iter_mut().enumerate() {
                    *wv = unsafe { V::load_h(rows.as_ptr().add((r + a) * cols + o)) };
                }
                for b in 0..JJ {
                    let xv = unsafe { V::load_x(xs.as_ptr().add((j + b) * cols + o)) };
                    for (reg_a, wv) in reg.iter_mut().zip(&w) {
                        reg_a[b][s] = unsafe { V::fma(*wv, xv, reg_a[b][s]) };
                    }
                }
            }
            i += 2 * V::N;
        }
        while line < t.prefetch_lines {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(t.prefetch.wrapping_add(line * 64).cast()) };
            line += 1;
        }
        reg
    }

    /// Register-blocked [`dot_f16_avx2`]: the same per-pair accumulation order (two accumulators
    /// over alternating 8-lane chunks, reduced as it does, then a scalar tail), in tiles of 2
    /// rows x 3 vectors, 2 x 2 or 4 x 1 (twelve accumulators at most, their converted rows and
    /// a vector: 15 of the 16 registers), [`dots_blocked`]. 3 x 2 (16 registers) spilled its
    /// accumulators in this loop; 2 x 3 makes the same 5 loads per 6 multiply-adds (session 13
    /// found the loads bound the AVX2 head).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dots_f16_avx2(rows: &[f16], cols: usize, xs: &[f32], m: usize, out: &mut [f32]) {
        thread_local! {
            static ACC: std::cell::RefCell<Vec<__m256>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let reduce = |a: __m256, b: __m256| reduce_avx2(a, b);
        let tile = |rr: usize, jj: usize, t: &Tile<'_>, out: &mut [f32], acc: &mut [__m256]| {
            // SAFETY: as in `dots_f16_avx512`.
            unsafe {
                match (rr, jj) {
                    (2, 3) => dots_tile::<__m256, 2, 3>(t, out, acc, reduce),
                    (_, 3) => dots_tile::<__m256, 1, 3>(t, out, acc, reduce),
                    (2, 2) => dots_tile::<__m256, 2, 2>(t, out, acc, reduce),
                    (_, 2) => dots_tile::<__m256, 1, 2>(t, out, acc, reduce),
                    (4, _) => dots_tile::<__m256, 4, 1>(t, out, acc, reduce),
                    (3, _) => dots_tile::<__m256, 3, 1>(t, out, acc, reduce),
                    (2, _) => dots_tile::<__m256, 2, 1>(t, out, acc, reduce),
                    _ => dots_tile::<__m256, 1, 1>(t, out, acc, reduce),
                }
            }
        };
        let geometry = Geometry {
            max_vectors: 3,
            tile_rows: [0, 4, 2, 2, 0],
        };
        ACC.with_borrow_mut(|acc| dots_blocked(rows, cols, xs, m, out, acc, &geometry, tile));
    }

    /// The f32 vectors of one instruction set, as the blocked head's tiles use them.
    trait Lanes: Copy {
        /// Lanes per vector.
        const N: usize;
        /// # Safety
        /// The CPU has the instruction set (as for all the methods).
        unsafe fn zero() -> Self;
        /// `N` f16 from `p`, widened. # Safety: `N` readable values at `p`.
        unsafe fn load_h(p: *const f16) -> Self;
        /// `N` f32 from `p`. # Safety: `N` readable values at `p`.
        unsafe fn load_x(p: *const f32) -> Self;
        /// `a * b + c`, fused.
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    }

    impl Lanes for __m512 {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the caller's CPU has AVX-512F.
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load_h(p: *const f16) -> Self {
            // SAFETY: 16 f16 (a transparent u16) at p; AVX-512F.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load_x(p: *const f32) -> Self {
            // SAFETY: 16 f32 at p; AVX-512F.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: AVX-512F.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
    }

    impl Lanes for __m256 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the caller's CPU has AVX.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load_h(p: *const f16) -> Self {
            // SAFETY: 8 f16 (a transparent u16) at p; F16C.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load_x(p: *const f32) -> Self {
            // SAFETY: 8 f32 at p; AVX.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: FMA.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
    }

    /// The sum of [`dot_f16_avx2`]'s two accumulators: added, then the eight lanes in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn reduce_avx2(a: __m256, b: __m256) -> f32 {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a, b)) };
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_f16_avx2(a: &[f16], x: &[f32]) -> f32 {
        let n = a.len().min(x.len());
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                // SAFETY: o + 8 <= n for both slices; f16 is a transparent u16.
                unsafe {
                    let h = _mm_loadu_si128(a.as_ptr().add(o).cast());
                    let v = _mm256_loadu_ps(x.as_ptr().add(o));
                    *acc = _mm256_fmadd_ps(_mm256_cvtph_ps(h), v, *acc);
                }
            }
            i += 16;
        }
        let mut sum = reduce_avx2(acc[0], acc[1]);
        for k in i..n {
            sum += a[k].to_f32() * x[k];
        }
        sum
    }

    /// The whole 16-lane part of [`super::scale_i32`]; returns how many it wrote.
    #[target_feature(enable = "avx512f")]
    pub(super) fn scale_i32_avx512(ints: &[i32], s_x: f32, s_w: f32, out: &mut [f32]) -> usize {
        let (sx, sw) = (_mm512_set1_ps(s_x), _mm512_set1_ps(s_w));
        let (chunks, _) = ints.as_chunks::<16>();
        for (c, y) in chunks.iter().zip(out.chunks_exact_mut(16)) {
            // SAFETY: 16 readable i32 at c and 16 writable f32 at y; loadu/storeu are unaligned.
            unsafe {
                let d = _mm512_cvtepi32_ps(_mm512_loadu_si512(c.as_ptr().cast()));
                _mm512_storeu_ps(y.as_mut_ptr(), _mm512_mul_ps(_mm512_div_ps(d, sx), sw));
            }
        }
        chunks.len() * 16
    }

    /// The whole 8-lane part of [`super::scale_i32`]; returns how many it wrote.
    #[target_feature(enable = "avx")]
    pub(super) fn scale_i32_avx(ints: &[i32], s_x: f32, s_w: f32, out: &mut [f32]) -> usize {
        let (sx, sw) = (_mm256_set1_ps(s_x), _mm256_set1_ps(s_w));
        let (chunks, _) = ints.as_chunks::<8>();
        for (c, y) in chunks.iter().zip(out.chunks_exact_mut(8)) {
            // SAFETY: 8 readable i32 at c and 8 writable f32 at y; loadu/storeu are unaligned.
            unsafe {
                let d = _mm256_cvtepi32_ps(_mm256_loadu_si256(c.as_ptr().cast()));
                _mm256_storeu_ps(y.as_mut_ptr(), _mm256_mul_ps(_mm256_div_ps(d, sx), sw));
            }
        }
        chunks.len() * 8
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_f32_avx512(a: &[f32], x: &[f32]) -> f32 {
        let n = a.len().min(x.len());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                // SAFETY: o + 16 <= n for both slices.
                unsafe {
                    let w = _mm512_loadu_ps(a.as_ptr().add(o));
                    let v = _mm512_loadu_ps(x.as_ptr().add(o));
                    *acc = _mm512_fmadd_ps(w, v, *acc);
                }
            }
            i += 32;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        for k in i..n {
            sum += a[k] * x[k];
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dots(rows, cols, xs, m, out)` equals `dot(row, x)` bit for bit for every pair.
    fn check_blocked(
        dots: impl Fn(&[f16], usize, &[f32], usize, &mut [f32]),
        dot: impl Fn(&[f16], &[f32]) -> f32,
        what: &str,
    ) {
        // Row counts across several 24-row blocks, widths across several 1,280-column passes
        // with and without a tail, vector counts across several tiles, the last one partial.
        let cases = [
            (1, 40, 1),
            (3, 2560, 5),
            (5, 33, 7),
            (4, 64, 4),
            (2, 31, 3),
            (19, 2560, 16),
            (17, 600, 9),
            (35, 300, 3),
            (21, 700, 37),
            (5, 96, 17),
            (50, 2600, 6),
            (30, 4100, 2),
            (49, 1290, 13),
        ];
        for (rows, cols, m) in cases {
            let w: Vec<f16> = (0..rows * cols)
                .map(|i| f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0))
                .collect();
            let xs: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
                .collect();
            let mut out = vec![f32::NAN; rows * m];
            dots(&w, cols, &xs, m, &mut out);
            for r in 0..rows {
                for j in 0..m {
                    let want = dot(&w[r * cols..(r + 1) * cols], &xs[j * cols..(j + 1) * cols]);
                    assert_eq!(
                        out[r * m + j].to_bits(),
                        want.to_bits(),
                        "{what}: rows {rows} cols {cols} m {m}: ({r}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn blocked_dots_equal_single_dots_bit_for_bit() {
        check_blocked(dots_f16, dot_f16, "dispatched");
        // Every instruction set this CPU has, not only the one dispatched to.
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected just above.
                let dots = |r: &[f16], c, x: &[f32], m, o: &mut [f32]| unsafe {
                    x86::dots_f16_avx512(r, c, x, m, o)
                };
                // SAFETY: as above.
                let dot = |a: &[f16], x: &[f32]| unsafe { x86::dot_f16_avx512(a, x) };
                check_blocked(dots, dot, "avx512");
            }
            if avx2_f16() {
                // SAFETY: the features were detected just above.
                let dots = |r: &[f16], c, x: &[f32], m, o: &mut [f32]| unsafe {
                    x86::dots_f16_avx2(r, c, x, m, o)
                };
                // SAFETY: as above.
                let dot = |a: &[f16], x: &[f32]| unsafe { x86::dot_f16_avx2(a, x) };
                check_blocked(dots, dot, "avx2");
            }
        }
    }

    #[test]
    fn scaled_products_equal_the_scalar_formula_bit_for_bit() {
        // The dispatched function, and each instruction set's part that this CPU can run.
        type Scale = fn(&[i32], f32, f32, &mut [f32]) -> usize;
        let mut ways: Vec<(&str, Scale)> = vec![("dispatched", |i, x, w, o| {
            scale_i32(i, x, w, o);
            i.len()
        })];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected just above.
                ways.push(("avx512", |i, x, w, o| unsafe {
                    x86::scale_i32_avx512(i, x, w, o)
                }));
            }
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: as above.
                ways.push(("avx", |i, x, w, o| unsafe {
                    x86::scale_i32_avx(i, x, w, o)
                }));
            }
        }
        for n in [0usize, 1, 7, 8, 15, 16, 17, 33, 1000] {
            let ints: Vec<i32> = (0..n)
                .map(|i| (i as i32 * 7919 % 20011 - 10005) * if i % 3 == 0 { 4099 } else { 1 })
                .chain([i32::MAX, i32::MIN, 0, 16_777_217])
                .collect();
            for (s_x, s_w) in [(127.0 / 3.7, 0.731), (1.0, 1.0), (0.3, 1e-3)] {
                for (what, scale) in &ways {
                    let mut out = vec![f32::NAN; ints.len()];
                    let done = scale(&ints, s_x, s_w, &mut out);
                    assert!(
                        done + 16 > ints.len(),
                        "{what}: only {done} of {}",
                        ints.len()
                    );
                    for (&d, y) in ints.iter().zip(&out).take(done) {
                        let want = d as f32 / s_x * s_w;
                        assert_eq!(y.to_bits(), want.to_bits(), "{what}: {d} {s_x} {s_w}");
                    }
                }
            }
        }
    }

    #[test]
    fn simd_dots_match_a_f64_reference() {
        for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 2560] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                .collect();
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
                .collect();
            let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
            let want: f64 = a.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
            assert!((dot_f16(&h, &x) as f64 - want).abs() < 1e-3, "f16 n={n}");
            assert!((dot_f32(&a, &x) as f64 - want).abs() < 1e-3, "f32 n={n}");
        }
    }
}

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
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were detected on this CPU just above.
            return unsafe { x86::dot_f16_avx2(a, x) };
        }
    }
    crate::ops::dot_with(a, x, |h| h.to_f32())
}

/// `out[r * m + j] = rows_r . xs_j` for f16 rows (each `cols` long, `rows.len() / cols` of
/// them) against `m` vectors. Every product is bit-identical to [`dot_f16`] of the same pair;
/// on AVX-512 the work is register-blocked (2 rows x 4 vectors) so each loaded activation
/// serves two rows and each converted weight four vectors.
pub fn dots_f16(rows: &[f16], cols: usize, xs: &[f32], m: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if cols > 0 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU just above.
            return unsafe { x86::dots_f16_avx512(rows, cols, xs, m, out) };
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

    /// Register-blocked [`dot_f16_avx512`]: the same per-pair accumulation order (two
    /// accumulators over alternating 16-lane chunks, reduced, then a scalar tail). Tiles of 2
    /// rows x 4 vectors, each tile shape its own instance of [`dots_tile`] so that the
    /// accumulators and the converted rows stay in registers (with the tile's extent read at
    /// run time they went through the stack, with a branch per multiply-add: ~4x slower).
    #[target_feature(enable = "avx512f")]
    pub(super) fn dots_f16_avx512(
        rows: &[f16],
        cols: usize,
        xs: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        let n_rows = out.len() / m;
        let mut r = 0;
        while r < n_rows {
            let rr = if r + 2 <= n_rows { 2 } else { 1 };
            let mut j = 0;
            while j < m {
                let jj = (m - j).min(4);
                let t = Tile {
                    rows,
                    cols,
                    xs,
                    m,
                    r,
                    j,
                };
                // SAFETY: rows r..r + rr and vectors j..j + jj exist (checked above).
                unsafe {
                    match (rr, jj) {
                        (2, 4) => dots_tile::<2, 4>(&t, out),
                        (2, 3) => dots_tile::<2, 3>(&t, out),
                        (2, 2) => dots_tile::<2, 2>(&t, out),
                        (2, _) => dots_tile::<2, 1>(&t, out),
                        (_, 4) => dots_tile::<1, 4>(&t, out),
                        (_, 3) => dots_tile::<1, 3>(&t, out),
                        (_, 2) => dots_tile::<1, 2>(&t, out),
                        _ => dots_tile::<1, 1>(&t, out),
                    }
                }
                j += jj;
            }
            r += rr;
        }
    }

    /// Where a tile of [`dots_f16_avx512`] starts: row `r`, vector `j`.
    struct Tile<'a> {
        rows: &'a [f16],
        cols: usize,
        xs: &'a [f32],
        m: usize,
        r: usize,
        j: usize,
    }

    /// `RR` rows from `t.r` against `JJ` vectors from `t.j`.
    ///
    /// # Safety
    ///
    /// Rows `t.r..t.r + RR` and vectors `t.j..t.j + JJ` exist; `out` holds `(t.r + RR) * t.m`
    /// products.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dots_tile<const RR: usize, const JJ: usize>(t: &Tile<'_>, out: &mut [f32]) {
        let (rows, cols, xs, r, j) = (t.rows, t.cols, t.xs, t.r, t.j);
        let full = cols / 32 * 32;
        let mut acc = [[[_mm512_setzero_ps(); 2]; JJ]; RR];
        let mut i = 0;
        while i < full {
            for s in 0..2 {
                let o = i + 16 * s;
                let mut w = [_mm512_setzero_ps(); RR];
                for (a, wv) in w.iter_mut().enumerate() {
                    // SAFETY: row r + a exists and o + 16 <= cols.
                    *wv = unsafe {
                        _mm512_cvtph_ps(_mm256_loadu_si256(
                            rows.as_ptr().add((r + a) * cols + o).cast(),
                        ))
                    };
                }
                for b in 0..JJ {
                    // SAFETY: vector j + b exists and o + 16 <= cols.
                    let xv = unsafe { _mm512_loadu_ps(xs.as_ptr().add((j + b) * cols + o)) };
                    for (acc_a, wv) in acc.iter_mut().zip(&w) {
                        acc_a[b][s] = _mm512_fmadd_ps(*wv, xv, acc_a[b][s]);
                    }
                }
            }
            i += 32;
        }
        for (a, acc_a) in acc.iter().enumerate() {
            let row = &rows[(r + a) * cols..(r + a + 1) * cols];
            for (b, acc_ab) in acc_a.iter().enumerate() {
                let x = &xs[(j + b) * cols..(j + b + 1) * cols];
                let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc_ab[0], acc_ab[1]));
                for k in full..cols {
                    sum += row[k].to_f32() * x[k];
                }
                out[(r + a) * t.m + j + b] = sum;
            }
        }
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
        let s = _mm256_add_ps(acc[0], acc[1]);
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        let mut sum: f32 = lanes.iter().sum();
        for k in i..n {
            sum += a[k].to_f32() * x[k];
        }
        sum
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

    #[test]
    fn blocked_dots_equal_single_dots_bit_for_bit() {
        for (rows, cols, m) in [(1, 40, 1), (3, 2560, 5), (5, 33, 7), (4, 64, 4), (2, 31, 3)] {
            let w: Vec<f16> = (0..rows * cols)
                .map(|i| f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0))
                .collect();
            let xs: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
                .collect();
            let mut out = vec![f32::NAN; rows * m];
            dots_f16(&w, cols, &xs, m, &mut out);
            for r in 0..rows {
                for j in 0..m {
                    let want = dot_f16(&w[r * cols..(r + 1) * cols], &xs[j * cols..(j + 1) * cols]);
                    assert_eq!(
                        out[r * m + j].to_bits(),
                        want.to_bits(),
                        "rows {rows} cols {cols} m {m}: ({r}, {j})"
                    );
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

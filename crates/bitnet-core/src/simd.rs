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

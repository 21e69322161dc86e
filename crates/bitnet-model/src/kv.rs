//! How the host KV cache stores keys and values, and the two loops attention runs over them.
//!
//! Three element types, chosen when a model is loaded ([`KvType`]):
//!
//! - **f32**: what the reference computes; exact.
//! - **f16** (default): IEEE half, rounded to nearest even when written. Each element carries a
//!   relative error of at most 2^-11 (about 4.9e-4); magnitudes beyond 65504 become infinite, as
//!   in llama.cpp's f16 cache (BitNet's keys and values stay far below that).
//! - **q8**: per (position, kv head) one f32 scale `s = absmax / 127` and int8 codes
//!   `round_ties_even(x / s)`. Each element is off by at most `s / 2 = absmax / 254` (0.39% of the
//!   largest magnitude in its head vector). A score `q . k` moves by at most
//!   `sum|q_i| * absmax_k / 254`, and because softmax weights sum to 1, the value mix moves by at
//!   most the largest `absmax_v / 254` of the attended positions, on top of the shift the scores'
//!   error causes in the weights (a factor `exp(+-2 * max score error)` on each weight).
//!
//! The loops never widen the cache into a temporary f32 copy: [`KvView`] converts 16 (AVX-512)
//! or 8 (AVX2 + F16C, portable) elements at a time inside the dot products and the weighted
//! sums, picking the instruction set at run time.

use bitnet_core::aligned::AlignedVec;
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Element type of the host KV cache, chosen when a model is loaded
/// ([`crate::Model::with_kv_type`]). A model on a GPU stores its cache as its backend's options
/// say instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// f32: exact (what the reference computes), 4 bytes per element.
    F32,
    /// IEEE half, 2 bytes per element, rounded to nearest even when written: a relative error
    /// of at most 2^-11 (about 4.9e-4) per element; magnitudes beyond 65504 would become
    /// infinite (BitNet's keys and values stay far below). The default, as in llama.cpp and the
    /// GPU path; the bf16 reference model keeps its own cache in 16 bits too.
    #[default]
    F16,
    /// int8 codes `round_ties_even(x / s)` with one f32 scale `s = absmax / 127` per (position,
    /// kv head): 1 byte per element plus 4 per head vector. Each element is off by at most
    /// `s / 2` (0.39% of its head vector's largest magnitude); a score `q . k` by at most
    /// `sum|q_i| * s_k / 2`; the value mix, whose weights sum to 1, by at most the largest
    /// `s_v / 2` attended, plus the scores' error carried through softmax. The GPU backend's
    /// q8 cache holds the same codes and scales.
    Q8,
}

impl KvType {
    /// Every type, in order of size.
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
        }
    }

    /// Bytes one head vector of `head_dim` elements takes, scale included.
    pub fn vector_bytes(self, head_dim: usize) -> usize {
        match self {
            KvType::F32 => 4 * head_dim,
            KvType::F16 => 2 * head_dim,
            KvType::Q8 => head_dim + 4,
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown KV cache type '{s}' (expected f32, f16 or q8)"))
    }
}

/// Quantizes one head vector as the q8 cache stores it: returns its scale `absmax / 127` (0 for
/// a zero vector, whose codes are all 0) and writes `round_ties_even(x / scale)` into `codes`.
pub fn quantize_q8(x: &[f32], codes: &mut [i8]) -> f32 {
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = absmax / 127.0;
    if scale == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Keys or values of one layer, for every position written so far (`positions x kv_dim`).
/// Rows start on 64-byte boundaries when `kv_dim` fills whole cache lines (the attention loops
/// read keys and values in 32- and 64-byte vectors).
#[derive(Clone, Debug)]
pub(crate) enum Store {
    F32(AlignedVec<f32>),
    F16(AlignedVec<f16>),
    /// Codes `positions x kv_dim`, scales `positions x n_kv_heads`.
    Q8 {
        codes: AlignedVec<i8>,
        scales: AlignedVec<f32>,
    },
}

impl Store {
    pub(crate) fn new(kv: KvType) -> Self {
        match kv {
            KvType::F32 => Store::F32(AlignedVec::new()),
            KvType::F16 => Store::F16(AlignedVec::new()),
            KvType::Q8 => Store::Q8 {
                codes: AlignedVec::new(),
                scales: AlignedVec::new(),
            },
        }
    }

    /// Keeps the first `positions`.
    pub(crate) fn truncate(&mut self, positions: usize, kv_dim: usize, head_dim: usize) {
        match self {
            Store::F32(v) => v.truncate(positions * kv_dim),
            Store::F16(v) => v.truncate(positions * kv_dim),
            Store::Q8 { codes, scales } => {
                codes.truncate(positions * kv_dim);
                scales.truncate(positions * (kv_dim / head_dim));
            }
        }
    }

    /// Stores the rows of `x` (`n x kv_dim`) at positions `start..start + n`, forgetting any
    /// position from `start` on.
    pub(crate) fn write(&mut self, start: usize, x: &[f32], kv_dim: usize, head_dim: usize) {
        self.truncate(start, kv_dim, head_dim);
        match self {
            Store::F32(v) => v.extend_from_slice(x),
            Store::F16(v) => {
                // Rounds to nearest even, as `f16::from_f32`, with F16C where the CPU has it.
                let at = v.len();
                v.resize(at + x.len(), f16::ZERO);
                v[at..].convert_from_f32_slice(x);
            }
            Store::Q8 { codes, scales } => {
                let at = codes.len();
                codes.resize(at + x.len(), 0);
                for (xs, cs) in x
                    .chunks_exact(head_dim)
                    .zip(codes[at..].chunks_exact_mut(head_dim))
                {
                    scales.push(quantize_q8(xs, cs));
                }
            }
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => v.len() * 4,
            Store::F16(v) => v.len() * 2,
            Store::Q8 { codes, scales } => codes.len() + scales.len() * 4,
        }
    }

    pub(crate) fn view(&self) -> KvView<'_> {
        match self {
            Store::F32(v) => KvView::F32(v),
            Store::F16(v) => KvView::F16(v),
            Store::Q8 { codes, scales } => KvView::Q8 { codes, scales },
        }
    }
}

/// Read access to one layer's keys or values as stored: `positions x kv_dim` elements, head
/// `h` of a position at `h * head_dim..(h + 1) * head_dim` of its row.
#[derive(Clone, Copy, Debug)]
pub enum KvView<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// IEEE half elements.
    F16(&'a [f16]),
    /// int8 codes; element `i` of head `h` at position `p` is
    /// `codes[p * kv_dim + h * head_dim + i] * scales[p * n_kv_heads + h]`.
    Q8 {
        /// `positions x kv_dim` codes.
        codes: &'a [i8],
        /// `positions x n_kv_heads` scales.
        scales: &'a [f32],
    },
}

impl KvView<'_> {
    /// Attention scores against kv head `head`: `out[p] = (q . k_p) * scaling` for every
    /// position `p < out.len()`, with `head_dim = q.len()`. One head's reference for
    /// [`KvView::scores_heads`], which the model calls (with one head where heads go alone).
    #[cfg(test)]
    pub(crate) fn scores(
        &self,
        q: &[f32],
        head: usize,
        kv_dim: usize,
        scaling: f32,
        out: &mut [f32],
    ) {
        let hd = q.len();
        let at = head * hd;
        match *self {
            KvView::F32(v) => {
                simd::dots(q, &v[at..], kv_dim, out);
                out.iter_mut().for_each(|s| *s *= scaling);
            }
            KvView::F16(v) => {
                simd::dots(q, &v[at..], kv_dim, out);
                out.iter_mut().for_each(|s| *s *= scaling);
            }
            KvView::Q8 { codes, scales } => {
                simd::dots(q, &codes[at..], kv_dim, out);
                let n_kv = kv_dim / hd;
                for (p, s) in out.iter_mut().enumerate() {
                    *s *= scales[p * n_kv + head] * scaling;
                }
            }
        }
    }

    /// The weighted sum of kv head `head`'s values: `out = sum_p w[p] * v_p` over the positions
    /// `p < w.len()`, with `head_dim = out.len()`; `out` is overwritten. For q8 the weights are
    /// multiplied by their position's scale in place first. One head's reference for
    /// [`KvView::mix_heads`].
    #[cfg(test)]
    pub(crate) fn mix(&self, w: &mut [f32], head: usize, kv_dim: usize, out: &mut [f32]) {
        let hd = out.len();
        let at = head * hd;
        out.fill(0.0);
        match *self {
            KvView::F32(v) => simd::axpys(w, &v[at..], kv_dim, out),
            KvView::F16(v) => simd::axpys(w, &v[at..], kv_dim, out),
            KvView::Q8 { codes, scales } => {
                let n_kv = kv_dim / hd;
                for (p, x) in w.iter_mut().enumerate() {
                    *x *= scales[p * n_kv + head];
                }
                simd::axpys(w, &codes[at..], kv_dim, out);
            }
        }
    }
}

/// Whether [`KvView::scores_heads`] and [`KvView::mix_heads`] read each row once for several
/// heads on this CPU (AVX2 and AVX-512, every cache type); elsewhere they go head by head, and
/// grouping heads only takes tasks away from the threads.
pub(crate) fn reads_heads_together() -> bool {
    simd::heads_together()
}

impl KvView<'_> {
    /// `KvView::scores` (one head, the tests' reference) of `g` query heads that share kv head
    /// `head` at once: `q` holds them one after another, `out` their scores (`out.len() / g`
    /// positions apiece). The same values as `g` calls of `scores`; the keys are read and
    /// widened once for all `g`.
    pub(crate) fn scores_heads(
        &self,
        q: &[f32],
        g: usize,
        head: usize,
        kv_dim: usize,
        scaling: f32,
        out: &mut [f32],
    ) {
        let hd = q.len() / g;
        let at = head * hd;
        match *self {
            KvView::F32(v) => {
                simd::dots_heads(q, g, &v[at..], kv_dim, out);
                out.iter_mut().for_each(|s| *s *= scaling);
            }
            KvView::F16(v) => {
                simd::dots_heads(q, g, &v[at..], kv_dim, out);
                out.iter_mut().for_each(|s| *s *= scaling);
            }
            KvView::Q8 { codes, scales } => {
                simd::dots_heads(q, g, &codes[at..], kv_dim, out);
                let (n, n_kv) = (out.len() / g, kv_dim / hd);
                for oh in out.chunks_exact_mut(n) {
                    for (p, s) in oh.iter_mut().enumerate() {
                        *s *= scales[p * n_kv + head] * scaling;
                    }
                }
            }
        }
    }

    /// `KvView::mix` (one head, the tests' reference) of `g` heads at once: `w` holds their
    /// weights one after another (`w.len() / g` apiece), `out` their outputs. The same values as
    /// `g` calls of `mix`.
    pub(crate) fn mix_heads(
        &self,
        w: &mut [f32],
        g: usize,
        head: usize,
        kv_dim: usize,
        out: &mut [f32],
    ) {
        let (hd, n) = (out.len() / g, w.len() / g);
        let at = head * hd;
        match *self {
            KvView::F32(v) => {
                out.fill(0.0);
                simd::axpys_heads(w, g, &v[at..], kv_dim, out);
            }
            KvView::F16(v) => {
                out.fill(0.0);
                simd::axpys_heads(w, g, &v[at..], kv_dim, out);
            }
            KvView::Q8 { codes, scales } => {
                let n_kv = kv_dim / hd;
                for wh in w.chunks_exact_mut(n) {
                    for (p, x) in wh.iter_mut().enumerate() {
                        *x *= scales[p * n_kv + head];
                    }
                }
                out.fill(0.0);
                simd::axpys_heads(w, g, &codes[at..], kv_dim, out);
            }
        }
    }
}

/// The attention loops over rows of any stored element type, vectorized per instruction set.
mod simd {
    use half::f16;

    /// An element the cache stores, widened to f32 one at a time (portable path and tails).
    pub(crate) trait Elem: Copy + Send + Sync + 'static {
        fn widen(self) -> f32;
    }

    impl Elem for f32 {
        #[inline(always)]
        fn widen(self) -> f32 {
            self
        }
    }

    impl Elem for f16 {
        #[inline(always)]
        fn widen(self) -> f32 {
            self.to_f32()
        }
    }

    impl Elem for i8 {
        #[inline(always)]
        fn widen(self) -> f32 {
            self as f32
        }
    }

    /// `out[p] = q . rows[p * stride..p * stride + q.len()]`.
    pub(crate) fn dots<E: x86::Lanes>(q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
        if out.is_empty() {
            return;
        }
        assert!(rows.len() >= (out.len() - 1) * stride + q.len());
        #[cfg(target_arch = "x86_64")]
        {
            match x86::level() {
                // SAFETY: the features were detected on this CPU; bounds checked above.
                x86::Level::Avx512 => return unsafe { x86::dots_avx512(q, rows, stride, out) },
                x86::Level::Avx2 => return unsafe { x86::dots_avx2(q, rows, stride, out) },
                x86::Level::None => {}
            }
        }
        dots_portable(q, rows, stride, out);
    }

    /// Whether [`dots_heads`] and [`axpys_heads`] share each row between heads on this CPU.
    pub(crate) fn heads_together() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            x86::level() != x86::Level::None
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// [`dots`] of `g` query heads against the same rows (`q` holds them one after another,
    /// `out` their results, `out.len() / g` apiece): each head's results are exactly [`dots`]'s.
    /// On AVX2 and AVX-512 two or four heads go together, each row loaded and widened once for
    /// all of them (a `vcvtph2ps` costs as much as two FMAs on AVX2) and requested ahead (the
    /// hardware prefetchers do not follow a kv head's rows).
    pub(crate) fn dots_heads<E: x86::Lanes>(
        q: &[f32],
        g: usize,
        rows: &[E],
        stride: usize,
        out: &mut [f32],
    ) {
        let (hd, n) = (q.len() / g.max(1), out.len() / g.max(1));
        #[cfg(target_arch = "x86_64")]
        if n > 0 && heads_together() {
            assert!(q.len() == g * hd && out.len() == g * n);
            assert!(rows.len() >= (n - 1) * stride + hd);
            let avx512 = x86::level() == x86::Level::Avx512;
            match (g, avx512) {
                // SAFETY: the features were detected on this CPU; bounds checked above.
                (2, true) => {
                    return unsafe { x86::dots_heads_avx512::<E, 2>(q, rows, stride, out) };
                }
                // SAFETY: as above.
                (4, true) => {
                    return unsafe { x86::dots_heads_avx512::<E, 4>(q, rows, stride, out) };
                }
                // SAFETY: as above.
                (2, false) => return unsafe { x86::dots_heads_avx2::<E, 2>(q, rows, stride, out) },
                // SAFETY: as above.
                (4, false) => return unsafe { x86::dots_heads_avx2::<E, 4>(q, rows, stride, out) },
                _ => {}
            }
        }
        for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(n)) {
            dots(qh, rows, stride, oh);
        }
    }

    /// [`axpys`] of `g` heads over the same rows (`w` holds their weights one after another,
    /// `out` their outputs): each head's output is exactly [`axpys`]'s.
    pub(crate) fn axpys_heads<E: x86::Lanes>(
        w: &[f32],
        g: usize,
        rows: &[E],
        stride: usize,
        out: &mut [f32],
    ) {
        let (n, hd) = (w.len() / g.max(1), out.len() / g.max(1));
        #[cfg(target_arch = "x86_64")]
        if n > 0 && heads_together() {
            assert!(w.len() == g * n && out.len() == g * hd);
            assert!(rows.len() >= (n - 1) * stride + hd);
            let avx512 = x86::level() == x86::Level::Avx512;
            match (g, avx512) {
                // SAFETY: the features were detected on this CPU; bounds checked above.
                (2, true) => {
                    return unsafe { x86::axpys_heads_avx512::<E, 2, 4>(w, rows, stride, out) };
                }
                // SAFETY: as above.
                (4, true) => {
                    return unsafe { x86::axpys_heads_avx512::<E, 4, 4>(w, rows, stride, out) };
                }
                // SAFETY: as above.
                (2, false) => {
                    return unsafe { x86::axpys_heads_avx2::<E, 2, 4>(w, rows, stride, out) };
                }
                // SAFETY: as above.
                (4, false) => {
                    return unsafe { x86::axpys_heads_avx2::<E, 4, 2>(w, rows, stride, out) };
                }
                _ => {}
            }
        }
        for (wh, oh) in w.chunks_exact(n).zip(out.chunks_exact_mut(hd)) {
            axpys(wh, rows, stride, oh);
        }
    }

    /// [`dots`] without vector instructions (other CPUs, and the oracle of the tests).
    pub(crate) fn dots_portable<E: Elem>(q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
        for (p, o) in out.iter_mut().enumerate() {
            *o = dot(q, &rows[p * stride..p * stride + q.len()]);
        }
    }

    /// `out += sum_p w[p] * rows[p * stride..p * stride + out.len()]`.
    pub(crate) fn axpys<E: x86::Lanes>(w: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
        if w.is_empty() {
            return;
        }
        assert!(rows.len() >= (w.len() - 1) * stride + out.len());
        #[cfg(target_arch = "x86_64")]
        {
            match x86::level() {
                // SAFETY: the features were detected on this CPU; bounds checked above.
                x86::Level::Avx512 => return unsafe { x86::axpys_avx512(w, rows, stride, out) },
                x86::Level::Avx2 => return unsafe { x86::axpys_avx2(w, rows, stride, out) },
                x86::Level::None => {}
            }
        }
        axpys_portable(w, rows, stride, out);
    }

    /// [`axpys`] without vector instructions.
    pub(crate) fn axpys_portable<E: Elem>(w: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
        for (p, &wp) in w.iter().enumerate() {
            axpy(wp, &rows[p * stride..p * stride + out.len()], out);
        }
    }

    /// Portable dot: eight partial sums over 8-lane chunks (vectorizes), then the tail.
    fn dot<E: Elem>(q: &[f32], k: &[E]) -> f32 {
        let (qc, qt) = q.as_chunks::<8>();
        let (kc, kt) = k.as_chunks::<8>();
        let mut acc = [0.0f32; 8];
        for (a, b) in qc.iter().zip(kc) {
            for l in 0..8 {
                acc[l] += a[l] * b[l].widen();
            }
        }
        let tail: f32 = qt.iter().zip(kt).map(|(a, b)| a * b.widen()).sum();
        acc.iter().sum::<f32>() + tail
    }

    /// Portable `out += w * v` in 8-lane chunks.
    fn axpy<E: Elem>(w: f32, v: &[E], out: &mut [f32]) {
        let (oc, ot) = out.as_chunks_mut::<8>();
        let (vc, vt) = v.as_chunks::<8>();
        for (o, x) in oc.iter_mut().zip(vc) {
            for l in 0..8 {
                o[l] += w * x[l].widen();
            }
        }
        for (o, x) in ot.iter_mut().zip(vt) {
            *o += w * x.widen();
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) mod x86 {
        /// Every element type (no vector loads off x86).
        pub(crate) trait Lanes: super::Elem {}
        impl<E: super::Elem> Lanes for E {}
    }

    #[cfg(target_arch = "x86_64")]
    pub(crate) mod x86 {
        use std::arch::x86_64::*;

        use half::f16;

        use super::Elem;

        #[derive(Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Level {
            Avx512,
            Avx2,
            None,
        }

        /// The widest instruction set usable here (detection is cached by std).
        pub(crate) fn level() -> Level {
            if std::arch::is_x86_feature_detected!("avx512f") {
                Level::Avx512
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                Level::Avx2
            } else {
                Level::None
            }
        }

        /// Loads of 16 (AVX-512) or 8 (AVX2) elements widened to f32.
        pub(crate) trait Lanes: Elem {
            /// # Safety
            /// AVX-512F is present and `p..p + 16` is readable.
            unsafe fn load16(p: *const Self) -> __m512;
            /// # Safety
            /// AVX2 and F16C are present and `p..p + 8` is readable.
            unsafe fn load8(p: *const Self) -> __m256;
        }

        impl Lanes for f32 {
            #[inline(always)]
            unsafe fn load16(p: *const f32) -> __m512 {
                // SAFETY: as the trait requires.
                unsafe { _mm512_loadu_ps(p) }
            }
            #[inline(always)]
            unsafe fn load8(p: *const f32) -> __m256 {
                // SAFETY: as the trait requires.
                unsafe { _mm256_loadu_ps(p) }
            }
        }

        impl Lanes for f16 {
            #[inline(always)]
            unsafe fn load16(p: *const f16) -> __m512 {
                // SAFETY: as the trait requires; f16 is a transparent u16.
                unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
            }
            #[inline(always)]
            unsafe fn load8(p: *const f16) -> __m256 {
                // SAFETY: as the trait requires; f16 is a transparent u16.
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
            }
        }

        impl Lanes for i8 {
            #[inline(always)]
            unsafe fn load16(p: *const i8) -> __m512 {
                // SAFETY: as the trait requires.
                unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
            }
            #[inline(always)]
            unsafe fn load8(p: *const i8) -> __m256 {
                // SAFETY: as the trait requires.
                unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
            }
        }

        /// One head's scores: [`dots_heads_avx512`] with `G` = 1 (pairs of 16-lane chunks,
        /// then a last chunk into the first, summed by [`reduce16`], then a scalar tail).
        ///
        /// # Safety
        /// AVX-512F is present; `rows` holds `(out.len() - 1) * stride + q.len()` elements.
        #[target_feature(enable = "avx512f")]
        pub(crate) unsafe fn dots_avx512<E: Lanes>(
            q: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            // SAFETY: the same promises, for one head.
            unsafe { dots_heads_avx512::<E, 1>(q, rows, stride, out) }
        }

        /// One head's weighted sum: [`axpys_heads_avx512`] with `G` = 1, eight vectors (128
        /// lanes) of `out` in registers over each block of positions: each lane gets the same
        /// FMAs in the same order as through memory, then a multiply and an add per lane past
        /// the last 16.
        ///
        /// # Safety
        /// AVX-512F is present; `rows` holds `(w.len() - 1) * stride + out.len()` elements.
        #[target_feature(enable = "avx512f")]
        pub(crate) unsafe fn axpys_avx512<E: Lanes>(
            w: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            // SAFETY: the same promises, for one head.
            unsafe { axpys_heads_avx512::<E, 1, 8>(w, rows, stride, out) }
        }

        /// [`dots_avx512`] of `G` heads (`q`: `G x hd`, `out`: `G x n`) with each row loaded
        /// and widened once and requested [`ROW_PREFETCH`] positions ahead: per head the same
        /// FMAs in the same order.
        ///
        /// # Safety
        /// AVX-512F is present; `q.len() == G * hd`, `out.len() == G * n` and `rows` holds
        /// `(n - 1) * stride + hd` elements.
        #[target_feature(enable = "avx512f")]
        pub(crate) unsafe fn dots_heads_avx512<E: Lanes, const G: usize>(
            q: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            let (hd, n) = (q.len() / G, out.len() / G);
            let mut p = 0;
            // Without a scalar tail, 16 positions at a time: their sums are added in one
            // transposed pass ([`reduce16x16`]) instead of one [`reduce16`] each.
            if hd % 16 == 0 {
                let mut sums = [[_mm512_setzero_ps(); 16]; G];
                while p + 16 <= n {
                    for j in 0..16 {
                        // SAFETY: the caller's promises; position p + j < n.
                        let acc = unsafe { head_sums::<E, G>(q, rows, stride, p + j) };
                        for (sums, acc) in sums.iter_mut().zip(&acc) {
                            sums[j] = _mm512_add_ps(acc[0], acc[1]);
                        }
                    }
                    for (h, sums) in sums.iter().enumerate() {
                        // SAFETY: p + 16 <= n, so the 16 lanes lie in head h's n results.
                        unsafe {
                            _mm512_storeu_ps(out.as_mut_ptr().add(h * n + p), reduce16x16(sums))
                        };
                    }
                    p += 16;
                }
            }
            let vector = hd / 16 * 16;
            for p in p..n {
                // SAFETY: the caller's promises; position p < n.
                let acc = unsafe { head_sums::<E, G>(q, rows, stride, p) };
                let row = &rows[p * stride..p * stride + hd];
                for (h, acc) in acc.iter().enumerate() {
                    let mut sum = reduce16(_mm512_add_ps(acc[0], acc[1]));
                    for k in vector..hd {
                        sum += q[h * hd + k] * row[k].widen();
                    }
                    out[h * n + p] = sum;
                }
            }
        }

        /// The two accumulators of each of `G` heads' dot products with position `p`'s row, as
        /// [`dots_avx512`] forms them (pairs of 16-lane chunks, then a last chunk into the
        /// first), the row loaded and widened once for all heads and the row
        /// [`ROW_PREFETCH`] positions ahead requested.
        ///
        /// # Safety
        /// As [`dots_heads_avx512`], and `p < out.len() / G`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn head_sums<E: Lanes, const G: usize>(
            q: &[f32],
            rows: &[E],
            stride: usize,
            p: usize,
        ) -> [[__m512; 2]; G] {
            let hd = q.len() / G;
            let full = hd / 32 * 32;
            let half = hd / 16 * 16;
            let qp = q.as_ptr();
            for line in 0..row_lines::<E>(hd) {
                prefetch_line(rows, (p + ROW_PREFETCH) * stride, hd, line);
            }
            let kp = rows[p * stride..p * stride + hd].as_ptr();
            let mut acc = [[_mm512_setzero_ps(); 2]; G];
            let mut i = 0;
            // SAFETY (both blocks): i + 32 (or 16) <= hd for the row and each head's query;
            // AVX-512F is present.
            unsafe {
                while i < full {
                    let k0 = E::load16(kp.add(i));
                    let k1 = E::load16(kp.add(i + 16));
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let qh = qp.add(h * hd + i);
                        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(qh), k0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(_mm512_loadu_ps(qh.add(16)), k1, acc[1]);
                    }
                    i += 32;
                }
                if i < half {
                    let k0 = E::load16(kp.add(i));
                    for (h, acc) in acc.iter_mut().enumerate() {
                        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(h * hd + i)), k0, acc[0]);
                    }
                }
            }
            acc
        }

        /// The sum of a vector's 16 lanes by a fixed tree: lanes j and j + 8, then j and j + 4,
        /// then (0 + 2) + (1 + 3). Every score of the AVX-512 kernels is summed so, one at a
        /// time here or sixteen at a time by [`reduce16x16`], bit for bit the same.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn reduce16(v: __m512) -> f32 {
            let a = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v));
            let b = _mm512_add_ps(a, _mm512_shuffle_f32x4::<0b01_01_01_01>(a, a));
            let c = _mm512_add_ps(b, _mm512_permute_ps::<0b01_00_11_10>(b));
            let d = _mm512_add_ps(c, _mm512_permute_ps::<0b10_11_00_01>(c));
            _mm512_cvtss_f32(d)
        }

        /// [`reduce16`] of sixteen vectors at once, `out[k] = reduce16(v[k])`: each step of the
        /// tree adds the same lanes as there, for two vectors (then four) per instruction.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn reduce16x16(v: &[__m512; 16]) -> __m512 {
            // Lanes j + j + 8: u[k] holds v[2k]'s eight sums in its first half, v[2k + 1]'s in
            // its second.
            let u: [__m512; 8] = std::array::from_fn(|k| {
                let (a, b) = (v[2 * k], v[2 * k + 1]);
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
                )
            });
            // Lanes j + j + 4: y[m]'s four 128-bit blocks belong to v[4m] .. v[4m + 3].
            let y: [__m512; 4] = std::array::from_fn(|m| {
                let (a, b) = (u[2 * m], u[2 * m + 1]);
                let b4 = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
                );
                // (0 + 2) + (1 + 3) in lane 0 of every block.
                let c = _mm512_add_ps(b4, _mm512_permute_ps::<0b01_00_11_10>(b4));
                _mm512_add_ps(c, _mm512_permute_ps::<0b10_11_00_01>(c))
            });
            // Lane 0 of each block, in order.
            let idx = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
            let lo = _mm512_permutex2var_ps(y[0], idx, y[1]);
            let hi = _mm512_permutex2var_ps(y[2], idx, y[3]);
            _mm512_shuffle_f32x4::<0b01_00_01_00>(lo, hi)
        }

        /// [`axpys_avx512`] of `G` heads (`w`: `G x n`, `out`: `G x hd`): passes of `C` 16-lane
        /// chunks of every head's output kept in registers over a block of [`MIX_BLOCK`]
        /// positions, each row chunk loaded and widened once for all heads, the next block's
        /// rows requested a share of their lines per pass. Per output element the same FMAs in
        /// the same order (position by position, from the value in `out`).
        ///
        /// # Safety
        /// AVX-512F is present; `w.len() == G * n`, `out.len() == G * hd` and `rows` holds
        /// `(n - 1) * stride + hd` elements.
        #[target_feature(enable = "avx512f")]
        pub(crate) unsafe fn axpys_heads_avx512<E: Lanes, const G: usize, const C: usize>(
            w: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            let (n, hd) = (w.len() / G, out.len() / G);
            let full = hd / 16 * 16;
            let passes = (full / (16 * C) + full % (16 * C) / 16).max(1);
            let per_pass = row_lines::<E>(hd).div_ceil(passes);
            let mut p0 = 0;
            while p0 < n {
                let p1 = (p0 + MIX_BLOCK).min(n);
                let mut i = 0;
                let mut lines = 0..per_pass;
                while i + 16 * C <= full {
                    // SAFETY: the caller's promises; i + 16C <= hd.
                    unsafe {
                        mix_pass512::<E, G, C>(w, rows, stride, out, i, p0..p1, lines.clone())
                    };
                    i += 16 * C;
                    lines = lines.end..lines.end + per_pass;
                }
                while i < full {
                    // SAFETY: as above, i + 16 <= hd.
                    unsafe {
                        mix_pass512::<E, G, 1>(w, rows, stride, out, i, p0..p1, lines.clone())
                    };
                    i += 16;
                    lines = lines.end..lines.end + per_pass;
                }
                p0 = p1;
            }
            for h in 0..G {
                for p in 0..n {
                    let row = &rows[p * stride..p * stride + hd];
                    for k in full..hd {
                        out[h * hd + k] += w[h * n + p] * row[k].widen();
                    }
                }
            }
        }

        /// Lanes `i..i + 16 CC` of every head's output over positions `ps`, requesting `lines`
        /// of the row [`MIX_BLOCK`] positions ahead of each.
        ///
        /// # Safety
        /// As [`axpys_heads_avx512`], and `i + 16 CC <= hd`.
        #[inline(always)]
        unsafe fn mix_pass512<E: Lanes, const G: usize, const CC: usize>(
            w: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
            i: usize,
            ps: std::ops::Range<usize>,
            lines: std::ops::Range<usize>,
        ) {
            let (n, hd) = (w.len() / G, out.len() / G);
            let op = out.as_mut_ptr();
            let lines = lines.start..lines.end.min(row_lines::<E>(hd));
            // SAFETY (every block): the caller's bounds; AVX-512F.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); CC]; G];
                for (h, acc) in acc.iter_mut().enumerate() {
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(op.add(h * hd + i + 16 * c));
                    }
                }
                for p in ps {
                    for line in lines.clone() {
                        prefetch_line(rows, (p + MIX_BLOCK) * stride, hd, line);
                    }
                    let vp = rows.as_ptr().add(p * stride + i);
                    let mut v = [_mm512_setzero_ps(); CC];
                    for (c, v) in v.iter_mut().enumerate() {
                        *v = E::load16(vp.add(16 * c));
                    }
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*w.get_unchecked(h * n + p));
                        for (a, v) in acc.iter_mut().zip(&v) {
                            *a = _mm512_fmadd_ps(wv, *v, *a);
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    for (c, a) in acc.iter().enumerate() {
                        _mm512_storeu_ps(op.add(h * hd + i + 16 * c), *a);
                    }
                }
            }
        }

        /// # Safety
        /// AVX2, FMA and F16C are present; `rows` holds `(out.len() - 1) * stride + q.len()`
        /// elements.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn dots_avx2<E: Lanes>(
            q: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            let n = q.len();
            let full = n / 16 * 16;
            let half = n / 8 * 8;
            for (p, o) in out.iter_mut().enumerate() {
                let row = &rows[p * stride..p * stride + n];
                let (qp, kp) = (q.as_ptr(), row.as_ptr());
                let mut acc = [_mm256_setzero_ps(); 2];
                let mut i = 0;
                while i < full {
                    // SAFETY: i + 16 <= n for both q and row.
                    unsafe {
                        acc[0] = _mm256_fmadd_ps(
                            _mm256_loadu_ps(qp.add(i)),
                            E::load8(kp.add(i)),
                            acc[0],
                        );
                        acc[1] = _mm256_fmadd_ps(
                            _mm256_loadu_ps(qp.add(i + 8)),
                            E::load8(kp.add(i + 8)),
                            acc[1],
                        );
                    }
                    i += 16;
                }
                if i < half {
                    // SAFETY: i + 8 <= n.
                    unsafe {
                        acc[0] = _mm256_fmadd_ps(
                            _mm256_loadu_ps(qp.add(i)),
                            E::load8(kp.add(i)),
                            acc[0],
                        );
                    }
                    i += 8;
                }
                let mut sum = reduce2(acc[0], acc[1]);
                for k in i..n {
                    sum += q[k] * row[k].widen();
                }
                *o = sum;
            }
        }

        /// Positions ahead whose cached rows the grouped loops prefetch: a kv head's rows sit
        /// `stride` elements apart (every kv head of a position together), a few per 4 KB page,
        /// which the hardware prefetchers do not run ahead on, so without this each row waited on
        /// memory (decode at depth 2048: attention ~27 ms of a 78 ms token on 2 cores).
        /// See [`prefetch_line`].
        const ROW_PREFETCH: usize = 16;

        /// Asks for the 64-byte line `line` of `rows[start..start + len]` in L1 (the last byte's
        /// line for lines past its end), if that slice is inside `rows`. A hint: no effect on
        /// results.
        #[inline(always)]
        fn prefetch_line<E>(rows: &[E], start: usize, len: usize, line: usize) {
            if start + len <= rows.len() && len > 0 {
                let bytes = len * std::mem::size_of::<E>();
                // SAFETY: the offset is below `bytes`, inside `rows`.
                unsafe {
                    let base = rows.as_ptr().add(start) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(base.add((line * 64).min(bytes - 1)));
                }
            }
        }

        /// Lines of [`prefetch_line`] that cover `len` elements wherever they start.
        #[inline(always)]
        fn row_lines<E>(len: usize) -> usize {
            (len * std::mem::size_of::<E>()).div_ceil(64) + 1
        }

        /// The sum of [`dots_avx2`]'s two accumulators: added, then the halves, pairs and lanes.
        #[inline]
        #[target_feature(enable = "avx2")]
        fn reduce2(a: __m256, b: __m256) -> f32 {
            let s = _mm256_add_ps(a, b);
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }

        /// [`dots_avx2`] of `G` heads (`q`: `G x hd`, `out`: `G x n`) with each row widened
        /// once: per head the same FMAs in the same order.
        ///
        /// # Safety
        /// AVX2, FMA and F16C are present; `q.len() == G * hd`, `out.len() == G * n` and `rows`
        /// holds `(n - 1) * stride + hd` elements.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn dots_heads_avx2<E: Lanes, const G: usize>(
            q: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            let (hd, n) = (q.len() / G, out.len() / G);
            let full = hd / 16 * 16;
            let half = hd / 8 * 8;
            let qp = q.as_ptr();
            for p in 0..n {
                for line in 0..row_lines::<E>(hd) {
                    prefetch_line(rows, (p + ROW_PREFETCH) * stride, hd, line);
                }
                let row = &rows[p * stride..p * stride + hd];
                let kp = row.as_ptr();
                let mut acc = [[_mm256_setzero_ps(); 2]; G];
                let mut i = 0;
                while i < full {
                    // SAFETY: i + 16 <= hd for the row and each head's query.
                    unsafe {
                        let k0 = E::load8(kp.add(i));
                        let k1 = E::load8(kp.add(i + 8));
                        for (h, acc) in acc.iter_mut().enumerate() {
                            let qh = qp.add(h * hd + i);
                            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(qh), k0, acc[0]);
                            acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(qh.add(8)), k1, acc[1]);
                        }
                    }
                    i += 16;
                }
                if i < half {
                    // SAFETY: i + 8 <= hd.
                    unsafe {
                        let k0 = E::load8(kp.add(i));
                        for (h, acc) in acc.iter_mut().enumerate() {
                            acc[0] =
                                _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * hd + i)), k0, acc[0]);
                        }
                    }
                    i += 8;
                }
                for (h, acc) in acc.iter().enumerate() {
                    let mut sum = reduce2(acc[0], acc[1]);
                    for k in i..hd {
                        sum += q[h * hd + k] * row[k].widen();
                    }
                    out[h * n + p] = sum;
                }
            }
        }

        /// Positions per block of [`axpys_heads_avx2`]: their rows (16 KB at head_dim 128 in
        /// f16) stay in L1 while every pass over the dims reads them.
        const MIX_BLOCK: usize = 64;

        /// [`axpys_avx2`] of `G` heads (`w`: `G x n`, `out`: `G x hd`): passes of `C` 8-lane
        /// chunks of every head's output kept in registers over a block of positions, each
        /// row chunk widened once for all heads. Per output element the same FMAs in the same
        /// order (position by position, from the value in `out`).
        ///
        /// # Safety
        /// AVX2, FMA and F16C are present; `w.len() == G * n`, `out.len() == G * hd` and `rows`
        /// holds `(n - 1) * stride + hd` elements.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn axpys_heads_avx2<E: Lanes, const G: usize, const C: usize>(
            w: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            let (n, hd) = (w.len() / G, out.len() / G);
            let full = hd / 8 * 8;
            let mut p0 = 0;
            while p0 < n {
                let p1 = (p0 + MIX_BLOCK).min(n);
                let mut i = 0;
                // Pass k over a block prefetches line k of each of the next block's rows (a
                // row of 128 f16 spans 4-5 lines; the block takes 128 / 8C passes), so that
                // the requests are spread over the block's time.
                let mut pass = 0;
                while i + 8 * C <= full {
                    // SAFETY: the caller's promises; i + 8C <= hd.
                    unsafe { mix_pass::<E, G, C>(w, rows, stride, out, i, p0..p1, pass) };
                    i += 8 * C;
                    pass += 1;
                }
                while i < full {
                    // SAFETY: as above, i + 8 <= hd.
                    unsafe { mix_pass::<E, G, 1>(w, rows, stride, out, i, p0..p1, pass) };
                    i += 8;
                    pass += 1;
                }
                p0 = p1;
            }
            for h in 0..G {
                for p in 0..n {
                    let row = &rows[p * stride..p * stride + hd];
                    for k in full..hd {
                        out[h * hd + k] += w[h * n + p] * row[k].widen();
                    }
                }
            }
        }

        /// Dims `i..i + 8 CC` of every head's output over positions `ps`.
        ///
        /// # Safety
        /// As [`axpys_heads_avx2`], and `i + 8 CC <= hd`.
        #[inline(always)]
        unsafe fn mix_pass<E: Lanes, const G: usize, const CC: usize>(
            w: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
            i: usize,
            ps: std::ops::Range<usize>,
            line: usize,
        ) {
            let (n, hd) = (w.len() / G, out.len() / G);
            let op = out.as_mut_ptr();
            // SAFETY (every block): the caller's bounds; AVX2, FMA and F16C.
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); CC]; G];
                for (h, acc) in acc.iter_mut().enumerate() {
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_loadu_ps(op.add(h * hd + i + 8 * c));
                    }
                }
                let lines = row_lines::<E>(hd);
                for p in ps {
                    if line < lines {
                        prefetch_line(rows, (p + MIX_BLOCK) * stride, hd, line);
                    }
                    let vp = rows.as_ptr().add(p * stride + i);
                    let mut v = [_mm256_setzero_ps(); CC];
                    for (c, v) in v.iter_mut().enumerate() {
                        *v = E::load8(vp.add(8 * c));
                    }
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_ps(*w.get_unchecked(h * n + p));
                        for (a, v) in acc.iter_mut().zip(&v) {
                            *a = _mm256_fmadd_ps(wv, *v, *a);
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    for (c, a) in acc.iter().enumerate() {
                        _mm256_storeu_ps(op.add(h * hd + i + 8 * c), *a);
                    }
                }
            }
        }

        /// # Safety
        /// AVX2, FMA and F16C are present; `rows` holds `(w.len() - 1) * stride + out.len()`
        /// elements.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn axpys_avx2<E: Lanes>(
            w: &[f32],
            rows: &[E],
            stride: usize,
            out: &mut [f32],
        ) {
            let n = out.len();
            let full = n / 8 * 8;
            for (p, &wp) in w.iter().enumerate() {
                let row = &rows[p * stride..p * stride + n];
                let (kp, op) = (row.as_ptr(), out.as_mut_ptr());
                let wv = _mm256_set1_ps(wp);
                let mut i = 0;
                while i < full {
                    // SAFETY: i + 8 <= n for both row and out.
                    unsafe {
                        let o =
                            _mm256_fmadd_ps(wv, E::load8(kp.add(i)), _mm256_loadu_ps(op.add(i)));
                        _mm256_storeu_ps(op.add(i), o);
                    }
                    i += 8;
                }
                for k in full..n {
                    out[k] += wp * row[k].widen();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (xorshift), so failures reproduce.
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn store(kv: KvType, x: &[f32], kv_dim: usize, head_dim: usize) -> Store {
        let mut s = Store::new(kv);
        s.write(0, x, kv_dim, head_dim);
        s
    }

    /// Exact attention of one head in f64 over f32 keys and values.
    fn attend_f64(q: &[f32], k: &[f32], v: &[f32], head: usize, kv_dim: usize) -> Vec<f64> {
        let hd = q.len();
        let n = k.len() / kv_dim;
        let row = |m: &[f32], p: usize| m[p * kv_dim + head * hd..][..hd].to_vec();
        let s: Vec<f64> = (0..n)
            .map(|p| {
                let kp = row(k, p);
                q.iter()
                    .zip(&kp)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut out = vec![0.0f64; hd];
        for (p, w) in e.iter().enumerate() {
            for (o, x) in out.iter_mut().zip(row(v, p)) {
                *o += w / z * x as f64;
            }
        }
        out
    }

    fn attend(kv: KvType, q: &[f32], k: &[f32], v: &[f32], head: usize, kv_dim: usize) -> Vec<f32> {
        let hd = q.len();
        let (ks, vs) = (store(kv, k, kv_dim, hd), store(kv, v, kv_dim, hd));
        let mut w = vec![0.0f32; k.len() / kv_dim];
        ks.view()
            .scores(q, head, kv_dim, (hd as f32).powf(-0.5), &mut w);
        bitnet_core::ops::softmax(&mut w);
        let mut out = vec![0.0f32; hd];
        vs.view().mix(&mut w, head, kv_dim, &mut out);
        out
    }

    /// Every instruction-set path this CPU has gives the portable path's results (to rounding).
    #[test]
    fn every_vector_path_agrees_with_the_portable_one() {
        fn check<E: simd::x86::Lanes + std::fmt::Debug>(conv: fn(f32) -> E) {
            for hd in [1, 5, 8, 9, 16, 23, 32, 47, 64, 128, 200, 300] {
                let (stride, n) = (3 * hd + 1, 9);
                let rows: Vec<E> = noise(n * stride, hd as u64).into_iter().map(conv).collect();
                let q = noise(hd, 5);
                let w = noise(n, 6);
                let mut want = vec![0.0f32; n];
                simd::dots_portable(&q, &rows, stride, &mut want);
                let mut want_mix = vec![0.0f32; hd];
                simd::axpys_portable(&w, &rows, stride, &mut want_mix);
                let close = |a: &[f32], b: &[f32]| {
                    a.iter()
                        .zip(b)
                        .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
                };
                let mut got = vec![0.0f32; n];
                let mut mix = vec![0.0f32; hd];
                simd::dots(&q, &rows, stride, &mut got);
                simd::axpys(&w, &rows, stride, &mut mix);
                assert!(
                    close(&got, &want) && close(&mix, &want_mix),
                    "dispatched, hd {hd}"
                );
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    got.fill(0.0);
                    mix.fill(0.0);
                    // SAFETY: the features were detected just above; the sizes fit.
                    unsafe {
                        simd::x86::dots_avx2(&q, &rows, stride, &mut got);
                        simd::x86::axpys_avx2(&w, &rows, stride, &mut mix);
                    }
                    assert!(
                        close(&got, &want) && close(&mix, &want_mix),
                        "avx2, hd {hd}"
                    );
                }
            }
        }
        check::<f32>(|x| x);
        check::<f16>(f16::from_f32);
        check::<i8>(|x| (x * 127.0) as i8);
    }

    /// Two and four heads at once give each head exactly what it gets alone (through the
    /// dispatch, which takes the AVX-512 or AVX2 kernels where the CPU has them, and the AVX2
    /// ones also directly on a CPU with both), for head sizes with and without 8- and 16-lane
    /// tails and position counts across the mix's 64-position blocks.
    #[test]
    fn heads_together_equal_heads_alone_bit_for_bit() {
        fn check<E: simd::x86::Lanes + std::fmt::Debug>(conv: fn(f32) -> E) {
            for hd in [8, 9, 16, 23, 64, 100, 128] {
                for n in [1, 7, 64, 65, 200] {
                    let stride = 3 * hd + 5;
                    let rows: Vec<E> = noise(n * stride, (hd * n) as u64)
                        .into_iter()
                        .map(conv)
                        .collect();
                    for g in [1, 2, 3, 4] {
                        let q = noise(g * hd, 7);
                        let w = noise(g * n, 8);
                        let (mut alone, mut mix_alone) =
                            (vec![0.0f32; g * n], vec![0.0f32; g * hd]);
                        for h in 0..g {
                            let o = &mut alone[h * n..(h + 1) * n];
                            simd::dots(&q[h * hd..(h + 1) * hd], &rows, stride, o);
                            let o = &mut mix_alone[h * hd..(h + 1) * hd];
                            simd::axpys(&w[h * n..(h + 1) * n], &rows, stride, o);
                        }
                        let (mut got, mut mix) = (vec![0.0f32; g * n], vec![0.0f32; g * hd]);
                        simd::dots_heads(&q, g, &rows, stride, &mut got);
                        simd::axpys_heads(&w, g, &rows, stride, &mut mix);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&alone), "scores: hd {hd}, n {n}, g {g}");
                        assert_eq!(bits(&mix), bits(&mix_alone), "mix: hd {hd}, n {n}, g {g}");
                        // The AVX2 kernels too where the dispatch took the AVX-512 ones.
                        #[cfg(target_arch = "x86_64")]
                        if g % 2 == 0
                            && std::arch::is_x86_feature_detected!("avx512f")
                            && std::arch::is_x86_feature_detected!("avx2")
                            && std::arch::is_x86_feature_detected!("fma")
                            && std::arch::is_x86_feature_detected!("f16c")
                        {
                            let (mut alone, mut mix_alone) =
                                (vec![0.0f32; g * n], vec![0.0f32; g * hd]);
                            let (mut got, mut mix) = (vec![0.0f32; g * n], vec![0.0f32; g * hd]);
                            // SAFETY: the features were detected just above; the sizes fit.
                            unsafe {
                                for h in 0..g {
                                    let (qh, wh) =
                                        (&q[h * hd..(h + 1) * hd], &w[h * n..(h + 1) * n]);
                                    let o = &mut alone[h * n..(h + 1) * n];
                                    simd::x86::dots_avx2(qh, &rows, stride, o);
                                    let o = &mut mix_alone[h * hd..(h + 1) * hd];
                                    simd::x86::axpys_avx2(wh, &rows, stride, o);
                                }
                                if g == 2 {
                                    simd::x86::dots_heads_avx2::<E, 2>(&q, &rows, stride, &mut got);
                                    simd::x86::axpys_heads_avx2::<E, 2, 4>(
                                        &w, &rows, stride, &mut mix,
                                    );
                                } else {
                                    simd::x86::dots_heads_avx2::<E, 4>(&q, &rows, stride, &mut got);
                                    simd::x86::axpys_heads_avx2::<E, 4, 2>(
                                        &w, &rows, stride, &mut mix,
                                    );
                                }
                            }
                            assert_eq!(
                                bits(&got),
                                bits(&alone),
                                "avx2 scores: hd {hd}, n {n}, g {g}"
                            );
                            assert_eq!(
                                bits(&mix),
                                bits(&mix_alone),
                                "avx2 mix: hd {hd}, n {n}, g {g}"
                            );
                        }
                    }
                }
            }
        }
        check::<f32>(|x| x);
        check::<f16>(f16::from_f32);
        check::<i8>(|x| (x * 127.0) as i8);
    }

    /// A view's scores and mixes of a group of query heads equal each head's alone, bit for bit,
    /// for every cache type (q8's scales applied per position as for one head).
    #[test]
    fn views_score_and_mix_heads_as_heads_alone() {
        let (hd, n_kv, n) = (64, 3, 70);
        let kv_dim = hd * n_kv;
        let (k, v) = (noise(n * kv_dim, 11), noise(n * kv_dim, 12));
        for kv in KvType::ALL {
            let (ks, vs) = (store(kv, &k, kv_dim, hd), store(kv, &v, kv_dim, hd));
            for g in [2, 4] {
                for head in 0..n_kv {
                    let q = noise(g * hd, 13);
                    let w = noise(g * n, 14);
                    let (mut alone, mut mix_alone) = (vec![0.0f32; g * n], vec![0.0f32; g * hd]);
                    let mut w_alone = w.clone();
                    for h in 0..g {
                        let o = &mut alone[h * n..(h + 1) * n];
                        ks.view()
                            .scores(&q[h * hd..(h + 1) * hd], head, kv_dim, 0.125, o);
                        let o = &mut mix_alone[h * hd..(h + 1) * hd];
                        vs.view()
                            .mix(&mut w_alone[h * n..(h + 1) * n], head, kv_dim, o);
                    }
                    let (mut got, mut mix) = (vec![0.0f32; g * n], vec![1.0f32; g * hd]);
                    let mut w_got = w.clone();
                    ks.view().scores_heads(&q, g, head, kv_dim, 0.125, &mut got);
                    vs.view().mix_heads(&mut w_got, g, head, kv_dim, &mut mix);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&alone), "{kv}: scores, g {g}, head {head}");
                    assert_eq!(
                        bits(&mix),
                        bits(&mix_alone),
                        "{kv}: mix, g {g}, head {head}"
                    );
                }
            }
        }
    }

    /// The AVX-512 mix keeps its accumulators in registers but gives every lane the same fused
    /// multiply-adds in the same order as a lane-by-lane sequence (and the tail past the last
    /// 16 lanes a plain multiply and add): bit for bit, over one and several 128-lane chunks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_mix_is_a_sequence_of_fmas_per_lane() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no AVX-512F");
            return;
        }
        for hd in [16, 40, 128, 136, 300] {
            let (stride, n) = (hd + 3, 11);
            let rows = noise(n * stride, hd as u64);
            let w = noise(n, 7);
            let mut want = noise(hd, 8);
            let mut got = want.clone();
            let full = hd / 16 * 16;
            for (p, &wp) in w.iter().enumerate() {
                for (k, o) in want.iter_mut().enumerate() {
                    let v = rows[p * stride + k];
                    *o = if k < full {
                        wp.mul_add(v, *o)
                    } else {
                        *o + wp * v
                    };
                }
            }
            // SAFETY: AVX-512F was detected; every row holds hd lanes.
            unsafe { simd::x86::axpys_avx512(&w, &rows, stride, &mut got) };
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "hd {hd}");
        }
    }

    #[test]
    fn names_round_trip() {
        for t in KvType::ALL {
            assert_eq!(t.to_string().parse::<KvType>(), Ok(t));
        }
        assert!(
            "bf16"
                .parse::<KvType>()
                .unwrap_err()
                .contains("f32, f16 or q8")
        );
        assert_eq!(KvType::default(), KvType::F16);
    }

    #[test]
    fn q8_rounds_ties_to_even_and_keeps_absmax() {
        let mut codes = [0i8; 6];
        let s = quantize_q8(&[127.0, 0.5, 1.5, -2.5, -127.0, 3.49], &mut codes);
        assert_eq!(s, 1.0);
        assert_eq!(codes, [127, 0, 2, -2, -127, 3]);
        let s = quantize_q8(&[0.0; 6], &mut codes);
        assert_eq!((s, codes), (0.0, [0; 6]));
    }

    #[test]
    fn stores_hold_exactly_what_each_type_defines() {
        let (hd, kv_dim, n) = (24, 72, 5);
        let x = noise(n * kv_dim, 1);
        let f16s = store(KvType::F16, &x, kv_dim, hd);
        let KvView::F16(h) = f16s.view() else {
            unreachable!()
        };
        let want: Vec<f16> = x.iter().map(|&e| f16::from_f32(e)).collect();
        assert_eq!(h, &want[..]);
        let s = store(KvType::Q8, &x, kv_dim, hd);
        let KvView::Q8 { codes, scales } = s.view() else {
            unreachable!()
        };
        for (i, v) in x.chunks_exact(hd).enumerate() {
            let absmax = v.iter().fold(0.0f32, |m, e| m.max(e.abs()));
            let scale = absmax / 127.0;
            assert_eq!(scales[i], scale);
            for (j, &e) in v.iter().enumerate() {
                assert_eq!(codes[i * hd + j], (e / scale).round_ties_even() as i8);
            }
        }
        assert_eq!(s.bytes(), n * kv_dim + n * 3 * 4);
        // Rewriting from a position replaces it and forgets the rest.
        let mut s = s;
        s.write(2, &x[..kv_dim], kv_dim, hd);
        let KvView::Q8 { codes, scales } = s.view() else {
            unreachable!()
        };
        assert_eq!((codes.len(), scales.len()), (3 * kv_dim, 9));
        assert_eq!(&codes[2 * kv_dim..], &codes[..kv_dim]);
    }

    /// The vector loops against plain f64 sums, for every type, odd sizes and tails included.
    #[test]
    fn dots_and_mixes_match_f64_sums() {
        for hd in [1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 128] {
            let (n_kv, n) = (3, 11);
            let kv_dim = n_kv * hd;
            let x = noise(n * kv_dim, hd as u64);
            let q = noise(hd, 99);
            let w: Vec<f32> = noise(n, 7).iter().map(|v| v.abs()).collect();
            for kv in KvType::ALL {
                let s = store(kv, &x, kv_dim, hd);
                // What the store holds, widened exactly.
                let held: Vec<f64> = match s.view() {
                    KvView::F32(v) => v.iter().map(|&e| e as f64).collect(),
                    KvView::F16(v) => v.iter().map(|e| e.to_f64()).collect(),
                    KvView::Q8 { codes, scales } => codes
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| c as f64 * scales[i / hd] as f64)
                        .collect(),
                };
                let head = 2;
                let row = |p: usize| &held[p * kv_dim + head * hd..][..hd];
                let mut scores = vec![0.0f32; n];
                s.view().scores(&q, head, kv_dim, 0.5, &mut scores);
                for (p, &got) in scores.iter().enumerate() {
                    let want: f64 = 0.5
                        * q.iter()
                            .zip(row(p))
                            .map(|(&a, b)| a as f64 * b)
                            .sum::<f64>();
                    assert!((got as f64 - want).abs() < 1e-5, "{kv} hd {hd} score {p}");
                }
                let mut out = vec![f32::NAN; hd];
                let mut ww = w.clone();
                s.view().mix(&mut ww, head, kv_dim, &mut out);
                for (i, &got) in out.iter().enumerate() {
                    let want: f64 = (0..n).map(|p| w[p] as f64 * row(p)[i]).sum();
                    assert!((got as f64 - want).abs() < 1e-5, "{kv} hd {hd} mix {i}");
                }
            }
        }
    }

    /// Attention over random keys and values: f16 within its per-element error of the exact
    /// result, q8 within the bound documented on [`KvType::Q8`].
    #[test]
    fn attention_error_stays_within_each_types_bound() {
        let (hd, n_kv, n) = (128, 2, 300);
        let kv_dim = n_kv * hd;
        for seed in 0..4 {
            // Keys scaled so that the scores spread over several units, like a trained model's.
            let k: Vec<f32> = noise(n * kv_dim, 10 + seed)
                .iter()
                .map(|x| 3.0 * x)
                .collect();
            let v = noise(n * kv_dim, 20 + seed);
            let q = noise(hd, 30 + seed);
            let head = 1;
            let exact = attend_f64(&q, &k, &v, head, kv_dim);
            let err = |kv| {
                let got = attend(kv, &q, &k, &v, head, kv_dim);
                got.iter()
                    .zip(&exact)
                    .map(|(&a, b)| (a as f64 - b).abs())
                    .fold(0.0, f64::max)
            };
            assert!(err(KvType::F32) < 1e-6);
            // Measured 3e-5 to 5e-5 (outputs of about 0.03).
            assert!(err(KvType::F16) < 2e-4, "f16: {}", err(KvType::F16));
            // q8: value error <= max s_v / 2; score error <= sum|q| * max s_k / 2 / sqrt(hd),
            // which moves each weight by a factor exp(+-2 * that), bounded on |v| <= 1.
            let q1: f64 = q.iter().map(|x| x.abs() as f64).sum();
            let s_k = 3.0 / 127.0;
            let s_v = 1.0 / 127.0;
            let score_err = q1 * s_k / 2.0 / (hd as f64).sqrt();
            let bound = s_v / 2.0 + ((2.0 * score_err).exp() - 1.0);
            let e = err(KvType::Q8);
            assert!(e < bound, "q8: {e} vs bound {bound}");
            // Rounding errors of many positions mostly cancel: measured 6e-4 to 1e-3, under
            // the value part of the bound alone.
            assert!(e < s_v / 2.0, "q8: {e}");
        }
    }
}

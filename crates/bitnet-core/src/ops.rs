//! Float operators of the BitNet forward pass (RMSNorm, rotary embeddings, softmax, activations)
//! and float matrices for embeddings and heads. Written to follow the reference's f32 arithmetic
//! closely, because a one-ulp difference ahead of the int8 quantizer can flip a code.

use half::{bf16, f16};

/// `out = w * x / sqrt(mean(x^2) + eps)`, in f32 as the reference does.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), weight.len());
    debug_assert_eq!(x.len(), out.len());
    let inv = inv_rms(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// [`rmsnorm`] of `x` in place: the same arithmetic, so the same values bit for bit.
pub fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), weight.len());
    let inv = inv_rms(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = w * (*v * inv);
    }
}

/// `1 / sqrt(mean(x^2) + eps)`, the factor both forms of [`rmsnorm`] apply.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0f32 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt()
}

/// Lanes of [`sum_of_squares`].
const LANES: usize = 16;

/// `sum(x^2)` in a fixed order that vectorizes: lane `j` adds elements `j, j + 16, ...`, the 16
/// lanes are added pairwise (8 + 8, 4 + 4, ...), then the tail in order. The reference's own
/// order is its library's (PyTorch reduces in vector lanes too); a strictly left-to-right sum was
/// a chain of dependent adds (~2.5 us per 2,560-wide row, ~7 ms of a batch-16 decode step).
fn sum_of_squares(x: &[f32]) -> f32 {
    let (chunks, tail) = x.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        let (lo, hi) = acc.split_at_mut(width);
        for (a, b) in lo.iter_mut().zip(&*hi) {
            *a += b;
        }
    }
    tail.iter().fold(acc[0], |s, v| s + v * v)
}

/// Squared ReLU, BitNet b1.58's FFN activation.
pub fn relu2(x: f32) -> f32 {
    let r = x.max(0.0);
    r * r
}

/// SiLU, the activation of llama-style ternary models.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// In-place softmax over `x`, in f32.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = exp_or_zero(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `x.exp()`, bit for bit, without the C library's underflow path below -104 (glibc's `expf`
/// calls its error handler there, which sets `errno`: ~3% of a 512-token prefill of the synthetic
/// 2B4T model went to it, whose attention scores span hundreds). e^-104 is less than half the
/// smallest subnormal, so `exp` rounds it to +0 as well.
#[inline]
pub fn exp_or_zero(x: f32) -> f32 {
    if x < -104.0 { 0.0 } else { x.exp() }
}

/// Precomputed half-split (NEOX-style) rotary embedding tables.
#[derive(Clone, Debug)]
pub struct Rope {
    half: usize,
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `inv_freq[i] = 1 / theta^(2i / dim)` in f32, as the reference computes it.
    pub fn new(head_dim: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Self { half, inv_freq }
    }

    /// `(sin, cos)` of frequency `i`'s angle at position `pos`, as [`Rope::apply`] uses them.
    pub fn sin_cos(&self, pos: usize, i: usize) -> (f32, f32) {
        (pos as f32 * self.inv_freq[i]).sin_cos()
    }

    /// Rotates one head vector (length `2 * half`) in place for position `pos`: the two halves are
    /// rotated against each other, `(x1, x2) -> (x1 c - x2 s, x2 c + x1 s)`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        self.apply_heads(x, pos);
    }

    /// [`Rope::apply`] to every head vector of `x` (consecutive vectors of length `2 * half`,
    /// e.g. all query heads of one token), computing each angle's sine and cosine once for all
    /// of them (perf: `sincosf` per head and frequency was ~0.6% of a batch-16 step).
    pub fn apply_heads(&self, x: &mut [f32], pos: usize) {
        const MAX_HALF: usize = 256;
        let dim = 2 * self.half;
        if self.half == 0 || self.half > MAX_HALF {
            for v in x.chunks_exact_mut(dim.max(1)) {
                self.rotate(v, (0..self.half).map(|i| self.sin_cos(pos, i)));
            }
            return;
        }
        let mut sc = [(0.0f32, 0.0f32); MAX_HALF];
        for (i, v) in sc[..self.half].iter_mut().enumerate() {
            *v = self.sin_cos(pos, i);
        }
        for v in x.chunks_exact_mut(dim) {
            self.rotate(v, sc[..self.half].iter().copied());
        }
    }

    /// `(x1, x2) -> (x1 c - x2 s, x2 c + x1 s)` for the halves of one head vector.
    fn rotate(&self, x: &mut [f32], sin_cos: impl Iterator<Item = (f32, f32)>) {
        let (lo, hi) = x.split_at_mut(self.half);
        for ((x1, x2), (s, c)) in lo.iter_mut().zip(hi).zip(sin_cos) {
            let (a, b) = (*x1, *x2);
            *x1 = a * c - b * s;
            *x2 = b * c + a * s;
        }
    }
}

/// Where a row of a float matrix comes from when it is not a plain f32/f16/bf16 array (for
/// example a Q6_K or Q8_0 head decoded row by row).
pub trait RowDecoder: Send + Sync {
    /// Writes row `r` (length = columns) into `out` as f32.
    fn decode_row(&self, r: usize, out: &mut [f32]);
    /// Human-readable storage type, for reports.
    fn type_name(&self) -> &'static str;
    /// Bytes the whole matrix occupies in its storage (what a full pass reads).
    fn storage_bytes(&self) -> usize;
    /// Dot products of rows `first..first + out.len() / m` with `m` vectors `xs` (`m x cols`,
    /// row-major): `out[i * m + j] = row_(first + i) . xs_j`, the layout of
    /// [`FloatMatrix::matmul_rows`]. Each product must depend only on its row and its vector
    /// (so batching and row splits never change a logit).
    ///
    /// The default decodes each row to f32 and uses [`dot`]; block-quantized formats override it
    /// to work on their blocks directly.
    fn dot_rows(&self, first: usize, xs: &[f32], m: usize, out: &mut [f32]) {
        decoded_dot_rows(self, first, xs, m, out);
    }
}

/// [`RowDecoder::dot_rows`] by decoding: each row goes through a per-thread f32 buffer and
/// [`dot`] (the default, and the fallback of decoders that override it for some formats).
pub fn decoded_dot_rows<D: RowDecoder + ?Sized>(
    d: &D,
    first: usize,
    xs: &[f32],
    m: usize,
    out: &mut [f32],
) {
    thread_local! {
        static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if m == 0 {
        return;
    }
    let cols = xs.len() / m;
    ROW.with_borrow_mut(|buf| {
        buf.resize(cols, 0.0);
        for (i, o) in out.chunks_exact_mut(m).enumerate() {
            d.decode_row(first + i, buf);
            for (y, x) in o.iter_mut().zip(xs.chunks_exact(cols)) {
                *y = dot(buf, x);
            }
        }
    });
}

/// f16 values that live elsewhere (a memory-mapped model file), borrowed per use so that the
/// largest tensor of a model is never copied.
pub trait F16Source: Send + Sync {
    /// All values, row-major.
    fn f16s(&self) -> &[f16];
}

/// Storage of a float matrix.
pub enum FloatStorage {
    /// f32 values.
    F32(Vec<f32>),
    /// IEEE half values.
    F16(Vec<f16>),
    /// IEEE half values held elsewhere (zero-copy from a mapped file).
    F16Mapped(Box<dyn F16Source>),
    /// bfloat16 values.
    BF16(Vec<bf16>),
    /// Rows decoded on demand (block-quantized formats).
    Rows(Box<dyn RowDecoder>),
}

/// A row-major float matrix `[rows, cols]`: the token embedding and the output head.
pub struct FloatMatrix {
    rows: usize,
    cols: usize,
    storage: FloatStorage,
}

impl std::fmt::Debug for FloatMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FloatMatrix[{}x{} {}]",
            self.rows,
            self.cols,
            self.type_name()
        )
    }
}

impl FloatMatrix {
    /// Wraps storage, checking its length against the shape (row decoders are trusted).
    pub fn new(rows: usize, cols: usize, storage: FloatStorage) -> Result<Self, crate::CoreError> {
        let expected = rows.saturating_mul(cols);
        let found = match &storage {
            FloatStorage::F32(v) => v.len(),
            FloatStorage::F16(v) => v.len(),
            FloatStorage::F16Mapped(v) => v.f16s().len(),
            FloatStorage::BF16(v) => v.len(),
            FloatStorage::Rows(_) => expected,
        };
        if found != expected {
            return Err(crate::CoreError::Length {
                what: "float matrix".into(),
                expected,
                found,
            });
        }
        Ok(Self {
            rows,
            cols,
            storage,
        })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values as stored (for backends that upload them).
    pub fn storage(&self) -> &FloatStorage {
        &self.storage
    }

    /// Storage type name (`f32`, `f16`, `bf16`, or the decoder's).
    pub fn type_name(&self) -> &'static str {
        match &self.storage {
            FloatStorage::F32(_) => "f32",
            FloatStorage::F16(_) | FloatStorage::F16Mapped(_) => "f16",
            FloatStorage::BF16(_) => "bf16",
            FloatStorage::Rows(d) => d.type_name(),
        }
    }

    /// Bytes the storage occupies: what one pass of the head reads.
    pub fn storage_bytes(&self) -> usize {
        match &self.storage {
            FloatStorage::F32(v) => v.len() * 4,
            FloatStorage::F16(v) => v.len() * 2,
            FloatStorage::F16Mapped(v) => v.f16s().len() * 2,
            FloatStorage::BF16(v) => v.len() * 2,
            FloatStorage::Rows(d) => d.storage_bytes(),
        }
    }

    /// Copies row `r` into `out` as f32.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.storage {
            FloatStorage::F32(v) => out.copy_from_slice(&v[range]),
            FloatStorage::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[range]) {
                    *o = h.to_f32();
                }
            }
            FloatStorage::F16Mapped(v) => {
                for (o, h) in out.iter_mut().zip(&v.f16s()[range]) {
                    *o = h.to_f32();
                }
            }
            FloatStorage::BF16(v) => {
                for (o, h) in out.iter_mut().zip(&v[range]) {
                    *o = h.to_f32();
                }
            }
            FloatStorage::Rows(d) => d.decode_row(r, out),
        }
    }

    /// `out[i] = row_(first + i) . x` for a range of rows; f16/bf16 rows convert on the fly,
    /// block-quantized rows go through [`RowDecoder::dot_rows`].
    pub fn matvec_rows(&self, x: &[f32], first: usize, out: &mut [f32]) {
        let cols = self.cols;
        let rows = first..first + out.len();
        match &self.storage {
            FloatStorage::F32(v) => {
                for (r, o) in rows.zip(out.iter_mut()) {
                    *o = crate::simd::dot_f32(&v[r * cols..(r + 1) * cols], x);
                }
            }
            FloatStorage::F16(v) => {
                for (r, o) in rows.zip(out.iter_mut()) {
                    *o = crate::simd::dot_f16(&v[r * cols..(r + 1) * cols], x);
                }
            }
            FloatStorage::F16Mapped(v) => {
                let v = v.f16s();
                for (r, o) in rows.zip(out.iter_mut()) {
                    *o = crate::simd::dot_f16(&v[r * cols..(r + 1) * cols], x);
                }
            }
            FloatStorage::BF16(v) => {
                for (r, o) in rows.zip(out.iter_mut()) {
                    *o = dot_with(&v[r * cols..(r + 1) * cols], x, |h| h.to_f32());
                }
            }
            FloatStorage::Rows(d) => d.dot_rows(first, &x[..cols], 1, out),
        }
    }

    /// Several vectors at once: `out[i * m + j] = row_(first + i) . xs_j` for `m` vectors `xs`
    /// (`m x cols`, row-major). Each row is read once for all vectors, and each product is
    /// computed exactly as [`FloatMatrix::matvec_rows`] computes it, so batching never changes
    /// a logit.
    pub fn matmul_rows(&self, xs: &[f32], m: usize, first: usize, out: &mut [f32]) {
        let cols = self.cols;
        if m == 1 {
            return self.matvec_rows(xs, first, out);
        }
        let n_rows = out.len() / m.max(1);
        let rows = first..first + n_rows;
        let xs_of = |j: usize| &xs[j * cols..(j + 1) * cols];
        match &self.storage {
            FloatStorage::F32(v) => {
                for (r, o) in rows.zip(out.chunks_exact_mut(m)) {
                    let row = &v[r * cols..(r + 1) * cols];
                    for (j, y) in o.iter_mut().enumerate() {
                        *y = crate::simd::dot_f32(row, xs_of(j));
                    }
                }
            }
            FloatStorage::F16(_) | FloatStorage::F16Mapped(_) => {
                let v: &[f16] = match &self.storage {
                    FloatStorage::F16(v) => v,
                    FloatStorage::F16Mapped(v) => v.f16s(),
                    _ => &[],
                };
                crate::simd::dots_f16(
                    &v[rows.start * cols..rows.end * cols],
                    cols,
                    &xs[..m * cols],
                    m,
                    out,
                );
            }
            FloatStorage::BF16(v) => {
                for (r, o) in rows.zip(out.chunks_exact_mut(m)) {
                    let row = &v[r * cols..(r + 1) * cols];
                    for (j, y) in o.iter_mut().enumerate() {
                        *y = dot_with(row, xs_of(j), |h| h.to_f32());
                    }
                }
            }
            FloatStorage::Rows(d) => d.dot_rows(first, &xs[..m * cols], m, &mut out[..n_rows * m]),
        }
    }

    /// `out[r] = row_r . x` for every row: the float (unquantized) output head.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols);
        debug_assert_eq!(out.len(), self.rows);
        self.matvec_rows(x, 0, out);
    }
}

/// Like [`dot`], converting `a`'s elements on the fly (same summation order, so results equal
/// converting first).
pub(crate) fn dot_with<T: Copy>(a: &[T], b: &[f32], conv: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += conv(a[c * 8 + l]) * b[c * 8 + l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..a.len() {
        tail += conv(a[i]) * b[i];
    }
    acc.iter().sum::<f32>() + tail
}

/// f32 dot product with eight partial sums (vectorizes and stays close to a pairwise sum).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |v| v)
}

/// The index of the first largest of `values`, as a plain scan from index 0 keeps it: a later
/// value wins only when it is greater, so the first of equal values stays (and a NaN at index 0
/// is never replaced, while later NaNs never win). The greedy choice of a logit row; 0 when
/// there are no values.
pub fn first_argmax(values: impl IntoIterator<Item = f32>) -> usize {
    let mut values = values.into_iter();
    let Some(mut top) = values.next() else {
        return 0;
    };
    let mut best = 0;
    for (i, v) in values.enumerate() {
        if v > top {
            (best, top) = (i + 1, v);
        }
    }
    best
}

/// The `k` largest logits of `logits` with their ids, best first: ordered by value
/// (`f32::total_cmp`, descending), ties to the lower id; NaNs are never candidates. Written into
/// `out` (cleared first); fewer than `k` only when fewer non-NaN logits exist. This is the
/// candidate list every sampler starts from, on the host and (computed there) on a device.
pub fn top_k(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    out.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
    top_k_in_place(k, out);
}

/// [`top_k`] over `(id, logit)` pairs (any order, distinct ids): the `k` best of them, in
/// [`top_k`]'s order, written into `out` (cleared first).
pub fn top_k_pairs(pairs: &[(u32, f32)], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    out.extend_from_slice(pairs);
    top_k_in_place(k, out);
}

/// Keeps the `k` best non-NaN pairs of `out`, sorted best first.
fn top_k_in_place(k: usize, out: &mut Vec<(u32, f32)>) {
    out.retain(|(_, l)| !l.is_nan());
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < out.len() {
        if k == 0 {
            out.clear();
            return;
        }
        out.select_nth_unstable_by(k - 1, better);
        out.truncate(k);
    }
    out.sort_unstable_by(better);
}

/// Appends to `out` the [`top_k`] candidates of every `vocab`-wide row of `logits`, `k` per
/// row: a row with fewer non-NaN logits is padded with `(0, NaN)`.
pub fn top_k_rows(logits: &[f32], vocab: usize, k: usize, out: &mut Vec<(u32, f32)>) {
    let mut row_top = Vec::with_capacity(k);
    for row in logits.chunks_exact(vocab.max(1)) {
        top_k(row, k, &mut row_top);
        out.extend_from_slice(&row_top);
        out.extend(std::iter::repeat_n((0, f32::NAN), k - row_top.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_halves_against_each_other() {
        let rope = Rope::new(4, 10000.0);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope.apply(&mut x, 0);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        let mut y = [1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut y, 1);
        // pair (x[0], x[2]) rotates by angle 1 rad.
        assert!((y[0] - 1f32.cos()).abs() < 1e-7 && (y[2] - 1f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn rope_of_many_heads_is_each_head_rotated_alone() {
        for head_dim in [2usize, 64, 128] {
            let rope = Rope::new(head_dim, 500000.0);
            let x: Vec<f32> = (0..5 * head_dim)
                .map(|i| (i as f32 * 0.731).sin())
                .collect();
            for pos in [0usize, 1, 77, 4095] {
                let mut all = x.clone();
                rope.apply_heads(&mut all, pos);
                for (h, got) in all.chunks_exact(head_dim).enumerate() {
                    let v = &x[h * head_dim..(h + 1) * head_dim];
                    let half = head_dim / 2;
                    for i in 0..half {
                        let (s, c) = rope.sin_cos(pos, i);
                        let (x1, x2) = (v[i], v[i + half]);
                        assert_eq!(got[i].to_bits(), (x1 * c - x2 * s).to_bits());
                        assert_eq!(got[i + half].to_bits(), (x2 * c + x1 * s).to_bits());
                    }
                }
            }
        }
    }

    #[test]
    fn rmsnorm_matches_definition() {
        let mut out = [0.0; 2];
        rmsnorm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn sum_of_squares_covers_every_element_of_every_length() {
        for len in [0usize, 1, 2, 15, 16, 17, 31, 32, 33, 100, 2560, 6913] {
            // Distinct magnitudes, so a dropped or doubled element would show.
            let x: Vec<f32> = (0..len)
                .map(|i| (i as f32 + 1.0).sqrt() * if i % 3 == 0 { -1.0 } else { 1.0 })
                .collect();
            let want: f64 = (1..=len).map(|i| i as f64).sum();
            let got = f64::from(sum_of_squares(&x));
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "{len}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn exp_or_zero_is_exp_bit_for_bit() {
        // A grid over the whole range, then every f32 from -105 to -103 (where the guard bites).
        let grid = (0..135_000).map(|i| -130.0 + i as f32 * 1e-3);
        let edge = ((-103.0f32).to_bits()..=(-105.0f32).to_bits()).map(f32::from_bits);
        for x in grid.chain(edge) {
            assert_eq!(exp_or_zero(x).to_bits(), x.exp().to_bits(), "{x}");
        }
        for x in [f32::NEG_INFINITY, -104.0, -103.972, -87.0, 0.0] {
            assert_eq!(exp_or_zero(x).to_bits(), x.exp().to_bits(), "{x}");
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }

    #[test]
    fn float_matrix_types_agree() {
        let vals = [0.5f32, -1.25, 2.0, 3.0, 0.0, 1.0];
        let f32m = FloatMatrix::new(2, 3, FloatStorage::F32(vals.to_vec())).unwrap();
        let f16m = FloatMatrix::new(
            2,
            3,
            FloatStorage::F16(vals.iter().map(|&v| f16::from_f32(v)).collect()),
        )
        .unwrap();
        let (mut a, mut b) = ([0.0; 2], [0.0; 2]);
        f32m.matvec(&[1.0, 2.0, 3.0], &mut a);
        f16m.matvec(&[1.0, 2.0, 3.0], &mut b);
        assert_eq!(a, b);
        assert_eq!(a, [4.0, 6.0]);
        assert!(FloatMatrix::new(2, 2, FloatStorage::F32(vec![0.0; 3])).is_err());
    }

    /// Rows `r` of `i * 0.25 - r` for i in 0..cols, decoded on demand.
    struct Ramp(usize);

    impl RowDecoder for Ramp {
        fn decode_row(&self, r: usize, out: &mut [f32]) {
            for (i, o) in out.iter_mut().enumerate().take(self.0) {
                *o = i as f32 * 0.25 - r as f32;
            }
        }
        fn type_name(&self) -> &'static str {
            "ramp"
        }
        fn storage_bytes(&self) -> usize {
            0
        }
    }

    #[test]
    fn decoded_rows_use_the_default_dot_rows() {
        let (rows, cols, m) = (7, 37, 3);
        let mat = FloatMatrix::new(rows, cols, FloatStorage::Rows(Box::new(Ramp(cols)))).unwrap();
        let xs: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
            .collect();
        let mut all = vec![f32::NAN; (rows - 2) * m];
        mat.matmul_rows(&xs, m, 2, &mut all);
        let mut row = vec![0.0f32; cols];
        for r in 2..rows {
            mat.row_into(r, &mut row);
            for j in 0..m {
                let x = &xs[j * cols..(j + 1) * cols];
                let want = dot(&row, x);
                assert_eq!(all[(r - 2) * m + j], want);
                let mut one = [f32::NAN];
                mat.matvec_rows(x, r, &mut one);
                assert_eq!(one[0], want);
            }
        }
    }
    #[test]
    fn top_k_orders_by_value_then_id_and_skips_nan() {
        let logits = [1.0, f32::NAN, 3.0, 3.0, -0.0, 0.0, f32::NEG_INFINITY, 2.0];
        let mut out = Vec::new();
        top_k(&logits, 4, &mut out);
        assert_eq!(out, vec![(2, 3.0), (3, 3.0), (7, 2.0), (0, 1.0)]);
        top_k(&logits, 7, &mut out);
        let ids: Vec<u32> = out.iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![2, 3, 7, 0, 5, 4, 6]); // +0 above -0 (total order)
        top_k(&logits, 100, &mut out);
        assert_eq!(out.len(), 7);
        top_k(&logits, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn top_k_equals_a_full_sort_on_random_rows() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) % 64) as f32 / 8.0 // many ties
        };
        let row: Vec<f32> = (0..1000).map(|_| next()).collect();
        let mut full: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        full.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut out = Vec::new();
        for k in [1, 2, 40, 256, 999, 1000] {
            top_k(&row, k, &mut out);
            assert_eq!(out, full[..k]);
        }
    }
}

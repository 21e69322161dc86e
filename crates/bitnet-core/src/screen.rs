//! Choosing the output head's best rows exactly while reading about half of its bytes.
//!
//! Greedy decoding needs only the largest logit, and top-k sampling only the `k` largest, yet
//! the f16 head is the largest read of a decode step (656 MB of 2B4T's ~1.07 GB) and, at
//! batch 16, a third of the step's arithmetic. A [`HeadScreen`] keeps an int8 copy of the head
//! (one scale per row) and, per row, two norms that bound how far the int8 product of a row
//! can be from the float one. A selection then runs in two passes:
//!
//! 1. every row's approximate logit `a` from int8 codes (four times the products per
//!    instruction of the f16 head, half its bytes) and its rigorous error bound `e`, keeping
//!    per vector the `k`-th largest lower bound `tau = (a - e)_(k)`;
//! 2. the rows whose upper bound `a + e` reaches `tau` computed exactly, through the head's
//!    own [`FloatMatrix::matvec_rows`], and the choice made among them (greedy: 2 rows per
//!    step on the bundled trained model, ~150-180 of 128k on the synthetic 2B4T's flat logits;
//!    BENCHMARKS.md, session 34).
//!
//! A row outside the candidates has an exact logit below `tau`, and at least `k` rows have
//! exact logits at or above it, so it cannot be among the `k` best: the result equals
//! [`crate::ops::top_k`] over the full row (and the greedy token equals the first largest
//! logit), bit for bit, because the candidates' values are the head's own.
//!
//! The bound. With `w` a head row, `x` the vector, `w^ = s_w q_w` and `x^ = s_x q_x` their int8
//! approximations, `w.x - w^.x^ = w^.(x - x^) + (w - w^).x`, so by Cauchy-Schwarz
//! `|w.x - w^.x^| <= |w^| |x - x^| + |w - w^| |x|`. The exact kernels' own f32 rounding adds at
//! most `gamma_n |w| |x|` (`gamma_n = n u / (1 - n u)`, `u = 2^-24`, any summation order), and
//! the approximation's few f32 operations a few ulps of `|a|`; every norm is computed in f64 and
//! rounded up, and the total is widened by a relative margin that covers the f32 arithmetic
//! of the bound itself.

use crate::aligned::AlignedVec;
use crate::ops::{FloatMatrix, FloatStorage};
use crate::pool::ThreadPool;

/// Head rows per task of a selection's passes.
const ROWS_PER_TASK: usize = 2048;
/// Columns per step of the int8 kernels (one 64-byte vector); rows are padded to a multiple.
const LANE_BYTES: usize = 64;
/// `u`, the unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Per head row: its int8 scale, the sum of its codes (for the unsigned-activation kernel),
/// and the two bound factors, rounded up: `p = |w^|` and `q = |w - w^| + gamma_n |w|`.
#[derive(Clone, Copy, Debug, Default)]
struct RowMeta {
    scale: f32,
    code_sum: i32,
    p: f32,
    q: f32,
}

/// A candidate row: its id and exact logit.
type Pick = (u32, f32);

/// Which instructions compute the int8 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    /// Whether its kernels take the vectors' codes as unsigned bytes `q + 128`.
    fn offset(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Isa::Avx512Vnni {
            return true;
        }
        false
    }

    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return Isa::Avx512Vnni;
            }
            if has!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// An int8 copy of a float head with per-row error-bound factors; see the module docs.
pub struct HeadScreen {
    rows: usize,
    cols: usize,
    /// Bytes per row of `codes` (`cols` rounded up to 64; the padding is zero).
    stride: usize,
    codes: CodeBuf,
    meta: Vec<RowMeta>,
    isa: Isa,
}

/// The head's codes: on Linux an anonymous mapping advised for transparent huge pages (330 MB
/// for 2B4T, where 4 KB pages cost ~80k page faults at load and stream slower), else an
/// [`AlignedVec`]. Either starts zeroed and on a 64-byte boundary.
enum CodeBuf {
    #[cfg(target_os = "linux")]
    Map(memmap2::MmapMut),
    Vec(AlignedVec<i8>),
}

impl CodeBuf {
    fn zeroed(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if len >= 1 << 21
            && let Ok(map) = memmap2::MmapMut::map_anon(len)
        {
            // Only advice: without huge pages the mapping works as well.
            let _ = map.advise(memmap2::Advice::HugePage);
            return CodeBuf::Map(map);
        }
        let mut v = AlignedVec::new();
        v.resize(len, 0);
        CodeBuf::Vec(v)
    }
}

impl std::ops::Deref for CodeBuf {
    type Target = [i8];

    fn deref(&self) -> &[i8] {
        match self {
            #[cfg(target_os = "linux")]
            // SAFETY: the mapping holds `len` initialized bytes, and `i8` has `u8`'s layout.
            CodeBuf::Map(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().cast(), m.len()) },
            CodeBuf::Vec(v) => v,
        }
    }
}

impl std::ops::DerefMut for CodeBuf {
    fn deref_mut(&mut self) -> &mut [i8] {
        match self {
            #[cfg(target_os = "linux")]
            // SAFETY: as in `deref`; the exclusive borrow makes the slice unique.
            CodeBuf::Map(m) => unsafe {
                std::slice::from_raw_parts_mut(m.as_mut_ptr().cast(), m.len())
            },
            CodeBuf::Vec(v) => v,
        }
    }
}

impl std::fmt::Debug for HeadScreen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HeadScreen[{}x{} int8, {:?}]",
            self.rows, self.cols, self.isa
        )
    }
}

/// Buffers of [`HeadScreen`]'s selections, kept across steps.
#[derive(Default)]
pub struct ScreenScratch {
    /// The vectors' codes, `m x stride`.
    acts: AlignedVec<i8>,
    /// Per vector: dequantization factor, `|x - x^|`, `|x|` (rounded up); `None` when the
    /// vector is not finite or too large for the bound (it falls back to the full head).
    vecs: Vec<Option<(f32, f32, f32)>>,
    /// Approximate logits, `rows x m`.
    approx: Vec<f32>,
    /// Per task: its `k` largest lower bounds per vector, then its candidates.
    tasks: Vec<Task>,
    /// Per vector: the threshold `tau`.
    tau: Vec<f32>,
    /// One vector's lower bounds from every task, to find its `tau`.
    merged: Vec<f32>,
    /// One vector's candidates (id, exact logit), ascending ids.
    picked: Vec<(u32, f32)>,
    /// A full logit row, for vectors that fall back.
    full: Vec<f32>,
    /// Rows computed exactly in the last selection.
    exact: usize,
}

impl ScreenScratch {
    /// Rows computed exactly in the last selection, over all its vectors (a vector that fell
    /// back to the full head counts every row).
    pub fn exact_rows(&self) -> usize {
        self.exact
    }
}

#[derive(Default)]
struct Task {
    /// `m` lists of up to `k` lower bounds, each sorted descending (`k` slots per vector,
    /// `lens[j]` used).
    best: Vec<f32>,
    lens: Vec<usize>,
    /// (vector, row, exact logit), rows ascending per vector.
    cands: Vec<(u32, u32, f32)>,
    /// Pass 1's integer products, `rows x m`.
    ints: Vec<i32>,
}

impl HeadScreen {
    /// Whether this CPU has vector instructions for the screen (AVX-512 VNNI or AVX2): without
    /// them its int8 products are no faster than the float head.
    pub fn accelerated() -> bool {
        Isa::detect() != Isa::Scalar
    }

    /// The screen of `head`, or `None` where its exact products are not plain f32 dot products
    /// of stored values (block-quantized heads compute theirs from their blocks), where a row
    /// holds a value that is not finite, or where it has no columns.
    pub fn build(head: &FloatMatrix, pool: Option<&ThreadPool>) -> Option<HeadScreen> {
        let mut isa = Isa::detect();
        // For measurements: `BITNET_SCREEN_ISA=avx2` or `scalar` picks a lesser kernel.
        #[cfg(target_arch = "x86_64")]
        match std::env::var("BITNET_SCREEN_ISA").as_deref() {
            Ok("avx2") if isa == Isa::Avx512Vnni => isa = Isa::Avx2,
            Ok("scalar") => isa = Isa::Scalar,
            _ => {}
        }
        Self::build_with(head, pool, isa)
    }

    fn build_with(head: &FloatMatrix, pool: Option<&ThreadPool>, isa: Isa) -> Option<Self> {
        if matches!(head.storage(), FloatStorage::Rows(_)) || head.cols() == 0 {
            return None;
        }
        let (rows, cols) = (head.rows(), head.cols());
        let stride = cols.next_multiple_of(LANE_BYTES);
        let mut codes = CodeBuf::zeroed(rows * stride);
        let mut meta = vec![RowMeta::default(); rows];
        let gamma = gamma(cols);
        let finite = std::sync::atomic::AtomicBool::new(true);
        let stored = |r: usize| {
            let range = r * cols..(r + 1) * cols;
            match head.storage() {
                FloatStorage::F32(v) => Stored::F32(&v[range]),
                FloatStorage::F16(v) => Stored::F16(&v[range]),
                FloatStorage::F16Mapped(v) => Stored::F16(&v.f16s()[range]),
                FloatStorage::BF16(v) => Stored::BF16(&v[range]),
                // Returned above.
                FloatStorage::Rows(_) => Stored::F32(&[]),
            }
        };
        let task = |chunk: &mut (&mut [i8], &mut [RowMeta]), first: usize| {
            let mut w = vec![0f32; cols];
            for (i, (code, m)) in chunk
                .0
                .chunks_exact_mut(stride)
                .zip(chunk.1.iter_mut())
                .enumerate()
            {
                match quantize_stored(stored(first + i), &mut w, &mut code[..cols]) {
                    Some((scale, dq, norm, err)) => {
                        let code_sum = code.iter().map(|&c| c as i32).sum();
                        *m = RowMeta {
                            scale,
                            code_sum,
                            p: up(dq),
                            q: up(err + gamma * norm),
                        };
                    }
                    None => finite.store(false, std::sync::atomic::Ordering::Relaxed),
                }
            }
        };
        let mut parts: Vec<_> = codes
            .chunks_mut(ROWS_PER_TASK * stride)
            .zip(meta.chunks_mut(ROWS_PER_TASK))
            .collect();
        run_tasks(pool, &mut parts, &|i, c| task(c, i * ROWS_PER_TASK));
        drop(parts);
        finite.into_inner().then_some(Self {
            rows,
            cols,
            stride,
            codes,
            meta,
            isa,
        })
    }

    /// Bytes the screen holds (its codes and per-row factors).
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.meta.len() * size_of::<RowMeta>()
    }

    /// For each of the `m` vectors `xs` (`m x cols`, row-major): its `k` best rows of `head`
    /// (the matrix this screen was built from) with their logits, exactly as
    /// [`crate::ops::top_k_rows`] over `head.matmul_rows` gives them (`k` per vector, padded
    /// with `(0, NaN)` where fewer non-NaN logits exist), appended to `out`.
    ///
    /// # Panics
    /// If `k` is 0, or `head` or `xs` do not have the screen's shape (programming errors).
    #[allow(clippy::too_many_arguments)]
    pub fn top_k(
        &self,
        head: &FloatMatrix,
        xs: &[f32],
        m: usize,
        k: usize,
        pool: Option<&ThreadPool>,
        s: &mut ScreenScratch,
        out: &mut Vec<(u32, f32)>,
    ) {
        let mut row_top = Vec::with_capacity(k);
        self.select(head, xs, m, k, pool, s, &mut |picked| {
            crate::ops::top_k_pairs(picked, k, &mut row_top);
            out.extend_from_slice(&row_top);
            out.extend(std::iter::repeat_n((0, f32::NAN), k - row_top.len()));
        });
    }

    /// For each of the `m` vectors `xs`: the id of its first largest logit (scanning ids in
    /// order and keeping the first of equal values, as a plain argmax loop from id 0 does; a
    /// NaN at id 0 is kept), appended to `out`.
    pub fn greedy(
        &self,
        head: &FloatMatrix,
        xs: &[f32],
        m: usize,
        pool: Option<&ThreadPool>,
        s: &mut ScreenScratch,
        out: &mut Vec<u32>,
    ) {
        self.select(head, xs, m, 1, pool, s, &mut |picked| {
            // The candidates hold every row reaching the maximum (a row outside them is below
            // it), so the first of them reaching it is the plain loop's choice; a vector that
            // fell back brings every row, id 0 first, as the plain loop scans them.
            let best = crate::ops::first_argmax(picked.iter().map(|c| c.1));
            out.push(picked.get(best).map_or(0, |c| c.0));
        });
    }

    /// The two passes; `emit(candidates)` is called once per vector in order with that
    /// vector's candidates (ascending ids, exact logits): the screened ones, or every row when
    /// the vector fell back to the full head.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &self,
        head: &FloatMatrix,
        xs: &[f32],
        m: usize,
        k: usize,
        pool: Option<&ThreadPool>,
        s: &mut ScreenScratch,
        emit: &mut dyn FnMut(&[Pick]),
    ) {
        let (rows, cols) = (self.rows, self.cols);
        assert!(k > 0, "HeadScreen: k must be at least 1");
        assert!(
            head.rows() == rows && head.cols() == cols && xs.len() >= m * cols,
            "HeadScreen: head or vectors of another shape"
        );
        if m == 0 {
            return;
        }
        let k = k.min(rows);
        self.quantize_vectors(&xs[..m * cols], m, s);
        // Pass 1: approximate logits and each task's k largest lower bounds per vector.
        let n_tasks = rows.div_ceil(ROWS_PER_TASK);
        s.tasks.resize_with(n_tasks, Task::default);
        s.approx.resize(rows * m, 0.0);
        let (acts, vecs) = (&s.acts, &s.vecs);
        each_task(
            pool,
            &mut s.approx,
            &mut s.tasks,
            m,
            &|first, approx, task| {
                self.approximate(first, acts, vecs, m, k, approx, task);
            },
        );
        // The thresholds: the k-th largest lower bound over all tasks.
        s.tau.clear();
        let merged = &mut s.merged;
        for j in 0..m {
            merged.clear();
            for t in &s.tasks {
                merged.extend_from_slice(&t.best[j * k..j * k + t.lens[j]]);
            }
            let tau = if merged.len() < k {
                f32::NEG_INFINITY
            } else {
                merged.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
                merged[k - 1]
            };
            s.tau.push(tau);
        }
        // Pass 2: the candidates' exact logits.
        let (vecs, tau) = (&s.vecs, &s.tau);
        each_task(
            pool,
            &mut s.approx,
            &mut s.tasks,
            m,
            &|first, approx, task| {
                self.candidates(head, xs, first, vecs, tau, m, approx, task);
            },
        );
        s.exact = 0;
        for j in 0..m {
            let mut fallback = s.vecs[j].is_none();
            s.picked.clear();
            if !fallback {
                for t in &s.tasks {
                    s.picked.extend(
                        t.cands
                            .iter()
                            .filter(|c| c.0 as usize == j)
                            .map(|c| (c.1, c.2)),
                    );
                }
                // A NaN among them means a product overflowed: the bound no longer holds.
                fallback = s.picked.len() < k || s.picked.iter().any(|c| c.1.is_nan());
            }
            s.exact += if fallback { rows } else { s.picked.len() };
            if fallback {
                s.full.resize(rows, 0.0);
                head.matvec_rows(&xs[j * cols..(j + 1) * cols], 0, &mut s.full);
                s.picked.clear();
                s.picked
                    .extend(s.full.iter().enumerate().map(|(i, &l)| (i as u32, l)));
            }
            emit(&s.picked);
        }
    }

    /// Quantizes the vectors into `s.acts` and records their factors and norms.
    fn quantize_vectors(&self, xs: &[f32], m: usize, s: &mut ScreenScratch) {
        let (cols, stride) = (self.cols, self.stride);
        s.acts.clear();
        s.acts.resize(m * stride, 0);
        s.vecs.clear();
        let offset = self.isa.offset();
        for (x, codes) in xs.chunks_exact(cols).zip(s.acts.chunks_exact_mut(stride)) {
            let v = quantize_row(x, &mut codes[..cols]);
            if offset {
                // `q + 128` as a byte: the sign bit flipped.
                codes.iter_mut().for_each(|c| *c ^= i8::MIN);
            }
            let v = v
                // Norms far beyond any real activation would make `p dx + q |x|` overflow.
                .filter(|&(_, dq, norm, err)| norm < 1e30 && dq < 1e30 && err < 1e30)
                .map(|(scale, _, norm, err)| (scale, up(err), up(norm)));
            s.vecs.push(v);
        }
    }

    /// Pass 1 over rows `first..` (as many as `approx` holds for `m` vectors).
    #[allow(clippy::too_many_arguments)]
    fn approximate(
        &self,
        first: usize,
        acts: &[i8],
        vecs: &[Option<(f32, f32, f32)>],
        m: usize,
        k: usize,
        approx: &mut [f32],
        task: &mut Task,
    ) {
        let n = approx.len() / m;
        task.best.clear();
        task.best.resize(m * k, f32::NEG_INFINITY);
        task.lens.clear();
        task.lens.resize(m, 0);
        let mut ints = std::mem::take(&mut task.ints);
        ints.resize(n * m, 0);
        self.products(first, n, acts, m, &mut ints);
        for (r, (dots, a_row)) in ints
            .chunks_exact(m)
            .zip(approx.chunks_exact_mut(m))
            .enumerate()
        {
            let w = &self.meta[first + r];
            for (j, (&d, a)) in dots.iter().zip(a_row.iter_mut()).enumerate() {
                let Some((sx, dx, xn)) = vecs[j] else {
                    continue;
                };
                *a = d as f32 * (w.scale * sx);
                let lo = *a - bound(w, *a, dx, xn);
                let (best, len) = (&mut task.best[j * k..(j + 1) * k], &mut task.lens[j]);
                if *len < k || lo > best[k - 1] {
                    // Insert, keeping the list sorted descending.
                    let mut i = (*len).min(k - 1);
                    while i > 0 && best[i - 1] < lo {
                        best[i] = best[i - 1];
                        i -= 1;
                    }
                    best[i] = lo;
                    *len = (*len + 1).min(k);
                }
            }
        }
        task.ints = ints;
    }

    /// Pass 2 over rows `first..`: the rows whose upper bound reaches their vector's `tau`,
    /// with exact logits.
    #[allow(clippy::too_many_arguments)]
    fn candidates(
        &self,
        head: &FloatMatrix,
        xs: &[f32],
        first: usize,
        vecs: &[Option<(f32, f32, f32)>],
        tau: &[f32],
        m: usize,
        approx: &[f32],
        task: &mut Task,
    ) {
        let cols = self.cols;
        task.cands.clear();
        let mut one = [0f32];
        for (r, a_row) in approx.chunks_exact(m).enumerate() {
            let w = &self.meta[first + r];
            for (j, &a) in a_row.iter().enumerate() {
                let Some((_, dx, xn)) = vecs[j] else { continue };
                let hi = a + bound(w, a, dx, xn);
                if hi >= tau[j] || hi.is_nan() {
                    head.matvec_rows(&xs[j * cols..(j + 1) * cols], first + r, &mut one);
                    task.cands.push((j as u32, (first + r) as u32, one[0]));
                }
            }
        }
    }

    /// `ints[r * m + j] = q_w(first + r) . q_x(j)` for `n` rows.
    fn products(&self, first: usize, n: usize, acts: &[i8], m: usize, ints: &mut [i32]) {
        let stride = self.stride;
        let w = &self.codes[first * stride..(first + n) * stride];
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected when the screen was built (`Isa::detect`), and
            // the operands hold `n` rows and `m` vectors of `stride` bytes from 64-byte
            // boundaries (AlignedVec buffers of whole rows).
            Isa::Avx512Vnni => unsafe {
                x86::products_vnni(w, stride, acts, m, &self.meta[first..first + n], ints)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { x86::products_avx2(w, stride, acts, m, ints) },
            Isa::Scalar => products_scalar(w, stride, acts, m, ints),
        }
    }
}

/// Runs `f(first row, its approximate logits, its task)` for every task of a selection's
/// pass: task `i` owns rows `i * ROWS_PER_TASK..` (`m` logits each) of `approx`.
fn each_task(
    pool: Option<&ThreadPool>,
    approx: &mut [f32],
    tasks: &mut [Task],
    m: usize,
    f: &(dyn Fn(usize, &mut [f32], &mut Task) + Sync),
) {
    let mut parts: Vec<_> = approx.chunks_mut(ROWS_PER_TASK * m).zip(tasks).collect();
    run_tasks(pool, &mut parts, &|i, part| {
        f(i * ROWS_PER_TASK, part.0, part.1)
    });
}

/// Runs `f(i, part_i)` for every part, on the pool when there is one.
fn run_tasks<T: Send>(
    pool: Option<&ThreadPool>,
    parts: &mut [T],
    f: &(dyn Fn(usize, &mut T) + Sync),
) {
    match pool {
        Some(p) => p.for_each_chunk_mut(parts, 1, &|i, c| f(i, &mut c[0])),
        None => parts.iter_mut().enumerate().for_each(|(i, c)| f(i, c)),
    }
}

/// The error bound of an approximate logit `a` of a row with factors `w` against a vector
/// with `|x - x^| = dx` and `|x| = xn`: `p dx + q xn` plus the approximation's own rounding
/// (a few ulps of `|a|`), widened by a margin for the bound's f32 arithmetic and the
/// rounding of `a -+ e`.
#[inline]
fn bound(w: &RowMeta, a: f32, dx: f32, xn: f32) -> f32 {
    (w.p * dx + w.q * xn) * (1.0 + 1e-5) + a.abs() * 1e-6
}

/// `gamma_n` of an `n`-term f32 dot product, with margin.
fn gamma(n: usize) -> f64 {
    let nu = (n + 2) as f64 * U;
    nu / (1.0 - nu) * 1.01
}

/// An f64 norm as an f32 that is not below it.
fn up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v { f.next_up() } else { f }
}

/// One head row as stored.
#[derive(Clone, Copy)]
enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    BF16(&'a [half::bf16]),
}

/// [`quantize_row`] of a stored row (`buf`: room for it in f32 where it is not f32 already;
/// only the fallback uses it): converted and quantized in
/// one pass of AVX2 where the CPU has it (building 2B4T's screen quantizes 328 M values; the
/// conversion row by row through `row_into` and the compiler's scalar loops took ~1 s).
fn quantize_stored(
    row: Stored<'_>,
    buf: &mut [f32],
    codes: &mut [i8],
) -> Option<(f32, f64, f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            // SAFETY: the features were detected on this CPU just above.
            return unsafe {
                match row {
                    Stored::F32(r) => x86::quantize_f32(r, codes),
                    Stored::F16(r) => x86::quantize_f16(r, codes),
                    Stored::BF16(r) => x86::quantize_bf16(r, codes),
                }
            };
        }
    }
    match row {
        Stored::F32(r) => return quantize_row_body(r, codes),
        Stored::F16(r) => buf.iter_mut().zip(r).for_each(|(o, h)| *o = h.to_f32()),
        Stored::BF16(r) => buf.iter_mut().zip(r).for_each(|(o, h)| *o = h.to_f32()),
    }
    quantize_row_body(buf, codes)
}

/// Codes `round(x / s)` in `-127..=127` with `s = max|x| / 127`, and in f64: the
/// dequantization factor `s` (as the f32 used), `|x^|`, `|x|` and `|x - x^|`. `None` where a
/// value is not finite.
fn quantize_row(x: &[f32], codes: &mut [i8]) -> Option<(f32, f64, f64, f64)> {
    quantize_stored(Stored::F32(x), &mut [], codes)
}

/// [`quantize_row`] without vector instructions (and the reference of the AVX2 one): eight
/// partial sums per norm, rounding by the add-and-subtract of `1.5 x 2^23` (ties to even,
/// exact for |v| < 2^22).
fn quantize_row_body(x: &[f32], codes: &mut [i8]) -> Option<(f32, f64, f64, f64)> {
    const LANES: usize = 8;
    let mut top = [0f32; LANES];
    let mut finite = true;
    for (i, &v) in x.iter().enumerate() {
        finite &= v.is_finite();
        let t = &mut top[i % LANES];
        *t = if v.abs() > *t { v.abs() } else { *t };
    }
    if !finite {
        return None;
    }
    let max = top.iter().fold(0f32, |a, &b| a.max(b));
    let (s, inv) = if max > 0.0 {
        (max / 127.0, 127.0 / max)
    } else {
        (0.0, 0.0)
    };
    const MAGIC: f32 = 12_582_912.0;
    let mut acc = [[0f64; LANES]; 3];
    let (xs, x_tail) = x.as_chunks::<LANES>();
    let (cs, c_tail) = codes.as_chunks_mut::<LANES>();
    let lane = |c: &mut i8, v: f32, i: usize, acc: &mut [[f64; LANES]; 3]| {
        let q = ((v * inv + MAGIC) - MAGIC).clamp(-127.0, 127.0);
        *c = q as i8;
        let d = q as f64 * s as f64;
        let v = v as f64;
        acc[0][i] += d * d;
        acc[1][i] += v * v;
        acc[2][i] += (v - d) * (v - d);
    };
    for (c, v) in cs.iter_mut().zip(xs) {
        for i in 0..LANES {
            lane(&mut c[i], v[i], i, &mut acc);
        }
    }
    for (i, (c, &v)) in c_tail.iter_mut().zip(x_tail).enumerate() {
        lane(c, v, i, &mut acc);
    }
    // The f64 sums' own rounding is ~1e-16 relative; `up` and the bound's margin cover it.
    let norm = |a: &[f64; LANES]| a.iter().sum::<f64>().sqrt() * (1.0 + 1e-12);
    Some((s, norm(&acc[0]), norm(&acc[1]), norm(&acc[2])))
}

/// The products one pair at a time (the reference the vector kernels are tested against).
fn products_scalar(w: &[i8], stride: usize, acts: &[i8], m: usize, ints: &mut [i32]) {
    for (row, out) in w.chunks_exact(stride).zip(ints.chunks_exact_mut(m)) {
        for (y, x) in out.iter_mut().zip(acts.chunks_exact(stride)) {
            *y = row.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LANE_BYTES, RowMeta};
    use std::arch::x86_64::*;

    /// [`super::quantize_row`] over stored values, eight at a time: `$load` reads eight of
    /// them as f32, `$conv` one (the tail). Codes round to nearest even (`vroundps`), the
    /// norms accumulate in f64 lanes.
    macro_rules! quantizer {
        ($name:ident, $t:ty, $load:expr, $conv:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) fn $name(x: &[$t], codes: &mut [i8]) -> Option<(f32, f64, f64, f64)> {
                // SAFETY (of every use): reads eight values from `p`, which the loops keep in
                // bounds.
                let load = |p: *const $t| -> __m256 { unsafe { $load(p) } };
                let conv = $conv;
                let n = x.len().min(codes.len());
                let full = n / 8 * 8;
                let sign = _mm256_set1_ps(-0.0);
                let inf = _mm256_set1_ps(f32::INFINITY);
                let (mut top, mut bad) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut i = 0;
                while i < full {
                    let v = _mm256_andnot_ps(sign, load(x[i..].as_ptr()));
                    // |v| >= inf, or unordered (NaN).
                    bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(v, inf));
                    top = _mm256_max_ps(top, v);
                    i += 8;
                }
                let mut lanes = [0f32; 8];
                // SAFETY: eight writable f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), top) };
                let mut max = lanes.iter().fold(0f32, |a, &b| a.max(b));
                let mut finite = _mm256_movemask_ps(bad) == 0;
                for &h in &x[full..n] {
                    let v: f32 = conv(h);
                    finite &= v.is_finite();
                    max = max.max(v.abs());
                }
                if !finite {
                    return None;
                }
                let (s, inv) = if max > 0.0 {
                    (max / 127.0, 127.0 / max)
                } else {
                    (0.0, 0.0)
                };
                let (vinv, sd) = (_mm256_set1_ps(inv), _mm256_set1_pd(s as f64));
                let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
                let mut acc = [_mm256_setzero_pd(); 6];
                let mut i = 0;
                while i < full {
                    let v = load(x[i..].as_ptr());
                    let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        _mm256_mul_ps(v, vinv),
                    );
                    let q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
                    // Eight i32 to eight bytes: saturating packs keep each 128-bit lane's
                    // four values in its first four bytes.
                    let b = _mm256_packs_epi16(
                        _mm256_packs_epi32(_mm256_cvtps_epi32(q), _mm256_setzero_si256()),
                        _mm256_setzero_si256(),
                    );
                    let lo4 = _mm_cvtsi128_si32(_mm256_castsi256_si128(b));
                    let hi4 = _mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(b));
                    codes[i..i + 4].copy_from_slice(&lo4.to_le_bytes().map(|c| c as i8));
                    codes[i + 4..i + 8].copy_from_slice(&hi4.to_le_bytes().map(|c| c as i8));
                    for (h, (vv, qq)) in [
                        (_mm256_castps256_ps128(v), _mm256_castps256_ps128(q)),
                        (_mm256_extractf128_ps::<1>(v), _mm256_extractf128_ps::<1>(q)),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let (vd, d) = (_mm256_cvtps_pd(vv), _mm256_mul_pd(_mm256_cvtps_pd(qq), sd));
                        let e = _mm256_sub_pd(vd, d);
                        acc[3 * h] = _mm256_fmadd_pd(d, d, acc[3 * h]);
                        acc[3 * h + 1] = _mm256_fmadd_pd(vd, vd, acc[3 * h + 1]);
                        acc[3 * h + 2] = _mm256_fmadd_pd(e, e, acc[3 * h + 2]);
                    }
                    i += 8;
                }
                let mut sums = [0f64; 3];
                for (k, sum) in sums.iter_mut().enumerate() {
                    let mut l = [0f64; 4];
                    // SAFETY: four writable f64.
                    unsafe { _mm256_storeu_pd(l.as_mut_ptr(), _mm256_add_pd(acc[k], acc[3 + k])) };
                    *sum = l.iter().sum();
                }
                for (c, &h) in codes[full..n].iter_mut().zip(&x[full..n]) {
                    let v: f32 = conv(h);
                    let q = (v * inv).round_ties_even().clamp(-127.0, 127.0);
                    *c = q as i8;
                    let (v, d) = (v as f64, q as f64 * s as f64);
                    sums[0] += d * d;
                    sums[1] += v * v;
                    sums[2] += (v - d) * (v - d);
                }
                // The f64 sums' own rounding is ~1e-16 relative; `up` and the bound's margin
                // cover it.
                let norm = |a: f64| a.sqrt() * (1.0 + 1e-12);
                Some((s, norm(sums[0]), norm(sums[1]), norm(sums[2])))
            }
        };
    }

    quantizer!(
        quantize_f32,
        f32,
        |p: *const f32| _mm256_loadu_ps(p),
        |v: f32| v
    );
    quantizer!(
        quantize_f16,
        half::f16,
        |p: *const half::f16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
        |h: half::f16| h.to_f32()
    );
    quantizer!(
        quantize_bf16,
        half::bf16,
        |p: *const half::bf16| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            _mm_loadu_si128(p.cast())
        ))),
        |h: half::bf16| h.to_f32()
    );

    /// Head rows per block: every tile of vectors passes over a block (64 rows of 2,560 bytes
    /// = 160 KB, in L2 after the first pass) before the next.
    const BLOCK_ROWS: usize = 64;
    /// How far ahead the first pass over a block prefetches its rows.
    const PREFETCH_ROWS: usize = 16;

    /// One tile: the products of `R` rows (4 or 1) by `A` vectors (1-4) into `out[r][a]`; the
    /// rows start at the first pointer, the vectors at the second, each `stride` bytes apart.
    /// The third pointer, unless null, is prefetched into L2 at the rows' offsets as the tile
    /// walks its columns (the rows of a later tile).
    type Tile = unsafe fn(*const i8, *const i8, *const i8, usize, &mut [[i32; 4]; 4]);

    /// Tiles of 4 rows x up to 4 vectors with `vpdpbusd`: the vectors' codes are stored
    /// unsigned (`x + 128`, [`super::Isa::offset`]), so each sum is `q_w . q_x + 128 sum(q_w)`,
    /// corrected with the row's code sum.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI; `w` holds rows and `acts` vectors of `stride`
    /// bytes (a multiple of 64) from 64-byte boundaries, `ints` `rows x m` results.
    pub(super) unsafe fn products_vnni(
        w: &[i8],
        stride: usize,
        acts: &[i8],
        m: usize,
        meta: &[RowMeta],
        ints: &mut [i32],
    ) {
        let tiles: [[Tile; 4]; 2] = tile_table!(tile_vnni);
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            products_with(w, stride, acts, m, 4, ints, &tiles, &|r| {
                128 * meta[r].code_sum
            })
        }
    }

    /// Tiles of 4 rows x up to 2 vectors in 32-byte lanes (eight accumulators of the sixteen
    /// registers): `vpmaddubsw` of `|q_w|` by `sign(q_w) q_x` (pairs of at most 2 x 127 x 127,
    /// no saturation), widened by `vpmaddwd`.
    ///
    /// # Safety
    /// As [`products_vnni`], with AVX2.
    pub(super) unsafe fn products_avx2(
        w: &[i8],
        stride: usize,
        acts: &[i8],
        m: usize,
        ints: &mut [i32],
    ) {
        let tiles: [[Tile; 4]; 2] = tile_table!(tile_avx2);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { products_with(w, stride, acts, m, 2, ints, &tiles, &|_| 0) }
    }

    /// A tile function's eight shapes as [`products_with`] indexes them.
    macro_rules! tile_table {
        ($f:ident) => {
            [
                [$f::<4, 1>, $f::<4, 2>, $f::<4, 3>, $f::<4, 4>],
                [$f::<1, 1>, $f::<1, 2>, $f::<1, 3>, $f::<1, 4>],
            ]
        };
    }
    use tile_table;

    /// `ints[r * m + j] = tile products - fix(r)` over all rows and vectors, by [`tiles`] in
    /// groups of up to `group` vectors: `kernels[0]` takes four rows, `kernels[1]` one, each
    /// indexed by vectors - 1.
    ///
    /// # Safety
    /// As [`products_vnni`], for the instructions `kernels` use.
    #[allow(clippy::too_many_arguments)]
    unsafe fn products_with(
        w: &[i8],
        stride: usize,
        acts: &[i8],
        m: usize,
        group: usize,
        ints: &mut [i32],
        kernels: &[[Tile; 4]; 2],
        fix: &dyn Fn(usize) -> i32,
    ) {
        let n = w.len() / stride;
        tiles(n, m, group, &mut |r, j, rr, jj| {
            let rr = if rr == 4 { 4 } else { 1 };
            let mut acc = [[0i32; 4]; 4];
            // SAFETY: rows r..r + rr and vectors j..j + jj lie within `w` and `acts` (`tiles`
            // keeps them in range), and the caller vouches for the CPU and the alignment.
            unsafe {
                let (wp, xp) = (w.as_ptr().add(r * stride), acts.as_ptr().add(j * stride));
                // The first group of vectors brings the rows from memory: it prefetches the
                // rows PREFETCH_ROWS ahead, and the second group the next block's, while the
                // later groups find theirs in L2. With one vector too: on a Zen 5 VM the
                // hardware prefetcher alone streamed one vector's rows 5% faster, but on a Zen 4
                // VM (~13 GB/s to a core) the prefetches made batch-1 greedy steps 12% faster
                // (41.8 -> 36.9 ms; BENCHMARKS.md, session 44), and two or more vectors were
                // 15-20% faster with them everywhere.
                let pf = match j {
                    0 => wp.wrapping_add(PREFETCH_ROWS * stride),
                    j if j == group => wp.wrapping_add(BLOCK_ROWS * stride),
                    _ => std::ptr::null(),
                };
                kernels[usize::from(rr == 1)][jj - 1](wp, xp, pf, stride, &mut acc);
            }
            for (a, row) in acc.iter().enumerate().take(rr) {
                let fix = fix(r + a);
                for (b, &v) in row.iter().enumerate().take(jj) {
                    ints[(r + a) * m + j + b] = v - fix;
                }
            }
            rr
        });
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_vnni<const R: usize, const A: usize>(
        w: *const i8,
        x: *const i8,
        pf: *const i8,
        stride: usize,
        out: &mut [[i32; 4]; 4],
    ) {
        let mut acc = [[_mm512_setzero_si512(); A]; R];
        let mut c = 0;
        while c < stride {
            // SAFETY: the caller's rows and vectors hold `stride` bytes from `w` and `x`, and
            // `c + 64 <= stride`; both are 64-byte aligned (AlignedVec rows of a multiple of 64).
            unsafe {
                if !pf.is_null() {
                    for a in 0..R {
                        _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(a * stride + c));
                    }
                }
                let mut xv = [_mm512_setzero_si512(); A];
                for (b, xv) in xv.iter_mut().enumerate() {
                    *xv = _mm512_load_si512(x.add(b * stride + c).cast());
                }
                for (a, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm512_load_si512(w.add(a * stride + c).cast());
                    for (acc, &xv) in acc.iter_mut().zip(&xv) {
                        *acc = _mm512_dpbusd_epi32(*acc, xv, wv);
                    }
                }
            }
            c += LANE_BYTES;
        }
        // Each row's (up to) four sums in one transposing pass of EVEX instructions (the VEX-only
        // `vphaddd`, or `_mm512_reduce_add_epi32` per accumulator, made the register allocator
        // keep an accumulator on the stack inside the loop: three times slower).
        let zero = _mm512_setzero_si512();
        for (o, a) in out.iter_mut().zip(&acc) {
            let v = |b: usize| a.get(b).copied().unwrap_or(zero);
            let t01 = _mm512_add_epi32(
                _mm512_unpacklo_epi32(v(0), v(1)),
                _mm512_unpackhi_epi32(v(0), v(1)),
            );
            let t23 = _mm512_add_epi32(
                _mm512_unpacklo_epi32(v(2), v(3)),
                _mm512_unpackhi_epi32(v(2), v(3)),
            );
            // Per 128-bit lane: that lane's part of each of the four sums, in order.
            let u = _mm512_add_epi32(
                _mm512_unpacklo_epi64(t01, t23),
                _mm512_unpackhi_epi64(t01, t23),
            );
            let h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64::<1>(u));
            let q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            // SAFETY: `o` is four writable i32.
            unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), q) };
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn tile_avx2<const R: usize, const A: usize>(
        w: *const i8,
        x: *const i8,
        pf: *const i8,
        stride: usize,
        out: &mut [[i32; 4]; 4],
    ) {
        let mut acc = [[_mm256_setzero_si256(); A]; R];
        let ones = _mm256_set1_epi16(1);
        let mut c = 0;
        while c < stride {
            // SAFETY: as in `tile_vnni`, in 32-byte halves.
            unsafe {
                if !pf.is_null() && c % 64 == 0 {
                    for a in 0..R {
                        _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(a * stride + c));
                    }
                }
                let mut xv = [ones; A];
                for (b, xv) in xv.iter_mut().enumerate() {
                    *xv = _mm256_load_si256(x.add(b * stride + c).cast());
                }
                for (a, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm256_load_si256(w.add(a * stride + c).cast());
                    let aw = _mm256_abs_epi8(wv);
                    for (acc, &xv) in acc.iter_mut().zip(&xv) {
                        let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv));
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(p, ones));
                    }
                }
            }
            c += 32;
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, &a) in o.iter_mut().zip(a) {
                let s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                *o = _mm_cvtsi128_si32(s);
            }
        }
    }

    /// Walks `n` rows x `m` vectors in blocks of rows, each block by groups of up to `group`
    /// vectors and then by tiles of rows: `tile(row, vector, rows_left, vectors)` computes one
    /// tile and returns how many rows it took (4, or 1 near the end).
    fn tiles(
        n: usize,
        m: usize,
        group: usize,
        tile: &mut dyn FnMut(usize, usize, usize, usize) -> usize,
    ) {
        let mut b = 0;
        while b < n {
            let end = (b + BLOCK_ROWS).min(n);
            let mut j = 0;
            while j < m {
                let jj = (m - j).min(group);
                let mut r = b;
                while r < end {
                    r += tile(r, j, (end - r).min(4), jj);
                }
                j += jj;
            }
            b = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// A small deterministic generator (xorshift), values in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    fn head(rows: usize, cols: usize, seed: u64) -> FloatMatrix {
        let mut g = Rng(seed);
        let mut v: Vec<f16> = (0..rows * cols)
            .map(|_| f16::from_f32(0.05 * g.next()))
            .collect();
        // Ties: row 7 repeats row 3, row 9 is all zeros.
        v.copy_within(3 * cols..4 * cols, 7 * cols);
        v[9 * cols..10 * cols].fill(f16::ZERO);
        FloatMatrix::new(rows, cols, FloatStorage::F16(v)).unwrap()
    }

    fn vectors(m: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut g = Rng(seed);
        let mut xs: Vec<f32> = (0..m * cols).map(|_| 2.0 * g.next()).collect();
        // An outlier column, as real hidden states have; and one zero vector.
        for j in 0..m {
            xs[j * cols + 5 % cols] = 40.0;
        }
        if m > 2 {
            xs[2 * cols..3 * cols].fill(0.0);
        }
        xs
    }

    fn full(head: &FloatMatrix, xs: &[f32], m: usize) -> Vec<f32> {
        let (rows, cols) = (head.rows(), head.cols());
        let mut out = vec![0.0; rows * m];
        for j in 0..m {
            head.matvec_rows(
                &xs[j * cols..(j + 1) * cols],
                0,
                &mut out[j * rows..(j + 1) * rows],
            );
        }
        out
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if Isa::detect() == Isa::Avx512Vnni {
                v.push(Isa::Avx512Vnni);
            }
        }
        v
    }

    #[test]
    fn vector_products_equal_the_scalar_ones() {
        for (rows, cols, m) in [
            (1, 1, 1),
            (5, 63, 3),
            (67, 130, 5),
            (130, 64, 9),
            (9, 2560, 16),
        ] {
            let h = head(rows.max(10), cols, rows as u64 + 7);
            let xs = vectors(m, cols, 11);
            let mut s = ScreenScratch::default();
            let want = {
                let sc = HeadScreen::build_with(&h, None, Isa::Scalar).unwrap();
                sc.quantize_vectors(&xs, m, &mut s);
                let mut ints = vec![0; sc.rows * m];
                sc.products(0, sc.rows, &s.acts, m, &mut ints);
                ints
            };
            for isa in isas() {
                let sc = HeadScreen::build_with(&h, None, isa).unwrap();
                sc.quantize_vectors(&xs, m, &mut s);
                let mut ints = vec![0; sc.rows * m];
                sc.products(0, sc.rows, &s.acts, m, &mut ints);
                assert_eq!(ints, want, "{isa:?} {rows}x{cols} m={m}");
            }
        }
    }

    #[test]
    fn selections_equal_the_full_heads() {
        let pool = ThreadPool::new(2);
        for (rows, cols, m, seed) in [(300, 96, 1, 1), (5000, 256, 4, 2), (4097, 130, 6, 3)] {
            let h = head(rows, cols, seed);
            let xs = vectors(m, cols, seed + 100);
            let logits = full(&h, &xs, m);
            for isa in isas() {
                let sc = HeadScreen::build_with(&h, Some(&pool), isa).unwrap();
                let mut s = ScreenScratch::default();
                for k in [1, 2, 5, 40] {
                    let mut want = Vec::new();
                    crate::ops::top_k_rows(&logits, rows, k, &mut want);
                    let mut got = Vec::new();
                    sc.top_k(&h, &xs, m, k, Some(&pool), &mut s, &mut got);
                    assert_eq!(format!("{got:?}"), format!("{want:?}"), "{isa:?} k={k}");
                }
                let want: Vec<u32> = logits
                    .chunks_exact(rows)
                    .map(|row| {
                        let mut best = 0;
                        for (i, &x) in row.iter().enumerate() {
                            if x > row[best] {
                                best = i;
                            }
                        }
                        best as u32
                    })
                    .collect();
                let mut got = Vec::new();
                sc.greedy(&h, &xs, m, None, &mut s, &mut got);
                assert_eq!(got, want, "{isa:?} greedy");
            }
        }
    }

    #[test]
    fn stored_rows_quantize_as_the_reference_does() {
        let mut g = Rng(21);
        for n in [1usize, 7, 8, 9, 64, 130, 2560] {
            let x: Vec<f32> = (0..n).map(|_| 3.0 * g.next()).collect();
            let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let b: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
            for row in [Stored::F32(&x), Stored::F16(&h), Stored::BF16(&b)] {
                let mut buf = vec![0f32; n];
                match row {
                    Stored::F32(r) => buf.copy_from_slice(r),
                    Stored::F16(r) => buf.iter_mut().zip(r).for_each(|(o, v)| *o = v.to_f32()),
                    Stored::BF16(r) => buf.iter_mut().zip(r).for_each(|(o, v)| *o = v.to_f32()),
                }
                let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
                let w = quantize_row_body(&buf, &mut want).unwrap();
                let v = quantize_stored(row, &mut vec![0f32; n], &mut got).unwrap();
                assert_eq!(got, want, "n={n}");
                assert_eq!(v.0, w.0);
                for (a, b) in [(v.1, w.1), (v.2, w.2), (v.3, w.3)] {
                    assert!((a - b).abs() <= 1e-12 * b.max(1e-30), "n={n}: {a} vs {b}");
                }
            }
            let mut bad = x.clone();
            bad[n / 2] = f32::NAN;
            assert!(
                quantize_stored(Stored::F32(&bad), &mut vec![0f32; n], &mut vec![0; n]).is_none()
            );
            bad[n / 2] = f32::NEG_INFINITY;
            assert!(
                quantize_stored(Stored::F32(&bad), &mut vec![0f32; n], &mut vec![0; n]).is_none()
            );
        }
    }

    #[test]
    fn a_vector_near_one_row_computes_few_rows_exactly() {
        let (rows, cols) = (20_000, 512);
        let h = head(rows, cols, 9);
        let sc = HeadScreen::build(&h, None).unwrap();
        let mut s = ScreenScratch::default();
        // The hidden state of a confident prediction: row 1234 scaled, plus noise.
        let mut x = vec![0f32; cols];
        h.row_into(1234, &mut x);
        let mut g = Rng(3);
        for v in &mut x {
            *v = *v * 40.0 + 0.5 * g.next();
        }
        let mut got = Vec::new();
        sc.greedy(&h, &x, 1, None, &mut s, &mut got);
        assert_eq!(got, [1234]);
        let exact = s.exact_rows();
        assert!(
            exact < rows / 100,
            "{exact} of {rows} rows computed exactly"
        );
    }

    #[test]
    fn ties_pick_the_first_row_and_vectors_that_are_not_finite_fall_back() {
        let (rows, cols) = (64, 64);
        let h = head(rows, cols, 5);
        let sc = HeadScreen::build(&h, None).unwrap();
        let mut s = ScreenScratch::default();
        // A vector along row 3 (which row 7 repeats): both tie, row 3 wins.
        let mut x = vec![0f32; cols];
        h.row_into(3, &mut x);
        let mut got = Vec::new();
        sc.greedy(&h, &x, 1, None, &mut s, &mut got);
        assert_eq!(got, [3]);
        let mut top = Vec::new();
        sc.top_k(&h, &x, 1, 2, None, &mut s, &mut top);
        assert_eq!((top[0].0, top[1].0), (3, 7));
        assert_eq!(top[0].1, top[1].1);
        // NaN and infinite inputs: the full head decides, as it would alone.
        for bad in [f32::NAN, f32::INFINITY] {
            x[1] = bad;
            let logits = full(&h, &x, 1);
            let mut want = Vec::new();
            crate::ops::top_k_rows(&logits, rows, 3, &mut want);
            let mut got = Vec::new();
            sc.top_k(&h, &x, 1, 3, None, &mut s, &mut got);
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    #[test]
    fn heads_that_are_not_finite_or_block_quantized_get_no_screen() {
        let mut v = vec![f16::from_f32(0.5); 4 * 8];
        v[9] = f16::INFINITY;
        let h = FloatMatrix::new(4, 8, FloatStorage::F16(v)).unwrap();
        assert!(HeadScreen::build(&h, None).is_none());
    }
}

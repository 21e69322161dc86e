//! Ternary products on the GPU: the weights' device layout (repacked once at load), the
//! RMSNorm + int8 quantization launches, and the choice among the product kernels (`dp4a` for up
//! to 4 tokens, fused with the norm at decode; the tensor-core kernels beyond: direct, staged
//! ring, tiled in clusters, register-blocked) with their launch shapes. Also the public entry points the
//! conformance suite drives each kernel through.

use super::*;

/// Tokens per tile of the tensor-core products in passes of more than 64 rows ([`mma_tokens`]).
pub(super) const MMA_TOKENS: usize = 32;

/// The token tile of the tensor-core products (`ternary_mma_*`, `ternary_mma_ring_*`) in a pass
/// of `n` rows: 16 up to 64 rows, so that batched decode steps have twice the blocks (the
/// direct kernel's grids are under one wave there) and a partial tile wastes at most 15 rows;
/// [`MMA_TOKENS`] beyond. H200, BENCHMARKS.md session 19, 32 -> 16: b40 +10%, b48 +8%, b56 +2%,
/// b64 +1.5%; b32 without the tiled kernel +6%.
pub(super) fn mma_tokens(n: usize) -> usize {
    if n <= 64 { 16 } else { MMA_TOKENS }
}

/// The tensor-core products' kernel variant (index into `Kernels::mma` and `mma_ring`: tiles of
/// 8, 16 or 32 tokens) and number of token tiles for a pass of `n` rows ([`mma_tokens`]).
pub(super) fn mma_shape(n: usize) -> (usize, u32) {
    let tokens = mma_tokens(n);
    (tiles_index(n.min(tokens)), n.div_ceil(tokens) as u32)
}

/// Strips of 16 rows per block of the staged tensor-core products (`MMA_WARPS` in the kernels).
pub(super) const MMA_WARPS: u32 = 4;

/// Dynamic shared memory of a staged tensor-core product block: its stages (`MMA_RING_ENTRIES`
/// in the kernels: 6 with 4 warps per strip, else 4) of `ks` groups' weights (512 bytes per
/// strip) and activation codes (144-byte rows of `tiles * 8` tokens).
pub(super) fn ring_smem(tiles: usize, ks: u32) -> usize {
    let stages = if ks == 4 { 6 } else { 4 };
    stages * ks as usize * (MMA_WARPS as usize * 512 + tiles * 8 * 144)
}

/// One staged tensor-core product kernel (`ternary_mma_ring_{N}_k{KS}`) and its launch shape.
pub(super) struct RingKernel {
    pub(super) k: Kernel,
    /// Warps per strip (they split the 128-column groups); `32 * MMA_WARPS * ks` threads.
    pub(super) ks: u32,
    /// Dynamic shared memory per block.
    pub(super) smem: usize,
    /// Blocks that run at once on the whole GPU.
    pub(super) slots: u32,
}

impl RingKernel {
    pub(super) fn load(gpu: &Gpu, tiles: usize, ks: u32) -> Option<Self> {
        let k = gpu.optional_function(&format!("ternary_mma_ring_{tiles}_k{ks}"))?;
        let smem = ring_smem(tiles, ks);
        if smem > 48 * 1024 {
            k.allow_smem(smem).ok()?;
        }
        let slots = k.resident(gpu, 32 * MMA_WARPS * ks, smem);
        (slots > 0).then_some(RingKernel { k, ks, smem, slots })
    }

    /// The variants of `tiles` the device can run (4, 2 and 1 warps per strip, in that order:
    /// the larger ones need more shared memory than some GPUs give a block), at least the one
    /// with a single warp per strip.
    pub(super) fn variants(gpu: &Gpu, tiles: usize) -> Option<Vec<Self>> {
        let v: Vec<Self> = [4, 2, 1]
            .into_iter()
            .filter_map(|ks| Self::load(gpu, tiles, ks))
            .collect();
        v.last().is_some_and(|k| k.ks == 1).then_some(v)
    }

    /// For a grid of `blocks`: `ks` warps per strip where asked (and available), else the most
    /// whose grid still runs in one wave, else the fewest.
    pub(super) fn pick(variants: &[Self], blocks: u32, ks: Option<u32>) -> &Self {
        let last = &variants[variants.len() - 1];
        if let Some(k) = ks.and_then(|f| variants.iter().find(|k| k.ks == f)) {
            return k;
        }
        variants.iter().find(|k| blocks <= k.slots).unwrap_or(last)
    }
}

/// A ternary matrix (or several stacked) on the device.
pub(crate) struct DevTernary {
    pub(super) words: CudaSlice<u32>,
    pub(super) scales: CudaSlice<f32>,
    pub(super) rows: usize,
    pub(super) kgroups: usize,
    pub(super) bytes: usize,
    /// The staged launch of the fused decode product (`gemv_stage`), for one row and for more,
    /// found at the first launch.
    pub(super) stage: [std::sync::OnceLock<Option<(u32, usize)>>; 2],
}

impl DevTernary {
    /// Stacks `parts` (same width) row-wise and uploads them.
    pub(crate) fn upload(
        gpu: &Gpu,
        parts: &[bitnet_core::TernaryMatrix],
    ) -> Result<Self, CudaError> {
        let cols = parts[0].cols();
        let rows: usize = parts.iter().map(|p| p.rows()).sum();
        let mut codes = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows);
        for p in parts {
            codes.extend_from_slice(p.codes());
            scales.extend(std::iter::repeat_n(p.scale(), p.rows()));
        }
        Self::from_codes(gpu, &codes, &scales, cols)
    }

    /// Packs and uploads `codes` (rows of `cols`, one scale per row).
    pub(super) fn from_codes(
        gpu: &Gpu,
        codes: &[i8],
        scales: &[f32],
        cols: usize,
    ) -> Result<Self, CudaError> {
        let rows = scales.len();
        let words = pack::pack_ternary(codes, rows, cols);
        Ok(Self {
            bytes: words.len() * 4,
            words: gpu.upload(&words)?,
            scales: gpu.upload(scales)?,
            rows,
            kgroups: cols.div_ceil(KGROUP),
            stage: Default::default(),
        })
    }

    /// The FFN's gate and up projections (same shape) as one matrix whose rows interleave them
    /// in groups of 8: each 16-row strip is gate rows 8k..8k+8, then up rows 8k..8k+8 (zero rows
    /// past the end), so that a block's strip holds both halves of act(gate) * up for 8
    /// outputs (`glu_in`, `gemv_staged` in the kernels). `glu_rows(rows)` rows.
    pub(crate) fn upload_glu(
        gpu: &Gpu,
        gate: &bitnet_core::TernaryMatrix,
        up: &bitnet_core::TernaryMatrix,
    ) -> Result<Self, CudaError> {
        let (codes, scales) = glu_interleave(gate, up)?;
        Self::from_codes(gpu, &codes, &scales, gate.cols())
    }
}

/// The codes and per-row scales of [`DevTernary::upload_glu`]'s interleaved matrix
/// (`glu_rows(gate.rows())` rows of `gate.cols()`).
pub(super) fn glu_interleave(
    gate: &bitnet_core::TernaryMatrix,
    up: &bitnet_core::TernaryMatrix,
) -> Result<(Vec<i8>, Vec<f32>), CudaError> {
    let (inter, cols) = (gate.rows(), gate.cols());
    if (up.rows(), up.cols()) != (inter, cols) {
        return Err(CudaError::Invalid(format!(
            "gate {inter}x{cols} and up {}x{} differ",
            up.rows(),
            up.cols()
        )));
    }
    let rows = glu_rows(inter);
    let mut codes = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    for (half, m) in [gate, up].into_iter().enumerate() {
        for r in 0..inter {
            let dst = r / 8 * 16 + half * 8 + r % 8;
            codes[dst * cols..][..cols].copy_from_slice(&m.codes()[r * cols..][..cols]);
            scales[dst] = m.scale();
        }
    }
    Ok((codes, scales))
}

/// Rows of the interleaved gate/up matrix for `inter` outputs (see [`DevTernary::upload_glu`]);
/// also the row stride of its products.
pub(super) fn glu_rows(inter: usize) -> usize {
    2 * pack::round_up(inter, 8)
}

/// One kernel instantiated per row width: `(values per thread, kernel)`, narrowest first (the
/// kernels' `FOR_EACH_PER`).
pub(super) struct ByWidth(Vec<(usize, Kernel)>);

/// Values per thread of the register-path instantiations, as `FOR_EACH_PER` in the kernels.
pub(super) const NORM_PER_THREAD: [usize; 7] = [4, 8, 10, 12, 16, 20, 28];

/// Threads of a norm block (`NW * 32` in the kernels).
pub(super) const NORM_THREADS: usize = 256;

impl ByWidth {
    pub(super) fn load(gpu: &Gpu, stem: &str) -> Result<Self, CudaError> {
        NORM_PER_THREAD
            .iter()
            .map(|&p| Ok((p, gpu.function(&format!("{stem}_p{p}"))?)))
            .collect::<Result<_, CudaError>>()
            .map(Self)
    }

    /// Lets every instantiation take up to `bytes` of dynamic shared memory, where the device
    /// allows (each keeps its default elsewhere: `Kernel::dynamic_smem_cap` says which).
    pub(super) fn allow_smem(self, bytes: usize) -> Self {
        for (_, k) in &self.0 {
            let _ = k.allow_smem(bytes);
        }
        self
    }

    /// The narrowest instantiation that holds a row of `cols` values in its 256 threads' registers
    /// (the widest one for wider rows: its strided loops take them).
    pub(super) fn for_cols(&self, cols: usize) -> &Kernel {
        let fits = self.0.iter().find(|(p, _)| p * NORM_THREADS >= cols);
        let (_, k) = fits.or(self.0.last()).expect("at least one instantiation");
        k
    }
}

/// Device addresses and sizes of one fused RMSNorm + quantization.
pub(super) struct NormQuant {
    pub(super) x: u64,
    pub(super) x_stride: usize,
    pub(super) weight: u64,
    pub(super) cols: usize,
    pub(super) eps: f32,
    pub(super) mode: i32,
    pub(super) codes: u64,
    pub(super) scales: u64,
    pub(super) sums: u64,
    pub(super) rows: usize,
}

/// Widest row the fused decode kernel normalizes (`FUSED_MAX_COLS` in the kernels): the widest
/// instantiation's.
pub(super) const FUSED_MAX_COLS: usize = NORM_PER_THREAD[NORM_PER_THREAD.len() - 1] * NORM_THREADS;

/// Whether a pass of `rows` rows `cols` wide takes the fused decode kernel (`launch_gemv_norm`)
/// rather than one `norm_quant` launch and the products on its codes: one row that fits it.
/// Every block of the fused kernel normalizes and quantizes all the pass's rows itself; that pays
/// for one row (no launch between the norm and the product) and costs from two, where the
/// tensor-core products on shared codes win. H200, 2B4T at depth 512 (BENCHMARKS.md, session
/// 22), tok/s: b1 fused 960-971 against 736-745 not; b2 1,249 fused, 1,318 fused for the
/// 2,560-wide rows only (`dp4a` for the 6,912-wide), 1,356 likewise with the tensor cores, 1,505
/// never fused; b3-b4 never fused 2,066 / 2,594 against 1,497 / 1,678 fused.
pub(super) fn fused_norm(rows: usize, cols: usize) -> bool {
    rows == 1 && cols <= FUSED_MAX_COLS
}

/// Launches `ternary_gemv_norm_p*` (the instantiation for the row width; `ternary_gemv_norm1_p*`
/// for one row) over `a.rows` (at most 4; the model passes one: [`fused_norm`]) rows: each
/// block normalizes and quantizes the rows itself, then multiplies its strips. `staged`: with
/// the block's strips copied into shared memory while it normalizes, where they fit
/// (`gemv_stage`; the engine always asks for it, the conformance tests also run without). `glu`
/// (an activation mode; `w` interleaved gate/up): a staged launch stores act(gate) * up
/// (`gemv_staged`); true where it did.
pub(super) fn launch_gemv_norm(
    gpu: &Gpu,
    k: &Kernels,
    w: &DevTernary,
    a: &NormQuant,
    (out, out_stride, accumulate, glu): (u64, usize, bool, i32),
    staged: bool,
) -> Result<bool, CudaError> {
    let k = if a.rows == 1 {
        &k.gemv_norm1
    } else {
        &k.gemv_norm
    }
    .for_cols(a.cols);
    let strips = w.rows.div_ceil(STRIP);
    let stage = match staged {
        true => w.stage[(a.rows > 1) as usize]
            .get_or_init(|| gemv_stage(gpu, k, strips, w.kgroups))
            .as_ref(),
        false => None,
    };
    // One wave at most: each block loops over strips (the kernel normalizes once per block).
    let (blocks, smem) = stage
        .copied()
        .unwrap_or(((strips as u32).min(k.wave(gpu)), 0));
    gpu.launch(
        k,
        (blocks, 1, 1),
        Kernel::WAVE_BLOCK,
        smem as u32,
        &[
            Arg::P(ptr(&w.words, &gpu.stream)),
            Arg::P(ptr(&w.scales, &gpu.stream)),
            Arg::I(w.rows as i32),
            Arg::I(w.kgroups as i32),
            Arg::P(a.x),
            Arg::I(a.x_stride as i32),
            Arg::P(a.weight),
            Arg::I(a.cols as i32),
            Arg::I(pack::round_up(a.cols, KGROUP) as i32),
            Arg::F(a.eps),
            Arg::I(a.mode),
            Arg::I(a.rows as i32),
            Arg::P(out),
            Arg::I(out_stride as i32),
            Arg::I(accumulate as i32),
            // 2: the weights are requested before the kernel waits for its predecessor.
            Arg::I(match stage {
                Some(_) => 1 + gpu.pdl() as i32,
                None => 0,
            }),
            Arg::I(if stage.is_some() { glu } else { 0 }),
        ],
    )?;
    Ok(stage.is_some() && glu != 0)
}

/// Most strips a block of the fused decode product stages (`STAGE_MAX` in the kernels).
pub(super) const GEMV_STAGE_STRIPS: usize = 4;

/// Most dynamic shared memory a block of the fused decode product stages its strips in.
pub(super) const GEMV_STAGE_MAX: usize = 96 * 1024;

/// The staged launch of a fused decode product over `strips` strips of `kgroups` 128-column
/// groups (see `gemv_norm_body` in the kernels): the fewest strips per block whose grid runs in
/// one wave, as (blocks, bytes of shared memory per block); `None` where the strips do not fit.
pub(super) fn gemv_stage(
    gpu: &Gpu,
    k: &Kernel,
    strips: usize,
    kgroups: usize,
) -> Option<(u32, usize)> {
    let cap = k.dynamic_smem_cap();
    (1..=strips.min(GEMV_STAGE_STRIPS))
        .map(|per| (per, per * kgroups * STRIP * KGROUP / 4))
        .take_while(|&(_, smem)| smem <= cap)
        .find_map(|(per, smem)| {
            let blocks = strips.div_ceil(per) as u32;
            (k.resident(gpu, Kernel::WAVE_BLOCK, smem) >= blocks).then_some((blocks, smem))
        })
}

/// Launches `norm_quant_p*` (the instantiation for the row width): one block per row. Rows up to
/// [`FUSED_MAX_COLS`] wide are held in registers (the codes staged in at most 7 KB of static
/// shared memory); a wider row is kept in dynamic shared memory when it fits next to that in
/// the default 48 KB.
pub(super) fn launch_norm_quant(gpu: &Gpu, k: &ByWidth, a: &NormQuant) -> Result<(), CudaError> {
    let k = k.for_cols(a.cols);
    let cached = a.cols > FUSED_MAX_COLS && a.cols * 4 + FUSED_MAX_COLS + 256 <= 48 * 1024;
    gpu.launch(
        k,
        (a.rows as u32, 1, 1),
        // 256 threads, as the fused decode kernel: the same summation order, the same codes.
        256,
        if cached { (a.cols * 4) as u32 } else { 0 },
        &[
            Arg::P(a.x),
            Arg::I(a.x_stride as i32),
            Arg::P(a.weight),
            Arg::I(a.cols as i32),
            Arg::I(pack::round_up(a.cols, KGROUP) as i32),
            Arg::F(a.eps),
            Arg::I(a.mode),
            Arg::P(a.codes),
            Arg::P(a.scales),
            Arg::P(a.sums),
            Arg::I(cached as i32),
        ],
    )
}

/// The tiled tensor-core products (`ternary_mma_tile_{2,4,8}`, sm_90): blocks of 8 warps, 16
/// rows per warp, tiles of 16, 32 or 64 tokens, the blocks of a row tile splitting its
/// 128-column groups in a thread-block cluster ([`tile_splits`]).
pub(super) struct MmaTile {
    /// By tokens per tile: 16, 32, 64.
    pub(super) variants: [TileKernel; 3],
    /// `BITNET_CUDA_MMA_TILE=1`: on for every batched product. Off by default: since the
    /// batched products' epilogue operands are copied while they multiply (session 25), steps
    /// of 12-32 rows ran 1.7-10% faster without the tiled kernels, which had taken steps of 9-32
    /// rows (H200, BENCHMARKS.md session 35).
    pub(super) on: bool,
    /// `BITNET_CUDA_MMA_TILE_SPLITS=N`: N splits per row tile (at most 8) whatever the product.
    pub(super) splits: Option<u32>,
}

/// One of [`MmaTile`]'s kernels and its launch shape.
pub(super) struct TileKernel {
    pub(super) k: Kernel,
    /// Tokens per tile (grid y).
    pub(super) tokens: u32,
    pub(super) smem: usize,
    /// Blocks that run at once on the whole GPU.
    pub(super) slots: u32,
}

/// Threads per block of the tiled products (`TILE_WARPS` = 8 in the kernels).
pub(super) const TILE_THREADS: u32 = 256;
/// Strips of 16 rows per block of the tiled products (one per warp).
pub(super) const TILE_STRIPS: u32 = 8;
/// The most blocks that split a row tile (`tile_sum` in the kernels; a portable cluster).
pub(super) const TILE_MAX_SPLITS: u32 = 8;

/// Dynamic shared memory of a tiled product block for `tokens` tokens: its ring (`TILE_STAGES`
/// = 4 stages of a group's weights, 32 bytes per row, and the tokens' codes in 144-byte rows),
/// or the integer sums of its outputs (rows 4 ints apart), whichever is larger.
pub(super) fn tile_smem(tokens: usize) -> usize {
    let rows = 16 * TILE_STRIPS as usize;
    (4 * (rows * 32 + tokens * 144)).max(tokens * (rows + 4) * 4)
}

/// How many blocks split each row tile's `kgroups` 128-column groups, for `tiles` row tiles
/// (times token tiles) and `slots` resident blocks: as many as the resident blocks allow, at
/// most [`TILE_MAX_SPLITS`], and no split without groups.
pub(super) fn tile_splits(tiles: u32, kgroups: u32, slots: u32) -> u32 {
    let kgroups = kgroups.max(1);
    let s = (slots / tiles.max(1))
        .clamp(1, TILE_MAX_SPLITS)
        .min(kgroups);
    kgroups.div_ceil(kgroups.div_ceil(s))
}

impl MmaTile {
    pub(super) fn load(gpu: &Gpu) -> Option<Self> {
        let kernel = |tokens: u32| {
            let name = format!("ternary_mma_tile_{}", tokens / 8);
            let smem = tile_smem(tokens as usize);
            let (k, slots) = split_kernel(gpu, &name, TILE_THREADS, smem)?;
            Some(TileKernel {
                k,
                tokens,
                smem,
                slots,
            })
        };
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        Some(MmaTile {
            variants: [kernel(16)?, kernel(32)?, kernel(64)?],
            on: env("BITNET_CUDA_MMA_TILE").is_some_and(|v| v != 0),
            splits: env("BITNET_CUDA_MMA_TILE_SPLITS")
                .filter(|&n| (1..=TILE_MAX_SPLITS).contains(&n)),
        })
    }

    /// The kernel for `t` tokens where `forced` or the environment asks for it: the smallest
    /// tile that holds them, 64 tokens beyond.
    pub(super) fn pick(&self, t: usize, forced: bool) -> Option<&TileKernel> {
        let v = &self.variants;
        (forced || self.on).then(|| v.iter().find(|k| t <= k.tokens as usize).unwrap_or(&v[2]))
    }
}

/// The register-blocked tensor-core products (`ternary_gemm`, sm_90): blocks of 4 warps, 128
/// rows x 64 tokens (each warp 64 rows x 32 tokens), the blocks of a row tile splitting its
/// 128-column groups in a thread-block cluster ([`tile_splits`]). The model takes them for the
/// gate/up product in passes of more than [`DIRECT_MAX_ROWS`] rows ([`Gemm::takes`]).
pub(super) struct Gemm {
    pub(super) k: Kernel,
    /// Blocks that run at once on the whole GPU (with the larger shared memory below).
    pub(super) slots: u32,
    /// `BITNET_CUDA_GEMM=0`: never chosen by the model (for same-binary comparisons).
    pub(super) off: bool,
}

/// Threads per block of [`Gemm`].
pub(super) const GEMM_THREADS: u32 = 128;
/// Rows per block of [`Gemm`] (`GEMM_STRIPS` strips in the kernels).
pub(super) const GEMM_ROWS: usize = 128;
/// Tokens per block of [`Gemm`] (grid y takes more).
pub(super) const GEMM_TOKENS: usize = 64;

/// Dynamic shared memory of a [`Gemm`] block: its ring (`GEMM_STAGES` = 4 stages of a group's
/// weights, 32 bytes per row, and the tokens' codes in 144-byte rows) and, where the outputs are
/// added to, their present values (4 bytes per row and token).
pub(super) fn gemm_smem(accumulate: bool) -> usize {
    let values = if accumulate {
        GEMM_ROWS * GEMM_TOKENS * 4
    } else {
        0
    };
    4 * (GEMM_ROWS * 32 + GEMM_TOKENS * 144) + values
}

impl Gemm {
    pub(super) fn load(gpu: &Gpu) -> Option<Self> {
        let (k, slots) = split_kernel(gpu, "ternary_gemm", GEMM_THREADS, gemm_smem(true))?;
        let off = std::env::var("BITNET_CUDA_GEMM").is_ok_and(|v| v == "0");
        Some(Gemm { k, slots, off })
    }

    /// Whether the model takes this kernel for a pass of `n` rows: for the gate/up product
    /// (`glu`) beyond [`DIRECT_MAX_ROWS`] rows. H200, BENCHMARKS.md session 28: gate/up alone at
    /// 128 / 512 rows 23.6 / 67.4 us against 28.7 / 89.6 for the staged kernel, prefill of
    /// 128-2,048 tokens +1.6-3%; at 64 rows and below (decode steps) its one block per SM fills and
    /// drains slower than `ternary_mma_*`'s many blocks (level at 64 rows, -3 to -9% at 16-48);
    /// qkv (from 256 rows) and down (65-128 rows) on it too measured within ±1% in prefill.
    pub(super) fn takes(&self, n: usize, glu: i32) -> bool {
        !self.off && glu != 0 && n > DIRECT_MAX_ROWS
    }

    /// Launches the product of `args` (`linear_args`, `n` tokens) over `w`, its row tiles split
    /// `splits` ways (`None`: [`tile_splits`] for the resident blocks).
    pub(super) fn launch(
        &self,
        gpu: &Gpu,
        w: &DevTernary,
        n: usize,
        args: &[Arg; 13],
        accumulate: bool,
        splits: Option<u32>,
    ) -> Result<(), CudaError> {
        let tiles = (
            w.rows.div_ceil(GEMM_ROWS) as u32,
            n.div_ceil(GEMM_TOKENS) as u32,
        );
        let shape = (GEMM_THREADS, gemm_smem(accumulate) as u32, self.slots);
        launch_split(gpu, &self.k, tiles, shape, w.kgroups, args, splits)
    }
}

/// Kernel `name` (a product whose blocks of one row tile may split its groups in a cluster of up
/// to [`TILE_MAX_SPLITS`]) with `smem` bytes of dynamic shared memory allowed, and how many of
/// its blocks of `threads` run at once on the GPU; `None` where the device lacks it, cannot give
/// it that memory or cannot place its largest clusters.
fn split_kernel(gpu: &Gpu, name: &str, threads: u32, smem: usize) -> Option<(Kernel, u32)> {
    let k = gpu.optional_function(name)?;
    k.allow_smem(smem).ok()?;
    let slots = k.resident(gpu, threads, smem);
    let clusters = k.cluster_limit(gpu, threads, smem) >= TILE_MAX_SPLITS;
    (slots > 0 && clusters).then_some((k, slots))
}

/// Launches `k` (a product kernel whose blocks of one row tile may split its `kgroups`
/// 128-column groups in a thread-block cluster: `ternary_mma_tile_*`, `ternary_gemm`) over
/// `tiles` (row tiles, token tiles) with `args` and the split count after them: `splits` per
/// row tile where given, else [`tile_splits`] for the kernel's resident blocks; `shape` is
/// (threads, dynamic shared memory, resident blocks).
fn launch_split(
    gpu: &Gpu,
    k: &Kernel,
    tiles: (u32, u32),
    (threads, smem, slots): (u32, u32, u32),
    kgroups: usize,
    args: &[Arg; 13],
    splits: Option<u32>,
) -> Result<(), CudaError> {
    let s = splits
        .unwrap_or_else(|| tile_splits(tiles.0 * tiles.1, kgroups as u32, slots))
        .min(kgroups.max(1) as u32)
        .min(TILE_MAX_SPLITS);
    let mut a = [Arg::I(s as i32); 14];
    a[..13].copy_from_slice(args);
    let grid = (tiles.0 * s, tiles.1, 1);
    if s > 1 {
        gpu.launch_with(k, grid, threads, smem, &a, Attr::Cluster(s))
    } else {
        gpu.launch(k, grid, threads, smem, &a)
    }
}

/// Which ternary kernel runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPath {
    /// `dp4a` for one token, tensor cores beyond (what the model uses).
    Auto,
    /// `dp4a` only, 4 tokens per launch.
    Dp4a,
    /// Tensor cores only, the kernel the model picks.
    Mma,
    /// Tensor cores only, `ternary_mma_*` whatever the grid.
    MmaDirect,
    /// Tensor cores only, `ternary_mma_w*` (16 warps per block) for tiles of up to 16 tokens;
    /// beyond, the direct or staged kernel as `Mma` chooses between them.
    MmaWide,
    /// Tensor cores only, `ternary_mma_ring_*` with this many warps per strip (1, 2 or 4)
    /// whatever the grid.
    MmaRing(u32),
    /// Tensor cores only, `ternary_mma_tile_*` with this many blocks per row tile (1..=8; 0 for
    /// the model's choice), where the device has it (sm_90; else as `Mma`).
    MmaTile(u32),
    /// Tensor cores only, `ternary_gemm` with this many blocks per row tile (1..=8; 0 for the
    /// model's choice), where the device has it (sm_90; else as `Mma`).
    Gemm(u32),
}

/// Which of the tensor-core kernels' tile sizes (8, 16, 32 tokens) takes `n` tokens.
pub(super) fn tiles_index(n: usize) -> usize {
    match n {
        0..=8 => 0,
        9..=16 => 1,
        _ => 2,
    }
}

/// Device addresses and sizes of one ternary product.
pub(super) struct LinearIo {
    pub(super) t: usize,
    pub(super) kpad: usize,
    pub(super) codes: u64,
    pub(super) xscale: u64,
    pub(super) xsum: u64,
    pub(super) out: u64,
    pub(super) out_stride: usize,
    pub(super) accumulate: bool,
    /// An activation mode where `w` is the interleaved gate/up matrix and act(gate) * up is
    /// wanted instead of its rows (the tensor-core kernels form it; see [`launch_linear`]).
    pub(super) glu: i32,
}

/// Launches the ternary kernels over `io.t` activation rows (permuted codes `kpad` apart,
/// scales, code sums) into `out` (`out_stride` apart), added when `accumulate`: `dp4a` up to 4
/// rows, tensor cores (up to 64 rows per launch) beyond. With `io.glu`, the tensor-core kernels
/// store act(gate) * up (`store_glu` in the kernels); true where they did (every row went to
/// one tensor-core launch), false where the rows were stored as they are.
pub(super) fn launch_linear(
    gpu: &Gpu,
    k: &Kernels,
    path: LinearPath,
    w: &DevTernary,
    io: &LinearIo,
) -> Result<bool, CudaError> {
    let strips = w.rows.div_ceil(STRIP) as u32;
    // `dp4a` for one row (and where there are no tensor-core kernels), else the tensor
    // cores, whose one launch takes every row.
    let mma = match path {
        LinearPath::Dp4a => None,
        LinearPath::Auto if io.t == 1 => None,
        _ => k.mma.as_ref(),
    };
    let glu = if mma.is_some() { io.glu } else { 0 };
    let mut t0 = 0;
    while t0 < io.t {
        // The tensor cores take every remaining token in one launch (tiles of `mma_tokens`
        // along grid y; 32-token tiles beat 64: fewer registers, more blocks per SM;
        // BENCHMARKS.md, v9, v12), `dp4a` four at a time.
        let n = if mma.is_some() {
            io.t - t0
        } else {
            (io.t - t0).min(4)
        };
        let (variant, tiles) = mma_shape(n);
        let m = mma.map(|m| &m[variant]);
        let args = linear_args(gpu, w, io, (t0, n), glu);
        let gemm = match (path, &k.gemm) {
            (LinearPath::Gemm(splits), Some(g)) => Some((g, Some(splits).filter(|&s| s > 0))),
            (LinearPath::Mma | LinearPath::Auto, Some(g)) if m.is_some() && g.takes(n, glu) => {
                Some((g, None))
            }
            _ => None,
        };
        if let Some((g, splits)) = gemm {
            g.launch(gpu, w, n, &args, io.accumulate && glu == 0, splits)?;
            t0 += n;
            continue;
        }
        let tile = match (path, &k.mma_tile) {
            (LinearPath::MmaTile(splits), Some(tk)) => tk
                .pick(n, true)
                .map(|f| (f, Some(splits).filter(|&s| s > 0))),
            (LinearPath::Mma | LinearPath::Auto, Some(tk)) if m.is_some() => {
                tk.pick(n, false).map(|f| (f, tk.splits))
            }
            _ => None,
        };
        if let Some((f, splits)) = tile {
            // Every token in one launch, token tiles along y.
            let tiles = (
                strips.div_ceil(TILE_STRIPS),
                n.div_ceil(f.tokens as usize) as u32,
            );
            let shape = (TILE_THREADS, f.smem as u32, f.slots);
            launch_split(gpu, &f.k, tiles, shape, w.kgroups, &args, splits)?;
            t0 += n;
            continue;
        }
        let Some(m) = m else {
            gpu.launch(&k.gemv, (strips, 1, 1), 256, 0, &args)?;
            t0 += n;
            continue;
        };
        // `ternary_mma_*` (two strips per block, tiles along y) for decode-sized passes and
        // wherever its grid runs in one wave: every load of a block in flight at once, the
        // shortest chain. Beyond (prefill) the staged kernel, whose blocks all run at once
        // (BENCHMARKS.md, sessions 13 and 24; [`DIRECT_MAX_ROWS`]).
        let direct = (strips.div_ceil(2), tiles, 1);
        // `ternary_mma_w*` for small passes whose grid fits one wave ([`WideRule`]).
        if let Some((wide, rule)) = &k.mma_wide
            && rule.takes(path, variant, tiles, direct.0, w.kgroups)
        {
            gpu.launch(&wide[variant], direct, WIDE_THREADS, 0, &args)?;
            t0 += n;
            continue;
        }
        let ring = k.mma_ring.as_ref().map(|r| &r[variant]);
        match (path, ring) {
            (LinearPath::MmaDirect, _) | (_, None) => gpu.launch(m, direct, 256, 0, &args)?,
            (
                LinearPath::Mma
                | LinearPath::Auto
                | LinearPath::MmaWide
                | LinearPath::MmaTile(_)
                | LinearPath::Gemm(_),
                Some(_),
            ) if n <= DIRECT_MAX_ROWS || direct.0 * tiles <= m.wave(gpu) => {
                gpu.launch(m, direct, 256, 0, &args)?
            }
            (_, Some(r)) => {
                let grid = (strips.div_ceil(MMA_WARPS), tiles, 1);
                let ks = match path {
                    LinearPath::MmaRing(ks) => Some(ks),
                    _ => None,
                };
                let f = RingKernel::pick(r, grid.0 * tiles, ks);
                gpu.launch(&f.k, grid, 32 * MMA_WARPS * f.ks, f.smem as u32, &args)?
            }
        }
        t0 += n;
    }
    Ok(glu != 0)
}

/// Threads per block of `ternary_mma_w*` (16 warps; its `__launch_bounds__`).
pub(super) const WIDE_THREADS: u32 = 16 * 32;

/// When a product takes `ternary_mma_w*` (16 warps per block) instead of `ternary_mma_*`: where
/// asked for (`LinearPath::MmaWide`, tiles of up to 16 tokens), and for a pass of one token tile
/// wherever its grid of twice-as-large blocks runs in one wave. K over 16 warps instead of 8
/// halves the 128-column groups, each a round trip to memory, that a warp works through. Tiles of
/// up to 8 tokens take it for every such product (2B4T on an H200: qkv, o and down, not gate/up),
/// tiles of 9-16 too, except in steps over the q8 cache, where only products whose 8 warps would
/// each take more than 4 groups (down) do. H200, BENCHMARKS.md session 38, alone at 2-16 rows:
/// down 5.1 -> 4.3 and 7.1 -> 5.8 us, o and qkv -7 to -12%; gate/up in two waves slower (6.6 ->
/// 9.0 us at 16 rows); two tiles (32 rows) no faster. In the step: b2-b16 +2-6%; qkv and o wide at
/// 12-16 rows won 1-4% more than down alone with the f16 cache and lost 5% with q8.
#[derive(Clone, Copy, Debug)]
pub(super) struct WideRule {
    /// Blocks of `ternary_mma_w*` that run at once (0: never taken unless asked for).
    pub(super) wave: u32,
    /// Whether 16-token tiles take it for every product that fits (false: only the long rows).
    pub(super) all16: bool,
}

impl WideRule {
    /// Whether a pass of `tiles` token tiles of kernel variant `variant` (0: 8 tokens, 1: 16,
    /// 2: 32) over `blocks` two-strip blocks of `kgroups` column groups takes the wide kernel.
    pub(super) fn takes(
        &self,
        path: LinearPath,
        variant: usize,
        tiles: u32,
        blocks: u32,
        kgroups: usize,
    ) -> bool {
        match path {
            LinearPath::MmaWide => variant < 2,
            LinearPath::Mma | LinearPath::Auto => {
                tiles == 1
                    && blocks <= self.wave
                    && (variant == 0 || (variant == 1 && (self.all16 || kgroups > 4 * 8)))
            }
            _ => false,
        }
    }
}

/// Passes of up to this many rows take `ternary_mma_*` whatever its grid (gate/up at batch 64
/// ran three waves of it, and still beat the staged kernel: H200, BENCHMARKS.md session 24,
/// batch 64 +3.4%, 48 +0.9%); beyond, only where its grid fits one wave (at 128 rows the staged
/// kernel is 2-25% faster on each of the 2B4T products).
const DIRECT_MAX_ROWS: usize = 64;

/// The arguments of every ternary product kernel, for tokens `t0..t0 + n` of `io`.
pub(super) fn linear_args(
    gpu: &Gpu,
    w: &DevTernary,
    io: &LinearIo,
    (t0, n): (usize, usize),
    glu: i32,
) -> [Arg; 13] {
    let st = &gpu.stream;
    [
        Arg::P(ptr(&w.words, st)),
        Arg::P(ptr(&w.scales, st)),
        Arg::I(w.rows as i32),
        Arg::I(w.kgroups as i32),
        Arg::P(io.codes + (t0 * io.kpad) as u64),
        Arg::I(io.kpad as i32),
        Arg::P(io.xscale + 4 * t0 as u64),
        Arg::P(io.xsum + 4 * t0 as u64),
        Arg::I(n as i32),
        Arg::P(io.out + 4 * (t0 * io.out_stride) as u64),
        Arg::I(io.out_stride as i32),
        Arg::I(io.accumulate as i32),
        Arg::I(glu),
    ]
}

/// `x`'s activations on the device, as the products take them (permuted codes, scales, code
/// sums), and an output buffer for `rows` outputs per activation row.
struct DevActivations {
    codes: CudaSlice<i8>,
    scales: CudaSlice<f32>,
    sums: CudaSlice<i32>,
    out: CudaSlice<f32>,
    kpad: usize,
}

impl DevActivations {
    fn upload(gpu: &Gpu, x: &QuantizedActivations, rows: usize) -> Result<Self, CudaError> {
        let t = x.batch();
        let sums: Vec<i32> = x
            .codes
            .chunks_exact(x.cols.max(1))
            .map(|r| r.iter().map(|&c| c as i32).sum())
            .collect();
        Ok(DevActivations {
            codes: gpu.upload(&pack::permute_codes(&x.codes, t, x.cols))?,
            scales: gpu.upload(&x.scales)?,
            sums: gpu.upload(&sums)?,
            out: gpu.zeros::<f32>(t * rows)?,
            kpad: pack::round_up(x.cols, KGROUP),
        })
    }

    /// The product's addresses: `t` rows into `out`, `rows` apart, not accumulated.
    fn io(&self, gpu: &Gpu, t: usize, rows: usize, glu: i32) -> LinearIo {
        let st = &gpu.stream;
        LinearIo {
            t,
            kpad: self.kpad,
            codes: ptr(&self.codes, st),
            xscale: ptr(&self.scales, st),
            xsum: ptr(&self.sums, st),
            out: ptr(&self.out, st),
            out_stride: rows,
            accumulate: false,
            glu,
        }
    }
}

/// `x` (int8 rows) through the ternary `w` on the GPU with the chosen kernels: the outputs
/// `batch x rows`, computed as the CPU kernels do (`dot / s_x * s_w`). For conformance tests.
/// `glu` (an activation mode, 0 for none): `w`'s rows taken as interleaved gate/up (8 gate rows,
/// then their 8 up rows), and act(gate) * up asked for: the first `rows / 2` outputs of each row
/// are then that, where the path forms it (the returned flag; the tensor-core paths).
pub fn ternary_forward(
    gpu: &Gpu,
    w: &bitnet_core::TernaryMatrix,
    x: &QuantizedActivations,
    path: LinearPath,
    glu: i32,
) -> Result<(Vec<f32>, bool), CudaError> {
    ternary_forward_onto(gpu, w, x, path, glu, None)
}

/// As [`ternary_forward`], the outputs added to `base` (`batch x rows` values already in the
/// output buffer, as the model adds the o and down products to the residual stream) where it is
/// given and `glu` is 0.
pub fn ternary_forward_onto(
    gpu: &Gpu,
    w: &bitnet_core::TernaryMatrix,
    x: &QuantizedActivations,
    path: LinearPath,
    glu: i32,
    base: Option<&[f32]>,
) -> Result<(Vec<f32>, bool), CudaError> {
    let t = x.batch();
    let k = load_kernels(gpu, KvType::F32)?;
    let dw = DevTernary::upload(gpu, std::slice::from_ref(w))?;
    let mut a = DevActivations::upload(gpu, x, w.rows())?;
    let base = base.filter(|_| glu == 0);
    if let Some(base) = base {
        if base.len() != t * w.rows() {
            return Err(CudaError::Invalid(format!(
                "{} base values for {t} x {} outputs",
                base.len(),
                w.rows()
            )));
        }
        a.out = gpu.upload(base)?;
    }
    let mut io = a.io(gpu, t, w.rows(), glu);
    io.accumulate = base.is_some();
    let formed = launch_linear(gpu, &k, path, &dw, &io)?;
    let mut host = vec![0f32; t * w.rows()];
    gpu.stream
        .memcpy_dtoh(&a.out.slice(..t * w.rows()), &mut host)?;
    gpu.sync()?;
    Ok((host, formed))
}

/// Microseconds per product of `x` through `w` for each of `paths` (as [`ternary_forward`]), as
/// a model's step runs them: one launch on each of `copies` uploads of `w` (so that a matrix
/// smaller than the L2 cache is read from memory), captured as one graph (without programmatic
/// dependent launch unless `BITNET_CUDA_PDL=1`: each launch waits for the one before), the
/// graph launched `rounds` times, each timed from the host until it finished; the median round.
/// For the `products` example.
pub fn ternary_timing(
    gpu: &Gpu,
    w: &bitnet_core::TernaryMatrix,
    x: &QuantizedActivations,
    paths: &[LinearPath],
    glu: i32,
    (copies, rounds): (usize, usize),
) -> Result<Vec<f64>, CudaError> {
    let t = x.batch();
    let k = load_kernels(gpu, KvType::F32)?;
    let dw: Vec<DevTernary> = (0..copies.max(1))
        .map(|_| DevTernary::upload(gpu, std::slice::from_ref(w)))
        .collect::<Result<_, _>>()?;
    let a = DevActivations::upload(gpu, x, w.rows())?;
    let io = a.io(gpu, t, w.rows(), glu);
    let mut medians = Vec::with_capacity(paths.len());
    for &path in paths {
        let graph = gpu.capture(|| {
            dw.iter()
                .try_for_each(|d| launch_linear(gpu, &k, path, d, &io).map(|_| ()))
        })?;
        graph.launch()?;
        gpu.sync()?;
        let mut us = Vec::with_capacity(rounds.max(1));
        for _ in 0..rounds.max(1) {
            let started = std::time::Instant::now();
            graph.launch()?;
            gpu.sync()?;
            us.push(started.elapsed().as_secs_f64() * 1e6 / dw.len() as f64);
        }
        us.sort_by(f64::total_cmp);
        medians.push(us[us.len() / 2]);
    }
    Ok(medians)
}

/// Device buffers of one RMSNorm + quantization of `rows` rows of `x` (width `norm.len()`) for
/// the conformance entry points: the inputs uploaded, the codes, scales and code sums zeroed.
struct NormBuffers {
    x: CudaSlice<f32>,
    norm: CudaSlice<f32>,
    codes: CudaSlice<i8>,
    scales: CudaSlice<f32>,
    sums: CudaSlice<i32>,
    rows: usize,
    kpad: usize,
}

impl NormBuffers {
    fn new(gpu: &Gpu, x: &[f32], rows: usize, norm: &[f32]) -> Result<Self, CudaError> {
        let kpad = pack::round_up(norm.len(), KGROUP);
        Ok(Self {
            x: gpu.upload(x)?,
            norm: gpu.upload(norm)?,
            codes: gpu.zeros(rows * kpad)?,
            scales: gpu.zeros(rows)?,
            sums: gpu.zeros(rows)?,
            rows,
            kpad,
        })
    }

    /// The norm's launch over these buffers (no activation: `mode` 0).
    fn io(&self, gpu: &Gpu, eps: f32) -> NormQuant {
        let st = &gpu.stream;
        let cols = self.norm.len();
        NormQuant {
            x: ptr(&self.x, st),
            x_stride: cols,
            weight: ptr(&self.norm, st),
            cols,
            eps,
            mode: 0,
            codes: ptr(&self.codes, st),
            scales: ptr(&self.scales, st),
            sums: ptr(&self.sums, st),
            rows: self.rows,
        }
    }
}

/// RMSNorm then int8 quantization of `rows` rows of `x` on the GPU, as the model's first step of
/// each block runs it: the codes (unpermuted, `rows x cols`) and scales. For conformance tests.
pub fn norm_quant(
    gpu: &Gpu,
    x: &[f32],
    rows: usize,
    weight: &[f32],
    eps: f32,
) -> Result<QuantizedActivations, CudaError> {
    let cols = weight.len();
    let k = load_kernels(gpu, KvType::F32)?;
    let st = &gpu.stream;
    let b = NormBuffers::new(gpu, x, rows, weight)?;
    launch_norm_quant(gpu, &k.norm_quant, &b.io(gpu, eps))?;
    let kpad = b.kpad;
    let mut perm = vec![0i8; rows * kpad];
    let mut sc = vec![0f32; rows];
    st.memcpy_dtoh(&b.codes.slice(..rows * kpad), &mut perm)?;
    st.memcpy_dtoh(&b.scales.slice(..rows), &mut sc)?;
    gpu.sync()?;
    Ok(QuantizedActivations {
        codes: pack::unpermute_codes(&perm, rows, cols).into(),
        scales: sc,
        cols,
    })
}

/// How [`norm_linear_forward`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPath {
    /// The norm kernel, then the product (prefill's two kernels).
    Separate,
    /// One fused kernel (decode, at most 4 rows), weights loaded to registers.
    Fused,
    /// One fused kernel with each block's strips staged in shared memory, where they fit
    /// (else as `Fused`).
    Staged,
    /// As `Staged`, with `w`'s rows taken as interleaved gate/up (`glu_in` in the kernels):
    /// the output is act(gate) * up (activation mode 1 relu², 2 silu), half as wide.
    StagedGlu(i32),
}

/// RMSNorm + quantization of `rows` rows of `x` (width `norm.len()`), then the product with
/// `w`, either fused into one kernel (decode, at most 4 rows) or as the two kernels prefill uses.
/// For conformance tests: every path must give the same outputs bit for bit.
pub fn norm_linear_forward(
    gpu: &Gpu,
    w: &bitnet_core::TernaryMatrix,
    x: &[f32],
    rows: usize,
    norm: &[f32],
    eps: f32,
    path: NormPath,
) -> Result<Vec<f32>, CudaError> {
    let k = load_kernels(gpu, KvType::F32)?;
    let st = &gpu.stream;
    let dw = DevTernary::upload(gpu, std::slice::from_ref(w))?;
    let b = NormBuffers::new(gpu, x, rows, norm)?;
    let nq = b.io(gpu, eps);
    let out = gpu.zeros::<f32>(rows * w.rows())?;
    if path != NormPath::Separate {
        let glu = match path {
            NormPath::StagedGlu(mode) => mode,
            _ => 0,
        };
        let to = (ptr(&out, st), w.rows(), false, glu);
        let done = launch_gemv_norm(gpu, &k, &dw, &nq, to, path != NormPath::Fused)?;
        if done != (glu != 0) {
            return Err(CudaError::Invalid("no staged launch for this shape".into()));
        }
    } else {
        launch_norm_quant(gpu, &k.norm_quant, &nq)?;
        let io = LinearIo {
            t: rows,
            kpad: b.kpad,
            codes: nq.codes,
            xscale: nq.scales,
            xsum: nq.sums,
            out: ptr(&out, st),
            out_stride: w.rows(),
            accumulate: false,
            glu: 0,
        };
        launch_linear(gpu, &k, LinearPath::Dp4a, &dw, &io)?;
    }
    let mut host = vec![0f32; rows * w.rows()];
    st.memcpy_dtoh(&out.slice(..rows * w.rows()), &mut host)?;
    gpu.sync()?;
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_products_take_one_small_tile_where_the_grid_fits_one_wave() {
        // 2B4T on an H200: two 512-thread blocks per SM of 132. Two-strip blocks and column
        // groups: qkv 120 x 20, o 80 x 20, gate/up 432 x 20, down 80 x 54.
        let (f16, q8) = (
            WideRule {
                wave: 264,
                all16: true,
            },
            WideRule {
                wave: 264,
                all16: false,
            },
        );
        let products = [(120, 20), (80, 20), (432, 20), (80, 54)];
        let taken = |rule: &WideRule, rows: usize| -> Vec<bool> {
            let (variant, tiles) = mma_shape(rows);
            products
                .iter()
                .map(|&(b, g)| rule.takes(LinearPath::Auto, variant, tiles, b, g))
                .collect()
        };
        for rows in [2, 8] {
            assert_eq!(taken(&f16, rows), [true, true, false, true]);
            assert_eq!(taken(&q8, rows), [true, true, false, true]);
        }
        assert_eq!(taken(&f16, 16), [true, true, false, true]);
        assert_eq!(taken(&q8, 16), [false, false, false, true]);
        // Two tiles of 16 (32 rows, a lane of batch 64) and more: never.
        for rows in [32, 64, 128] {
            assert_eq!(taken(&f16, rows), [false; 4]);
        }
        // Switched off; and asked for, whatever the grid, in tiles of up to 16 tokens.
        let off = WideRule {
            wave: 0,
            all16: true,
        };
        assert_eq!(taken(&off, 8), [false; 4]);
        assert!(off.takes(LinearPath::MmaWide, 1, 2, 432, 20));
        assert!(!off.takes(LinearPath::MmaWide, 2, 1, 80, 54));
        assert!(!f16.takes(LinearPath::MmaDirect, 0, 1, 80, 54));
    }

    #[test]
    fn fused_norm_takes_single_rows_that_fit() {
        // 2B4T: hidden 2,560, FFN 6,912 (the down product's input).
        assert!(fused_norm(1, 2560) && fused_norm(1, 6912));
        assert!(!fused_norm(2, 2560) && !fused_norm(2, 6912) && !fused_norm(4, 256));
        assert!(!fused_norm(1, FUSED_MAX_COLS + 1));
    }

    #[test]
    fn gate_and_up_interleave_in_groups_of_eight() {
        use bitnet_core::TernaryMatrix;
        // 13 outputs of 3 columns: row r of gate holds codes (r % 3 - 1) and of up their negation,
        // in column 0 only, so that every row says where it came from.
        let (inter, cols) = (13, 3);
        let make = |sign: i8, scale: f32| {
            let codes = (0..inter)
                .flat_map(|r| [sign * (r as i8 % 3 - 1), 0, 0])
                .collect();
            TernaryMatrix::new(inter, cols, codes, scale).unwrap()
        };
        let (gate, up) = (make(1, 0.5), make(-1, 2.0));
        let (codes, scales) = glu_interleave(&gate, &up).unwrap();
        assert_eq!(glu_rows(inter), 32);
        assert_eq!((codes.len(), scales.len()), (32 * cols, 32));
        for c in 0..16 {
            // The kernels' `glu_gate(c)` and the up row 8 further.
            let g = (c >> 3) * 16 + (c & 7);
            let want = |sign: i8| {
                if c < inter {
                    sign * (c as i8 % 3 - 1)
                } else {
                    0
                }
            };
            assert_eq!(codes[g * cols], want(1), "gate {c}");
            assert_eq!(codes[(g + 8) * cols], want(-1), "up {c}");
            if c < inter {
                assert_eq!((scales[g], scales[g + 8]), (0.5, 2.0));
            }
        }
        assert!(codes.chunks(cols).all(|r| r[1..] == [0, 0]));
        let short = TernaryMatrix::new(12, cols, vec![0; 12 * cols], 1.0).unwrap();
        assert!(glu_interleave(&gate, &short).is_err());
    }

    #[test]
    fn token_tiles_and_staged_shared_memory() {
        let tiles: Vec<usize> = [1, 8, 9, 16, 17, 64, 256].map(tiles_index).into();
        assert_eq!(tiles, [0, 0, 1, 1, 2, 2, 2]);
        // Per stage: ks groups of 4 strips' weights (512 bytes each) and 8 * tiles codes rows
        // of 144 bytes; 6 stages with 4 warps per strip, else 4. The largest fits an A100
        // block (163 KB); GPUs that give less take the smaller variants.
        assert_eq!(ring_smem(4, 4), 6 * 4 * (2048 + 32 * 144));
        assert_eq!(ring_smem(1, 1), 4 * (2048 + 8 * 144));
        assert!(ring_smem(4, 4) <= 163 * 1024);
        // Every pass's rows in whole tiles of its variant, none empty: 16-token tiles up to 64
        // rows, 32 beyond.
        for n in 1..=MAX_ROWS {
            let (variant, tiles) = mma_shape(n);
            let per = 8 << variant;
            assert!(
                per * tiles as usize >= n && per * (tiles as usize - 1) < n,
                "{n}"
            );
            assert_eq!(
                per,
                if n <= 8 {
                    8
                } else if n <= 64 {
                    16
                } else {
                    32
                },
                "{n}"
            );
        }
    }

    #[test]
    fn tiled_products_fill_the_gpu_with_splits_of_whole_groups() {
        // The ring's stages, or the sums of the tokens x 128 rows, whichever is larger.
        assert_eq!(tile_smem(64), 4 * (4096 + 64 * 144));
        assert_eq!(tile_smem(16), 4 * (4096 + 16 * 144));
        for t in [16, 32, 64] {
            assert!(tile_smem(t) >= t * 132 * 4);
        }
        // 2B4T's products with 264 resident blocks: qkv (30 row tiles, 20 groups) 7 splits of 3
        // groups; gate/up (108 tiles) 2 of 10; down (20 tiles, 54 groups) 8 of 7.
        assert_eq!(tile_splits(30, 20, 264), 7);
        assert_eq!(tile_splits(108, 20, 264), 2);
        assert_eq!(tile_splits(20, 54, 264), 8);
        // More tiles than slots: one block per tile; never more splits than groups.
        assert_eq!(tile_splits(400, 20, 264), 1);
        assert_eq!(tile_splits(1, 3, 264), 3);
        assert_eq!(tile_splits(0, 0, 264), 1);
    }
}

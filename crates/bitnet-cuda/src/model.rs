//! The whole BitNet forward pass on one GPU: weights uploaded once in the kernels' layout, one
//! batched pass per step over every sequence's new tokens.

use std::sync::Mutex;

use bitnet_core::QuantizedActivations;
use bitnet_core::ops::{FloatMatrix, FloatStorage, Rope};
use bitnet_model::{
    Accelerator, Activation, DeviceCache, DeviceEntry, Logits, ModelConfig, ModelError, Norm, Proj,
    TracePoint, Tracer, WeightSource,
};
use cudarc::driver::CudaSlice;
use half::f16;

use crate::device::{Arg, Attr, Gpu, Kernel, ptr};
use crate::pack::{self, KGROUP, STRIP};
use crate::{CudaError, CudaOptions, HeadType, KvType};

/// Rows (tokens over all sequences) one pass runs; longer batches run in several passes.
pub const MAX_ROWS: usize = 256;
/// Positions per attention chunk (`CHUNK` in the kernels).
const CHUNK: usize = 64;
/// Most candidates the top-k kernel returns per row (`TOPK_MAX` in the kernels); a wider `k`
/// is chosen on the host from the copied logits.
pub const TOPK_MAX: usize = 256;
/// Tokens per tile of the tensor-core products in passes of more than 64 rows ([`mma_tokens`]).
const MMA_TOKENS: usize = 32;

/// The token tile of the tensor-core products (`ternary_mma_*`, `ternary_mma_ring_*`) in a pass
/// of `n` rows: 16 up to 64 rows, so that batched decode steps have twice the blocks (the
/// direct kernel's grids are under one wave there) and a partial tile wastes at most 15 rows;
/// [`MMA_TOKENS`] beyond. H200, BENCHMARKS.md session 19, 32 -> 16: b40 +10%, b48 +8%, b56 +2%,
/// b64 +1.5%; b32 without the tiled kernel +6%.
fn mma_tokens(n: usize) -> usize {
    if n <= 64 { 16 } else { MMA_TOKENS }
}

/// The tensor-core products' kernel variant (index into `Kernels::mma` and `mma_ring`: tiles of
/// 8, 16 or 32 tokens) and number of token tiles for a pass of `n` rows ([`mma_tokens`]).
fn mma_shape(n: usize) -> (usize, u32) {
    let tokens = mma_tokens(n);
    (tiles_index(n.min(tokens)), n.div_ceil(tokens) as u32)
}
/// Strips of 16 rows per block of the staged tensor-core products (`MMA_WARPS` in the kernels).
const MMA_WARPS: u32 = 4;

/// Dynamic shared memory of a staged tensor-core product block: its stages (`MMA_RING_ENTRIES`
/// in the kernels: 6 with 4 warps per strip, else 4) of `ks` groups' weights (512 bytes per
/// strip) and activation codes (144-byte rows of `tiles * 8` tokens).
fn ring_smem(tiles: usize, ks: u32) -> usize {
    let stages = if ks == 4 { 6 } else { 4 };
    stages * ks as usize * (MMA_WARPS as usize * 512 + tiles * 8 * 144)
}

/// One staged tensor-core product kernel (`ternary_mma_ring_{N}_k{KS}`) and its launch shape.
struct RingKernel {
    k: Kernel,
    /// Warps per strip (they split the 128-column groups); `32 * MMA_WARPS * ks` threads.
    ks: u32,
    /// Dynamic shared memory per block.
    smem: usize,
    /// Blocks that run at once on the whole GPU.
    slots: u32,
}

impl RingKernel {
    fn load(gpu: &Gpu, tiles: usize, ks: u32) -> Option<Self> {
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
    fn variants(gpu: &Gpu, tiles: usize) -> Option<Vec<Self>> {
        let v: Vec<Self> = [4, 2, 1]
            .into_iter()
            .filter_map(|ks| Self::load(gpu, tiles, ks))
            .collect();
        v.last().is_some_and(|k| k.ks == 1).then_some(v)
    }

    /// For a grid of `blocks`: `ks` warps per strip where asked (and available), else the most
    /// whose grid still runs in one wave, else the fewest.
    fn pick(variants: &[Self], blocks: u32, ks: Option<u32>) -> &Self {
        let last = &variants[variants.len() - 1];
        if let Some(k) = ks.and_then(|f| variants.iter().find(|k| k.ks == f)) {
            return k;
        }
        variants.iter().find(|k| blocks <= k.slots).unwrap_or(last)
    }
}

/// A ternary matrix (or several stacked) on the device.
pub(crate) struct DevTernary {
    words: CudaSlice<u32>,
    scales: CudaSlice<f32>,
    rows: usize,
    kgroups: usize,
    bytes: usize,
    /// The staged launch of the fused decode product (`gemv_stage`), for one row and for more,
    /// found at the first launch.
    stage: [std::sync::OnceLock<Option<(u32, usize)>>; 2],
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
    fn from_codes(gpu: &Gpu, codes: &[i8], scales: &[f32], cols: usize) -> Result<Self, CudaError> {
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
fn glu_interleave(
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
fn glu_rows(inter: usize) -> usize {
    2 * pack::round_up(inter, 8)
}

/// A float table (embedding or head) on the device.
enum Table {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
    BF16(CudaSlice<u16>),
    I8 {
        values: CudaSlice<i8>,
        scales: CudaSlice<f32>,
    },
}

impl Table {
    fn name(&self) -> &'static str {
        match self {
            Table::F32(_) => "f32",
            Table::F16(_) => "f16",
            Table::BF16(_) => "bf16",
            Table::I8 { .. } => "int8",
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Table::F32(v) => v.len() * 4,
            Table::F16(v) | Table::BF16(v) => v.len() * 2,
            Table::I8 { values, scales } => values.len() + scales.len() * 4,
        }
    }

    /// Uploads `m` as stored (f32/f16/bf16); block-quantized tables are decoded to f16, or to f32
    /// with `f32_only`.
    fn upload(gpu: &Gpu, m: &FloatMatrix, f32_only: bool) -> Result<Self, CudaError> {
        let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();
        if f32_only {
            return Ok(Table::F32(gpu.upload(&decode_all(m))?));
        }
        Ok(match m.storage() {
            FloatStorage::F32(v) => Table::F32(gpu.upload(v)?),
            FloatStorage::F16(v) => Table::F16(gpu.upload(&bits(v))?),
            FloatStorage::F16Mapped(v) => Table::F16(gpu.upload(&bits(v.f16s()))?),
            FloatStorage::BF16(v) => {
                Table::BF16(gpu.upload(&v.iter().map(|h| h.to_bits()).collect::<Vec<_>>())?)
            }
            FloatStorage::Rows(_) => {
                let f = decode_all(m);
                Table::F16(
                    gpu.upload(
                        &f.iter()
                            .map(|&x| f16::from_f32(x).to_bits())
                            .collect::<Vec<_>>(),
                    )?,
                )
            }
        })
    }

    /// Per-row symmetric int8: `w ~ s_row * q`, `s_row = max|w| / 127`.
    fn upload_int8(gpu: &Gpu, m: &FloatMatrix) -> Result<Self, CudaError> {
        let cols = m.cols();
        let mut row = vec![0f32; cols];
        let mut values = Vec::with_capacity(m.rows() * cols);
        let mut scales = Vec::with_capacity(m.rows());
        for r in 0..m.rows() {
            m.row_into(r, &mut row);
            let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales.push(s);
            values.extend(
                row.iter()
                    .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
            );
        }
        Ok(Table::I8 {
            values: gpu.upload(&values)?,
            scales: gpu.upload(&scales)?,
        })
    }

    fn ptr(&self, gpu: &Gpu) -> u64 {
        match self {
            Table::F32(v) => ptr(v, &gpu.stream),
            Table::F16(v) | Table::BF16(v) => ptr(v, &gpu.stream),
            Table::I8 { values, .. } => ptr(values, &gpu.stream),
        }
    }

    /// The CUDA-core head kernel for this table (`head_generic_f32` for widths it cannot take
    /// 8 values at a time).
    fn head_kernel(&self, generic: bool) -> &'static str {
        match self {
            _ if generic => "head_generic_f32",
            Table::F32(_) => "head_f32",
            Table::F16(_) => "head_f16",
            Table::BF16(_) => "head_bf16",
            Table::I8 { .. } => "head_i8",
        }
    }

    /// The per-row scales (int8 tables) or 0.
    fn scales(&self, gpu: &Gpu) -> u64 {
        match self {
            Table::I8 { scales, .. } => ptr(scales, &gpu.stream),
            _ => 0,
        }
    }

    /// The tensor-core head for batches of rows over this table, as (split, head) kernels:
    /// 16-bit and int8 tables whose rows are a multiple of 128 wide, on sm_80+.
    fn head_mma(&self, gpu: &Gpu, cols: usize) -> Option<HeadMma> {
        if !cols.is_multiple_of(128) {
            return None;
        }
        let (split, head) = match self {
            Table::F32(_) => return None,
            Table::F16(_) => ("split_rows_f16", "head_mma_f16"),
            Table::BF16(_) => ("split_rows_bf16", "head_mma_bf16"),
            Table::I8 { .. } => ("split_rows_f16", "head_mma_i8"),
        };
        let head = gpu.optional_function(head)?;
        head.allow_smem(HEAD_MMA_SMEM as usize).ok()?;
        Some(HeadMma {
            split: gpu.optional_function(split)?,
            head,
        })
    }
}

/// The tensor-core head's kernels (`head_mma_*` in the kernels): x split into two 16-bit
/// parts, then the table read once per 64 rows.
struct HeadMma {
    split: Kernel,
    head: Kernel,
}

/// Two stages of 64 rows x 576 bytes (`HM_STAGE` in the kernels).
const HEAD_MMA_SMEM: u32 = 2 * 64 * 576;

/// Rows from which the head runs on the tensor cores (the CUDA-core head reads the table once
/// per 8 rows).
const HEAD_MMA_MIN_ROWS: usize = 9;

/// Device addresses of one head evaluation: `m` rows of `x` (`cols` wide) against the table
/// (`vocab` rows, optional per-row scales) into `logits` (`m` x `vocab`); `xhl` is scratch for
/// `2 * round_up(m, 8) * cols` 16-bit values (x's two parts).
struct HeadIo {
    table: u64,
    scales: u64,
    vocab: usize,
    cols: usize,
    x: u64,
    m: usize,
    xhl: u64,
    logits: u64,
}

/// The head on the tensor cores: x split once (all `m` rows, padded to a multiple of 8), then
/// one launch over every 64-row tile (grid y).
fn launch_head_mma(gpu: &Gpu, k: &HeadMma, io: &HeadIo) -> Result<(), CudaError> {
    let mpad = io.m.div_ceil(8) * 8;
    gpu.launch(
        &k.split,
        (mpad as u32, 1, 1),
        256,
        0,
        &[
            Arg::P(io.x),
            Arg::I(io.m as i32),
            Arg::I(mpad as i32),
            Arg::I(io.cols as i32),
            Arg::P(io.xhl),
        ],
    )?;
    gpu.launch(
        &k.head,
        (io.vocab.div_ceil(256) as u32, io.m.div_ceil(64) as u32, 1),
        256,
        HEAD_MMA_SMEM,
        &[
            Arg::P(io.table),
            Arg::P(io.scales),
            Arg::I(io.vocab as i32),
            Arg::I(io.cols as i32),
            Arg::P(io.xhl),
            Arg::I(io.m as i32),
            Arg::P(io.logits),
        ],
    )
}

/// The head on the CUDA cores: one launch per 8 rows, each reading the whole table (a warp per
/// table row, or per two table rows where there is one row).
fn launch_head_rows(gpu: &Gpu, k: &Kernel, generic: bool, io: &HeadIo) -> Result<(), CudaError> {
    for t0 in (0..io.m).step_by(8) {
        let mm = (io.m - t0).min(8);
        let x = io.x + 4 * (t0 * io.cols) as u64;
        let out = io.logits + 4 * (t0 * io.vocab) as u64;
        let [v, c, xa, ma, oa] = [
            Arg::I(io.vocab as i32),
            Arg::I(io.cols as i32),
            Arg::P(x),
            Arg::I(mm as i32),
            Arg::P(out),
        ];
        // The typed kernels take the per-row scales after the table; `head_generic_f32` has
        // none. Fixed arrays: no allocation per decode step.
        let (typed, plain) = (
            [Arg::P(io.table), Arg::P(io.scales), v, c, xa, ma, oa],
            [Arg::P(io.table), v, c, xa, ma, oa],
        );
        let args: &[Arg] = if generic { &plain } else { &typed };
        // A typed kernel given one row takes two table rows per warp (`head_one`).
        let per_block = if mm == 1 && !generic { 16 } else { 8 };
        gpu.launch(k, (io.vocab.div_ceil(per_block) as u32, 1, 1), 256, 0, args)?;
    }
    Ok(())
}

/// The logits of the rows of `x` (`table.cols()` wide) against `table` stored as the model
/// would store it (`head`), computed by the tensor-core head (`tensor_cores`, for any number of
/// rows; an error where the table does not allow it) or by the CUDA-core one. For conformance
/// tests.
pub fn head_logits(
    gpu: &Gpu,
    table: &FloatMatrix,
    head: HeadType,
    x: &[f32],
    tensor_cores: bool,
) -> Result<Vec<f32>, CudaError> {
    let (vocab, cols) = (table.rows(), table.cols());
    let m = x.len() / cols.max(1);
    let t = match head {
        HeadType::Int8 => Table::upload_int8(gpu, table)?,
        HeadType::Native => Table::upload(gpu, table, false)?,
    };
    let dx = gpu.upload(x)?;
    let xhl = gpu.zeros::<u16>(2 * m.div_ceil(8) * 8 * cols)?;
    let logits = gpu.zeros::<f32>(m * vocab)?;
    let st = &gpu.stream;
    let io = HeadIo {
        table: t.ptr(gpu),
        scales: t.scales(gpu),
        vocab,
        cols,
        x: ptr(&dx, st),
        m,
        xhl: ptr(&xhl, st),
        logits: ptr(&logits, st),
    };
    if tensor_cores {
        let k = t.head_mma(gpu, cols).ok_or_else(|| {
            CudaError::Unavailable(format!(
                "no tensor-core head for a {} table {cols} wide",
                t.name()
            ))
        })?;
        launch_head_mma(gpu, &k, &io)?;
    } else {
        if !cols.is_multiple_of(8) {
            return Err(CudaError::Unavailable(format!(
                "the CUDA-core head needs a multiple of 8 columns, not {cols}"
            )));
        }
        launch_head_rows(gpu, &gpu.function(t.head_kernel(false))?, false, &io)?;
    }
    let mut host = vec![0f32; m * vocab];
    st.memcpy_dtoh(&logits, &mut host)?;
    gpu.sync()?;
    Ok(host)
}

fn decode_all(m: &FloatMatrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows() * m.cols()];
    for (r, row) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.row_into(r, row);
    }
    out
}

struct DevLayer {
    attn_norm: CudaSlice<f32>,
    attn_sub_norm: CudaSlice<f32>,
    ffn_norm: CudaSlice<f32>,
    ffn_sub_norm: CudaSlice<f32>,
    qkv: DevTernary,
    o: DevTernary,
    gate_up: DevTernary,
    down: DevTernary,
}

/// One kernel instantiated per row width: `(values per thread, kernel)`, narrowest first (the
/// kernels' `FOR_EACH_PER`).
struct ByWidth(Vec<(usize, Kernel)>);

/// Values per thread of the register-path instantiations, as `FOR_EACH_PER` in the kernels.
const NORM_PER_THREAD: [usize; 7] = [4, 8, 10, 12, 16, 20, 28];

/// Threads of a norm block (`NW * 32` in the kernels).
const NORM_THREADS: usize = 256;

impl ByWidth {
    fn load(gpu: &Gpu, stem: &str) -> Result<Self, CudaError> {
        NORM_PER_THREAD
            .iter()
            .map(|&p| Ok((p, gpu.function(&format!("{stem}_p{p}"))?)))
            .collect::<Result<_, CudaError>>()
            .map(Self)
    }

    /// Lets every instantiation take up to `bytes` of dynamic shared memory, where the device
    /// allows (each keeps its default elsewhere: `Kernel::dynamic_smem_cap` says which).
    fn allow_smem(self, bytes: usize) -> Self {
        for (_, k) in &self.0 {
            let _ = k.allow_smem(bytes);
        }
        self
    }

    /// The narrowest instantiation that holds a row of `cols` values in its 256 threads' registers
    /// (the widest one for wider rows: its strided loops take them).
    fn for_cols(&self, cols: usize) -> &Kernel {
        let fits = self.0.iter().find(|(p, _)| p * NORM_THREADS >= cols);
        let (_, k) = fits.or(self.0.last()).expect("at least one instantiation");
        k
    }
}

struct Kernels {
    embed: Kernel,
    /// RMSNorm + quantization (`norm_quant_p*`).
    norm_quant: ByWidth,
    final_norm: Kernel,
    gemv: Kernel,
    /// RMSNorm + quantization fused into the dp4a product (decode; `ternary_gemv_norm_p*`), and
    /// its one-token instantiation (`ternary_gemv_norm1_p*`).
    gemv_norm: ByWidth,
    gemv_norm1: ByWidth,
    /// `ternary_mma_{1,2,4}` (sm_80+): tiles of 8, 16 and 32 tokens, K split over 8 warps.
    mma: Option<[Kernel; 3]>,
    /// `ternary_mma_ring_{1,2,4}_k*`: the same tiles staged through shared memory, each in the
    /// variants of 4, 2 and 1 warps per strip that the device can run.
    mma_ring: Option<[Vec<RingKernel>; 3]>,
    /// `ternary_mma_tile_*` (sm_90): products of [`TILE_MIN_ROWS`] to [`TILE_MAX_ROWS`] rows.
    mma_tile: Option<MmaTile>,
    rope_kv: Kernel,
    /// Attention in 256-thread blocks (`attn_vec_*`) and in 128-thread blocks (`attn_vec4_*`).
    attn_part: Kernel,
    attn_part4: Kernel,
    /// The 128-thread attention on the tensor cores (`attn_mma_f16_h*`), where the cache, the
    /// head size and the device allow it (see [`attn_mma_kernel`]); it replaces `attn_part4`.
    attn_mma: Option<Kernel>,
    /// Batched decode attention on the tensor cores split over each row's chunks
    /// (`attn_split{8,4,4a}_f16_h*`; same conditions as `attn_mma`).
    attn_split: Option<AttnSplit>,
    /// Decode attention of up to [`ATTN_ONE_ROWS`] rows in thread-block clusters (`attn_one_*`,
    /// sm_90), where the
    /// cache, the query heads per kv head and the device allow it (see [`attn_one_kernel`]).
    attn_one: Option<AttnOne>,
    head: Kernel,
    /// The head for batches on the tensor cores, where the table allows it.
    head_mma: Option<HeadMma>,
    argmax: Kernel,
    /// `argmax_cluster` (sm_90): the same choice by a cluster of [`ARGMAX_CLUSTER`] blocks per row.
    argmax_cluster: Option<Kernel>,
    top_k: Kernel,
    /// The persistent decode step (`decode_step_*`, one launch for every layer; sm_80+).
    decode_step: Option<Kernel>,
}

/// The persistent decode step's per-layer table and launch shape (see `decode_step_body` in
/// the kernels).
struct Mega {
    table: CudaSlice<u64>,
    grid: u32,
    smem: u32,
    /// Whether it runs (`BITNET_CUDA_MEGA=1`, [`CudaModel::set_persistent_decode`]); cleared
    /// for good when the driver refuses the launch.
    on: std::sync::atomic::AtomicBool,
    /// Where the two weight stages start in dynamic shared memory (after attention's
    /// scratch), and each one's length in 16-byte units.
    stage: (u32, u32),
    /// The grid barrier: `[arrivals, generation]`.
    bar: CudaSlice<u32>,
    /// `BITNET_CUDA_MEGA_STAMPS=1`: block 0's timer at each barrier's arrival and departure,
    /// then per product the running sums of its norm, wait and product times; summed per phase
    /// over the steps and printed when the model is dropped.
    stamps: Option<(CudaSlice<u64>, Mutex<Stamps>)>,
}

/// Summed phase times of the persistent step: each phase's own work and its barrier wait (block
/// 0's view), and the number of steps.
type Stamps = ([u64; 6], [u64; 6], u64, [u64; 12]);

impl Mega {
    /// Adds the last step's phase times (after the step has finished).
    fn settle_stamps(&self, gpu: &Gpu, layers: usize) -> Result<(), CudaError> {
        let Some((buf, totals)) = &self.stamps else {
            return Ok(());
        };
        // Start, then per barrier (the embedding's, then five per layer) arrival and departure.
        let n = 1 + 2 * (1 + 5 * layers);
        let mut host = vec![0u64; n + 12];
        gpu.stream.memcpy_dtoh(buf, &mut host)?;
        gpu.sync()?;
        if let Ok(mut t) = totals.lock() {
            t.3.copy_from_slice(&host[n..]);
            for (i, w) in host[1..n].chunks_exact(2).enumerate() {
                let phase = if i == 0 { 0 } else { 1 + (i - 1) % 5 };
                t.0[phase] += w[0].saturating_sub(host[2 * i]);
                t.1[phase] += w[1].saturating_sub(w[0]);
            }
            t.2 += 1;
        }
        Ok(())
    }
}

impl Drop for Mega {
    fn drop(&mut self) {
        let Some((_, totals)) = &self.stamps else {
            return;
        };
        let Ok(t) = totals.lock() else { return };
        let steps = t.2 as f64;
        if steps == 0.0 {
            return;
        }
        let names = ["embed", "qkv", "attention", "o", "gate/up", "down"];
        let all: u64 = t.0.iter().chain(&t.1).sum();
        eprintln!(
            "persistent decode step, {} steps: {:.1} us per step (block 0: work | barrier)",
            t.2,
            all as f64 / steps / 1e3
        );
        for ((n, w), b) in names.iter().zip(t.0).zip(t.1) {
            eprintln!(
                "  {n:<10} {:>8.1} | {:>8.1} us per step",
                w as f64 / steps / 1e3,
                b as f64 / steps / 1e3
            );
        }
        for (n, v) in ["qkv", "o", "gate/up", "down"]
            .iter()
            .zip(t.3.chunks_exact(3))
        {
            eprintln!(
                "  {n:<10} norm {:.1} wait {:.1} product {:.1} us per step",
                v[0] as f64 / steps / 1e3,
                v[1] as f64 / steps / 1e3,
                v[2] as f64 / steps / 1e3
            );
        }
    }
}

/// The kernels' `mode` for the FFN's `act(gate) * up` (1 relu2, 2 SiLU).
fn glu_mode(a: Activation) -> i32 {
    match a {
        Activation::Relu2 => 1,
        Activation::Silu => 2,
    }
}

/// Threads per attention block for a pass of `rows` rows. Decode steps of one row: 256
/// (`attn_vec_*`, the persistent step's block size, so that both sum the warps' partial outputs
/// in the same order; 4-6% faster at batch 1 than the 128-thread vector kernel, and level with
/// the tensor-core one). Everything else: 128, on the tensor cores where `mma` (batch 16 +6%,
/// batch 64 +8%, pp512 +3% over the vector kernels: BENCHMARKS.md, session 11); without them,
/// decode steps of under 32 rows take 256 (level at batch 16) and the rest 128 (+10% at batch
/// 64; 256 lost 13% at pp512: v10, v11). On sm_90, decode steps of up to [`ATTN_ONE_ROWS`] rows
/// take the 256-thread cluster kernel instead, whatever this says; the other decode steps of
/// 128 take the split tensor-core kernel ([`AttnSplit`]) where it loaded.
fn attn_block(decode: bool, rows: usize, mma: bool) -> u32 {
    if decode && (rows == 1 || (rows < 32 && !mma)) {
        Kernel::WAVE_BLOCK
    } else {
        128
    }
}

/// Whether the tensor-core attention kernels (`attn_mma_*`, `attn_split*`) take a model: an f16
/// cache, `head_dim` 32, 64 or 128 and at most 4 query heads per key/value head.
fn tensor_core_attention(kv: KvType, head_dim: usize, group: usize) -> bool {
    kv == KvType::F16 && matches!(head_dim, 32 | 64 | 128) && group <= 4
}

/// The tensor-core attention for 128-thread blocks (`attn_mma_f16_h*`, sm_80+), where
/// [`tensor_core_attention`] allows it; `None` otherwise.
fn attn_mma_kernel(gpu: &Gpu, kv: KvType, head_dim: usize, group: usize) -> Option<Kernel> {
    tensor_core_attention(kv, head_dim, group)
        .then(|| gpu.optional_function(&format!("attn_mma_f16_h{head_dim}")))
        .flatten()
}

/// The split tensor-core attention in blocks of `shape` (`attn_split{4,8,4a}_f16_h*`, sm_80+),
/// where [`tensor_core_attention`] allows it; `None` otherwise. Its dynamic shared memory is
/// `attn_mma`'s for blocks of `shape.threads()`.
fn attn_split_kernel(
    gpu: &Gpu,
    kv: KvType,
    head_dim: usize,
    group: usize,
    shape: SplitBlock,
) -> Option<Kernel> {
    let name = format!("attn_split{}_f16_h{head_dim}", shape.suffix());
    tensor_core_attention(kv, head_dim, group)
        .then(|| gpu.optional_function(&name))
        .flatten()
}

/// The blocks of the split attention (the discriminant is the index in `SplitBlock::ALL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitBlock {
    /// 8 warps, two chunks at a time (one block per SM at head size 128).
    Eight = 0,
    /// 4 warps that load each chunk's keys and values into the registers the previous one
    /// leaves (three blocks per SM at head size 128).
    Four = 1,
    /// 4 warps with the next chunk's keys and values in a second set of registers (two per SM).
    FourAhead = 2,
}

impl SplitBlock {
    /// Every shape, in the order of [`AttnSplit`]'s kernels.
    const ALL: [SplitBlock; 3] = [SplitBlock::Eight, SplitBlock::Four, SplitBlock::FourAhead];

    /// The kernels' name part (`attn_split{8,4,4a}_*`), also `BITNET_CUDA_ATTN_WARPS`'s value.
    fn suffix(self) -> &'static str {
        match self {
            SplitBlock::Eight => "8",
            SplitBlock::Four => "4",
            SplitBlock::FourAhead => "4a",
        }
    }

    /// Threads per block.
    pub fn threads(self) -> u32 {
        match self {
            SplitBlock::Eight => 256,
            SplitBlock::Four | SplitBlock::FourAhead => 128,
        }
    }
}

/// The split attention's splits per row, where a step's blocks would leave SMs idle, are at most
/// the chunks it launches (a power of two in a captured graph: the rows' longest has more than
/// half of them) over this.
const ATTN_SPLIT_MIN_CHUNKS: usize = 16;

/// The split decode attention (its three block shapes) and how a step uses it.
struct AttnSplit {
    /// The kernels and their dynamic shared memory, in the order of [`SplitBlock::ALL`].
    kernels: [(Kernel, u32); 3],
    /// Streaming multiprocessors and key/value heads (see [`split_shape`]).
    sms: usize,
    n_kv: usize,
    /// `BITNET_CUDA_ATTN_SPLITS=N` and `BITNET_CUDA_ATTN_WARPS=8|4|4a`: N splits per row and
    /// that block shape whatever the step (for measurements).
    splits: Option<usize>,
    shape: Option<SplitBlock>,
}

impl AttnSplit {
    fn new(gpu: &Gpu, kv: KvType, c: &ModelConfig) -> Option<Self> {
        let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
        let env = |name: &str| std::env::var(name).ok();
        let kernel = |shape: SplitBlock| {
            let smem = attn_smem_for(group, hd, shape.threads()) as u32;
            Some((attn_split_kernel(gpu, kv, hd, group, shape)?, smem))
        };
        let [eight, four, ahead] = SplitBlock::ALL.map(kernel);
        Some(AttnSplit {
            kernels: [eight?, four?, ahead?],
            sms: gpu.sm_count() as usize,
            n_kv: c.n_kv_heads,
            splits: env("BITNET_CUDA_ATTN_SPLITS")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0),
            shape: env("BITNET_CUDA_ATTN_WARPS")
                .and_then(|v| SplitBlock::ALL.into_iter().find(|s| s.suffix() == v)),
        })
    }

    /// The kernel, block size, shared memory and splits per row for a decode step of `rows`
    /// rows that launches `chunks` chunks ([`split_shape`]).
    fn launch(&self, rows: usize, chunks: usize) -> (&Kernel, u32, u32, usize) {
        let (shape, splits) = split_shape(rows * self.n_kv, self.sms, chunks);
        let shape = self.shape.unwrap_or(shape);
        let (k, smem) = &self.kernels[shape as usize];
        (k, shape.threads(), *smem, self.splits.unwrap_or(splits))
    }
}

/// The split attention's block shape and splits per row for `pairs` (row, kv head) pairs on
/// `sms` SMs, a step that launches `chunks` chunks: blocks of 8 warps where each pair can have an
/// SM to itself, 4 warps with the next chunk in a second set of registers where two blocks per
/// SM hold every pair, else 4 warps that reuse their registers (three per SM: one wave at batch
/// 64 of 2B4T); one split per row unless the blocks leave SMs idle, and then at most one per
/// [`ATTN_SPLIT_MIN_CHUNKS`] chunks. H200, BENCHMARKS.md session 17: at depth 512 every split
/// more lost at batch 10-64; at depth 2048, batch 4 gained 13% from 4 splits, batch 16 lost 12%
/// from 2.
fn split_shape(pairs: usize, sms: usize, chunks: usize) -> (SplitBlock, usize) {
    let pairs = pairs.max(1);
    let shape = if pairs <= sms {
        SplitBlock::Eight
    } else if pairs <= 2 * sms {
        SplitBlock::FourAhead
    } else {
        SplitBlock::Four
    };
    let splits = (sms / pairs).min(chunks / ATTN_SPLIT_MIN_CHUNKS).max(1);
    (shape, splits)
}

/// The cluster decode attention (`attn_one_*`) and the most chunks (blocks of one cluster) it
/// takes; steps that need more take `attn_vec_*` or `attn_mma_*`.
struct AttnOne {
    kernel: Kernel,
    /// Its dynamic shared memory per (256-thread) block.
    smem: u32,
    max_chunks: usize,
    /// Decode steps of up to this many rows take it ([`ATTN_ONE_ROWS`];
    /// `BITNET_CUDA_ATTN_ONE_ROWS=N` for measurements).
    max_rows: usize,
}

/// Decode steps of up to this many rows take the cluster attention: against the tensor-core one
/// at depth 512 (H200, BENCHMARKS.md "Session 15"), batch 2 +11%, 4 +7.5%, 8 +1.5%, 16 -8%,
/// 64 -30% (a vector kernel per row, where the tensor cores serve the rows of a chunk at once).
const ATTN_ONE_ROWS: usize = 8;

/// Decode steps of more rows than this are launched with programmatic dependent launch (sm_90,
/// unless `BITNET_CUDA_PDL` says otherwise). Same call on an H200 (BENCHMARKS.md, session 16),
/// PDL against none: batch 1 -3.5%, 8 and 32 level, 16 +3-4%, 64 level, prefill -1.3%.
const PDL_ROWS: usize = 8;

/// The cluster attention for small decode steps (`attn_one_{f16,f32}_g*`, sm_90): 1, 2, 4 or
/// 8 query heads per key/value head, and a device that places clusters of at least 8 of its
/// blocks; `None` otherwise. Same results as `attn_vec_*`, bit for bit.
fn attn_one_kernel(gpu: &Gpu, kv: KvType, head_dim: usize, group: usize) -> Option<AttnOne> {
    if !matches!(group, 1 | 2 | 4 | 8) {
        return None;
    }
    let sfx = match kv {
        KvType::F16 => "f16",
        KvType::F32 => "f32",
    };
    let kernel = gpu.optional_function(&format!("attn_one_{sfx}_g{group}"))?;
    let block = Kernel::WAVE_BLOCK;
    let smem = attn_smem_for(group, head_dim, block);
    let limit = kernel.cluster_limit(gpu, block, smem);
    let max_rows = std::env::var("BITNET_CUDA_ATTN_ONE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ATTN_ONE_ROWS);
    (limit >= 8).then_some(AttnOne {
        kernel,
        smem: smem as u32,
        max_chunks: limit as usize,
        max_rows,
    })
}

/// Dynamic shared memory of one attention block of `block` threads: the query heads, their
/// chunk scores and each warp's partial outputs.
fn attn_smem(c: &ModelConfig, block: u32) -> usize {
    attn_smem_for(c.n_heads / c.n_kv_heads, c.head_dim, block)
}

/// [`attn_smem`] for `group` query heads per key/value head of `head_dim`.
fn attn_smem_for(group: usize, head_dim: usize, block: u32) -> usize {
    let warps = block as usize / 32;
    (group * head_dim * (1 + warps) + group * CHUNK) * 4
}

impl Mega {
    /// The table and launch shape, or `None` where a row is wider than the fused kernels take
    /// or the driver cannot place the blocks. It runs only once turned on (`BITNET_CUDA_MEGA=1`
    /// or [`CudaModel::set_persistent_decode`]): measured slower than one kernel per
    /// operation (BENCHMARKS.md, v10). `BITNET_CUDA_MEGA_GRID=N`
    /// caps the grid at N blocks (for measurements).
    fn build(
        gpu: &Gpu,
        k: &Kernel,
        c: &ModelConfig,
        layers: &[DevLayer],
        embed: &Table,
    ) -> Result<Option<Self>, CudaError> {
        let widths = [c.hidden_size, c.q_dim(), c.intermediate_size];
        if matches!(embed, Table::I8 { .. })
            || layers.is_empty()
            || widths.iter().any(|&w| w > FUSED_MAX_COLS)
        {
            return Ok(None);
        }
        // Two blocks per SM where their shared memory fits, else one: attention's scratch and
        // two stages, each holding one block's strips of the largest product.
        let sms = gpu.sm_count();
        let attn = pack::round_up(attn_smem(c, Kernel::WAVE_BLOCK), 16);
        let cap = std::env::var("BITNET_CUDA_MEGA_GRID")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        let mut shape = None;
        for per_sm in [2, 1] {
            let grid = (sms * per_sm).min(cap).max(1) as usize;
            let stage = layers
                .iter()
                .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down])
                .map(|w| w.rows.div_ceil(STRIP).div_ceil(grid) * w.kgroups * 512)
                .max()
                .unwrap_or(0);
            let smem = attn + 2 * stage;
            if k.allow_smem(smem).is_ok()
                && k.resident(gpu, Kernel::WAVE_BLOCK, smem) as usize >= grid
            {
                shape = Some((grid as u32, smem, attn, stage / 16));
                break;
            }
        }
        let Some((grid, smem, attn, stage_len)) = shape else {
            return Ok(None);
        };
        let st = &gpu.stream;
        let lin = |w: &DevTernary| {
            [
                ptr(&w.words, st),
                ptr(&w.scales, st),
                w.rows as u64 | (w.kgroups as u64) << 32,
            ]
        };
        let mut table = Vec::with_capacity(16 * layers.len());
        for l in layers {
            for w in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                table.extend(lin(w));
            }
            for n in [&l.attn_norm, &l.attn_sub_norm, &l.ffn_norm, &l.ffn_sub_norm] {
                table.push(ptr(n, st));
            }
        }
        if std::env::var("BITNET_CUDA_VERBOSE").is_ok_and(|v| v == "1") {
            eprintln!(
                "persistent decode step: {grid} blocks of {} threads, {smem} bytes of shared memory each",
                Kernel::WAVE_BLOCK
            );
        }
        let stamps = if std::env::var("BITNET_CUDA_MEGA_STAMPS").is_ok_and(|v| v == "1") {
            Some((
                gpu.zeros(1 + 2 * (1 + 5 * layers.len()) + 12)?,
                Mutex::new(([0; 6], [0; 6], 0, [0; 12])),
            ))
        } else {
            None
        };
        Ok(Some(Self {
            table: gpu.upload(&table)?,
            grid,
            smem: smem as u32,
            on: std::sync::atomic::AtomicBool::new(
                std::env::var("BITNET_CUDA_MEGA").is_ok_and(|v| v == "1"),
            ),
            stage: (attn as u32, stage_len as u32),
            bar: gpu.zeros(2)?,
            stamps,
        }))
    }
}

/// Where a pass's results go.
enum Out<'a> {
    /// Logit rows, appended.
    Logits(&'a mut Vec<f32>),
    /// Greedy token ids, appended.
    Greedy(&'a mut Vec<u32>),
    /// The `k` best `(id, logit)` of each wanted row, appended.
    TopK(usize, &'a mut Vec<(u32, f32)>),
}

/// Per-pass buffers, sized once for [`MAX_ROWS`].
struct Scratch {
    /// u32 parameters: tokens, positions, sequence of each row, wanted rows, sequence table.
    params: CudaSlice<u32>,
    host_params: Vec<u32>,
    h: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    gate_up: CudaSlice<f32>,
    codes: CudaSlice<i8>,
    xscale: CudaSlice<f32>,
    xsum: CudaSlice<i32>,
    part: CudaSlice<f32>,
    /// Per (row, kv head): attention chunks finished (the last one merges; reset by it).
    counters: CudaSlice<u32>,
    normed: CudaSlice<f32>,
    /// The head's input split into two 16-bit parts (tensor-core head).
    xhl: CudaSlice<u16>,
    logits: CudaSlice<f32>,
    tokens_out: CudaSlice<u32>,
    /// Top-k candidates of each wanted row (`TOPK_MAX` per row): ids and logits, and their
    /// host copies.
    top_ids: CudaSlice<u32>,
    top_vals: CudaSlice<f32>,
    host_top: (Vec<u32>, Vec<f32>),
    /// Captured decode steps by batch size and attention chunks (a power of two).
    graphs: std::collections::HashMap<(usize, usize), Graph>,
    /// A step's rows (token, position, sequence), sequences (cache address, capacity) and
    /// wanted rows, reused across steps.
    lists: StepLists,
}

/// A step's rows, sequences and wanted rows (`Scratch::lists`).
type StepLists = (Vec<(u32, u32, u32)>, Vec<(u64, usize)>, Vec<u32>);

/// A captured CUDA graph. Graphs are not internally synchronized; this one is only touched under
/// the model's scratch lock.
struct Graph(cudarc::driver::CudaGraph);

// SAFETY: used only while holding the `Mutex<Scratch>` that owns it (see above).
unsafe impl Send for Graph {}

// Offsets into the parameter buffer.
const P_TOKENS: usize = 0;
const P_POS: usize = MAX_ROWS;
const P_SEQ: usize = 2 * MAX_ROWS;
const P_WANTED: usize = 3 * MAX_ROWS;
const P_SEQTAB: usize = 4 * MAX_ROWS;
/// Per row: its sequence's entry of the table at P_SEQTAB (the attention kernels' `seq = null`
/// form, one load closer to the cache).
const P_ROWTAB: usize = 4 * MAX_ROWS + 3 * MAX_ROWS;
const P_LEN: usize = P_ROWTAB + 3 * MAX_ROWS;

/// The model on a GPU.
pub struct CudaModel {
    gpu: Gpu,
    config: ModelConfig,
    opts: CudaOptions,
    k: Kernels,
    layers: Vec<DevLayer>,
    embed: Table,
    /// `None`: the embedding is the head.
    head: Option<Table>,
    head_generic: bool,
    output_norm: CudaSlice<f32>,
    rope_cos: CudaSlice<f32>,
    rope_sin: CudaSlice<f32>,
    max_chunks: usize,
    scratch: Mutex<Scratch>,
    weight_bytes: u64,
    /// Whether decode steps replay CUDA graphs (`BITNET_CUDA_GRAPHS=0` turns them off).
    graphs: bool,
    /// The persistent single-sequence decode step, where the shapes allow it (off unless
    /// `BITNET_CUDA_MEGA=1`).
    mega: Option<Mega>,
}

/// One sequence's keys and values on the GPU: `[layer][k|v][capacity][kv_dim]`.
pub struct CudaKv {
    buf: CudaSlice<u8>,
    addr: u64,
    capacity: usize,
    per_position: usize,
    ordinal: usize,
}

impl DeviceCache for CudaKv {
    fn bytes_per_position(&self) -> usize {
        self.per_position
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl CudaKv {
    /// Bytes held on the device.
    pub fn device_bytes(&self) -> usize {
        self.buf.len()
    }
}

fn dev(e: CudaError) -> ModelError {
    ModelError::Device(e.to_string())
}

impl CudaModel {
    /// Uploads every weight of `src` to the GPU named in `opts`.
    pub fn load(src: &dyn WeightSource, opts: CudaOptions) -> Result<Self, ModelError> {
        let gpu = Gpu::open(opts.ordinal).map_err(dev)?;
        Self::load_on(gpu, src, opts)
    }

    fn load_on(gpu: Gpu, src: &dyn WeightSource, opts: CudaOptions) -> Result<Self, ModelError> {
        let c = src.config().clone();
        // The attention kernel's limits (BitNet b1.58 2B4T: head_dim 128, 4 heads per kv head).
        if !c.head_dim.is_multiple_of(4) || c.head_dim > 128 {
            return Err(ModelError::Config(format!(
                "head_dim {} is not supported on the GPU (multiples of 4 up to 128 are)",
                c.head_dim
            )));
        }
        if c.n_heads / c.n_kv_heads > 8 {
            return Err(ModelError::Config(
                "more than 8 query heads per key/value head is not supported on the GPU".into(),
            ));
        }
        let mut k = load_kernels(&gpu, opts.kv).map_err(dev)?;
        if std::env::var("BITNET_CUDA_ATTN_MMA").map_or(true, |v| v != "0") {
            k.attn_mma = attn_mma_kernel(&gpu, opts.kv, c.head_dim, c.n_heads / c.n_kv_heads);
        }
        if std::env::var("BITNET_CUDA_ATTN_SPLIT").map_or(true, |v| v != "0") {
            k.attn_split = AttnSplit::new(&gpu, opts.kv, &c);
        }
        if std::env::var("BITNET_CUDA_ATTN_ONE").map_or(true, |v| v != "0") {
            k.attn_one = attn_one_kernel(&gpu, opts.kv, c.head_dim, c.n_heads / c.n_kv_heads);
        }
        let up = |v: &[f32]| gpu.upload(v).map_err(dev);
        let mut layers = Vec::with_capacity(c.n_layers);
        let mut weight_bytes = 0usize;
        for i in 0..c.n_layers {
            let t = |p: Proj| src.ternary(i, p);
            let qkv =
                DevTernary::upload(&gpu, &[t(Proj::Q)?, t(Proj::K)?, t(Proj::V)?]).map_err(dev)?;
            let o = DevTernary::upload(&gpu, &[t(Proj::O)?]).map_err(dev)?;
            let gate_up =
                DevTernary::upload_glu(&gpu, &t(Proj::Gate)?, &t(Proj::Up)?).map_err(dev)?;
            let down = DevTernary::upload(&gpu, &[t(Proj::Down)?]).map_err(dev)?;
            weight_bytes += qkv.bytes + o.bytes + gate_up.bytes + down.bytes;
            layers.push(DevLayer {
                attn_norm: up(&src.norm(i, Norm::Attn)?)?,
                attn_sub_norm: up(&src.norm(i, Norm::AttnSub)?)?,
                ffn_norm: up(&src.norm(i, Norm::Ffn)?)?,
                ffn_sub_norm: up(&src.norm(i, Norm::FfnSub)?)?,
                qkv,
                o,
                gate_up,
                down,
            });
        }
        let embed_m = src.embedding()?;
        let head_m = src.head()?;
        // The vectorized head reads 8 values at a time; other widths use the generic f32 one.
        let head_generic = !c.hidden_size.is_multiple_of(8);
        let embed = Table::upload(&gpu, &embed_m, false).map_err(dev)?;
        let head = match (&head_m, opts.head) {
            (_, _) if head_generic => {
                Some(Table::upload(&gpu, head_m.as_ref().unwrap_or(&embed_m), true).map_err(dev)?)
            }
            (Some(h), HeadType::Native) => Some(Table::upload(&gpu, h, false).map_err(dev)?),
            (None, HeadType::Native) => None,
            (h, HeadType::Int8) => {
                Some(Table::upload_int8(&gpu, h.as_ref().unwrap_or(&embed_m)).map_err(dev)?)
            }
        };
        weight_bytes += head.as_ref().unwrap_or(&embed).bytes();

        // RoPE tables computed exactly as the CPU path does.
        let ctx = opts.max_context.min(c.context_length).max(1);
        let rope = Rope::new(c.head_dim, c.rope_theta);
        let half = c.head_dim / 2;
        let (mut cos, mut sin) = (vec![0f32; ctx * half], vec![0f32; ctx * half]);
        for p in 0..ctx {
            for i in 0..half {
                let (sn, cs) = rope.sin_cos(p, i);
                cos[p * half + i] = cs;
                sin[p * half + i] = sn;
            }
        }
        let max_chunks = ctx.div_ceil(CHUNK);
        let kpad_max = pack::round_up(
            c.hidden_size.max(c.q_dim()).max(c.intermediate_size),
            KGROUP,
        );
        let qkv_dim = c.q_dim() + 2 * c.kv_dim();
        let scratch = Scratch {
            params: gpu.zeros::<u32>(P_LEN).map_err(dev)?,
            host_params: vec![0u32; P_LEN],
            h: gpu.zeros(MAX_ROWS * c.hidden_size).map_err(dev)?,
            qkv: gpu.zeros(MAX_ROWS * qkv_dim).map_err(dev)?,
            attn: gpu.zeros(MAX_ROWS * c.q_dim()).map_err(dev)?,
            gate_up: gpu
                .zeros(MAX_ROWS * glu_rows(c.intermediate_size))
                .map_err(dev)?,
            codes: gpu.zeros(MAX_ROWS * kpad_max).map_err(dev)?,
            xscale: gpu.zeros(MAX_ROWS).map_err(dev)?,
            xsum: gpu.zeros(MAX_ROWS).map_err(dev)?,
            part: gpu
                .zeros(MAX_ROWS * c.n_heads * max_chunks * (c.head_dim + 2))
                .map_err(dev)?,
            counters: gpu.zeros(MAX_ROWS * c.n_kv_heads).map_err(dev)?,
            normed: gpu.zeros(MAX_ROWS * c.hidden_size).map_err(dev)?,
            xhl: gpu.zeros(2 * MAX_ROWS * c.hidden_size).map_err(dev)?,
            logits: gpu.zeros(MAX_ROWS * c.vocab_size).map_err(dev)?,
            tokens_out: gpu.zeros(MAX_ROWS).map_err(dev)?,
            top_ids: gpu.zeros(MAX_ROWS * TOPK_MAX).map_err(dev)?,
            top_vals: gpu.zeros(MAX_ROWS * TOPK_MAX).map_err(dev)?,
            host_top: (vec![0; MAX_ROWS * TOPK_MAX], vec![0.0; MAX_ROWS * TOPK_MAX]),
            graphs: Default::default(),
            lists: Default::default(),
        };
        let profiling = gpu.profiling();
        let mega = match &k.decode_step {
            Some(step) => Mega::build(&gpu, step, &c, &layers, &embed).map_err(dev)?,
            None => None,
        };
        let model = Self {
            output_norm: up(&src.output_norm()?)?,
            rope_cos: up(&cos)?,
            rope_sin: up(&sin)?,
            k: Kernels {
                embed: gpu
                    .function(match embed {
                        Table::F32(_) => "embed_f32",
                        Table::F16(_) => "embed_f16",
                        _ => "embed_bf16",
                    })
                    .map_err(dev)?,
                head: gpu
                    .function(head.as_ref().unwrap_or(&embed).head_kernel(head_generic))
                    .map_err(dev)?,
                head_mma: (!head_generic)
                    .then(|| {
                        head.as_ref()
                            .unwrap_or(&embed)
                            .head_mma(&gpu, c.hidden_size)
                    })
                    .flatten(),
                ..k
            },
            gpu,
            config: c,
            opts,
            layers,
            embed,
            head,
            head_generic,
            max_chunks,
            scratch: Mutex::new(scratch),
            weight_bytes: weight_bytes as u64,
            graphs: std::env::var("BITNET_CUDA_GRAPHS").map_or(true, |v| v != "0") && !profiling,
            mega,
        };
        model.gpu.sync().map_err(dev)?;
        Ok(model)
    }

    /// Whether single-sequence decode steps run as the persistent kernel (one launch for every
    /// layer) rather than one kernel per operation; both compute the same values in the same
    /// order. Off by default (measured slower, BENCHMARKS.md v10); `BITNET_CUDA_MEGA=1` turns
    /// it on where the shapes allow it.
    pub fn persistent_decode(&self) -> bool {
        self.mega_on()
    }

    /// Turns the persistent decode step on (where the shapes and the device allow it) or off,
    /// dropping the captured graphs. For comparisons and measurements.
    pub fn set_persistent_decode(&self, on: bool) -> Result<(), ModelError> {
        if let Some(g) = &self.mega {
            g.on.store(on, std::sync::atomic::Ordering::Relaxed);
        }
        let mut s = self.scratch.lock().map_err(|_| dev(CudaError::Poisoned))?;
        s.graphs.clear();
        Ok(())
    }

    /// The GPU in use.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn kv_elem(&self) -> usize {
        match self.opts.kv {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }

    /// One BitLinear: RMSNorm (of `act(gate) * up` for modes 1, 2) and int8 quantization of `n`
    /// rows of `x = (address, row stride, norm weight, width, mode)`, then the ternary product
    /// with `w` into `out = (address, row stride, accumulate, glu)`. Decode-sized batches run as
    /// one fused kernel; traced passes run the two steps to read the codes in between. `glu`
    /// (an activation mode, for the interleaved gate/up matrix): the product may store
    /// act(gate) * up instead of its rows (`launch_gemv_norm`, `launch_linear`); true where it
    /// did.
    fn norm_linear<'t>(
        &self,
        s: &Scratch,
        n: usize,
        x: (u64, usize, &CudaSlice<f32>, usize, i32),
        w: &DevTernary,
        out: (u64, usize, bool, i32),
        trace: Option<(&mut (dyn Tracer + 't), usize, TracePoint)>,
    ) -> Result<bool, CudaError> {
        let (xp, x_stride, norm, cols, mode) = x;
        let (op, out_stride, accumulate, glu) = out;
        let st = &self.gpu.stream;
        if trace.is_none() && n <= 4 && cols <= FUSED_MAX_COLS {
            let nq = NormQuant {
                x: xp,
                x_stride,
                weight: ptr(norm, st),
                cols,
                eps: self.config.rms_norm_eps,
                mode,
                codes: 0,
                scales: 0,
                sums: 0,
                rows: n,
            };
            return launch_gemv_norm(&self.gpu, &self.k, w, &nq, out, true);
        }
        let kp = self.norm_quant(s, xp, x_stride, norm, cols, mode, n)?;
        if let Some((tr, li, point)) = trace {
            self.trace_codes(s, n, cols, li, point, tr)?;
        }
        let io = LinearIo {
            t: n,
            kpad: kp,
            codes: ptr(&s.codes, st),
            xscale: ptr(&s.xscale, st),
            xsum: ptr(&s.xsum, st),
            out: op,
            out_stride,
            accumulate,
            glu,
        };
        launch_linear(&self.gpu, &self.k, LinearPath::Auto, w, &io)
    }

    /// RMSNorm (optionally of act(gate) * up) and int8 quantization of `rows` rows.
    #[allow(clippy::too_many_arguments)]
    fn norm_quant(
        &self,
        s: &Scratch,
        x: u64,
        x_stride: usize,
        w: &CudaSlice<f32>,
        cols: usize,
        mode: i32,
        rows: usize,
    ) -> Result<usize, CudaError> {
        let kpad = pack::round_up(cols, KGROUP);
        let st = &self.gpu.stream;
        let nq = NormQuant {
            x,
            x_stride,
            weight: ptr(w, st),
            cols,
            eps: self.config.rms_norm_eps,
            mode,
            codes: ptr(&s.codes, st),
            scales: ptr(&s.xscale, st),
            sums: ptr(&s.xsum, st),
            rows,
        };
        launch_norm_quant(&self.gpu, &self.k.norm_quant, &nq)?;
        Ok(kpad)
    }

    fn trace_codes(
        &self,
        s: &Scratch,
        rows: usize,
        cols: usize,
        layer: usize,
        point: TracePoint,
        tracer: &mut dyn Tracer,
    ) -> Result<(), CudaError> {
        let kpad = pack::round_up(cols, KGROUP);
        let mut perm = vec![0i8; rows * kpad];
        let mut scales = vec![0f32; rows];
        self.gpu
            .stream
            .memcpy_dtoh(&s.codes.slice(..rows * kpad), &mut perm)?;
        self.gpu
            .stream
            .memcpy_dtoh(&s.xscale.slice(..rows), &mut scales)?;
        self.gpu.sync()?;
        let qa = QuantizedActivations {
            codes: pack::unpermute_codes(&perm, rows, cols).into(),
            scales,
            cols,
        };
        tracer.activation(layer, point, &qa);
        Ok(())
    }

    /// One pass over at most [`MAX_ROWS`] rows.
    fn pass<'t>(
        &self,
        s: &mut Scratch,
        rows: &[(u32, u32, u32)],
        seqs: &[(u64, usize)],
        wanted: &[u32],
        out: &mut Out<'_>,
        tracer: Option<&mut (dyn Tracer + 't)>,
    ) -> Result<(), CudaError> {
        let n = rows.len();
        let st = self.gpu.stream.clone();
        let p = &mut s.host_params;
        for (i, &(tok, pos, seq)) in rows.iter().enumerate() {
            p[P_TOKENS + i] = tok;
            p[P_POS + i] = pos;
            p[P_SEQ + i] = seq;
        }
        p[P_WANTED..P_WANTED + wanted.len()].copy_from_slice(wanted);
        // A cache's entry: its address (low, high) and capacity.
        let entry = |&(addr, cap): &(u64, usize)| [addr as u32, (addr >> 32) as u32, cap as u32];
        for (i, e) in seqs.iter().enumerate() {
            p[P_SEQTAB + 3 * i..P_SEQTAB + 3 * i + 3].copy_from_slice(&entry(e));
        }
        for (i, &(_, _, seq)) in rows.iter().enumerate() {
            let Some(e) = seqs.get(seq as usize) else {
                return Err(CudaError::Invalid(format!(
                    "row {i}: sequence {seq} of {}",
                    seqs.len()
                )));
            };
            p[P_ROWTAB + 3 * i..P_ROWTAB + 3 * i + 3].copy_from_slice(&entry(e));
        }
        st.memcpy_htod(&s.host_params, &mut s.params)?;
        let m = wanted.len();
        // A decode step (one token per sequence, every logit row wanted) replays a captured graph
        // per batch size: its launches and arguments never change, only the parameters' values.
        let decode = tracer.is_none() && m == n && seqs.len() == n;
        let max_pos = rows.iter().map(|r| r.1 as usize).max().unwrap_or(0);
        let chunks = (max_pos / CHUNK + 1).min(self.max_chunks);
        if decode && self.graphs {
            let chunks = graph_chunks(chunks, self.max_chunks);
            let key = (n, chunks);
            if !s.graphs.contains_key(&key) {
                let graph = match self.capture(s, n, m, chunks) {
                    Err(e) if n == 1 && self.mega_on() => {
                        // The driver refused the persistent step (inside a graph): without it.
                        eprintln!(
                            "warning: the persistent decode step is unavailable ({e}); using one kernel per operation"
                        );
                        self.mega_off();
                        self.capture(s, n, m, chunks)?
                    }
                    r => r?,
                };
                s.graphs.insert(key, Graph(graph));
            }
            s.graphs[&key].0.launch()?;
        } else {
            self.launch_forward(s, n, m, chunks, decode, tracer)?;
        }
        if m == 0 {
            return Ok(());
        }
        let v = self.config.vocab_size;
        match out {
            Out::Logits(logits) => {
                let old = logits.len();
                logits.resize(old + m * v, 0.0);
                st.memcpy_dtoh(&s.logits.slice(..m * v), &mut logits[old..])?;
            }
            Out::Greedy(tokens) => {
                let io = (ptr(&s.logits, &st), ptr(&s.tokens_out, &st));
                let k = match &self.k.argmax_cluster {
                    Some(k) => (k, true),
                    None => (&self.k.argmax, false),
                };
                launch_argmax(&self.gpu, k, io, m, v)?;
                let old = tokens.len();
                tokens.resize(old + m, 0);
                st.memcpy_dtoh(&s.tokens_out.slice(..m), &mut tokens[old..])?;
            }
            Out::TopK(k, out) if *k <= TOPK_MAX => {
                let k = *k;
                let addrs = (
                    ptr(&s.logits, &st),
                    ptr(&s.top_ids, &st),
                    ptr(&s.top_vals, &st),
                );
                launch_top_k(&self.gpu, &self.k.top_k, addrs, m, v, k)?;
                let (ids, vals) = &mut s.host_top;
                st.memcpy_dtoh(&s.top_ids.slice(..m * k), &mut ids[..m * k])?;
                st.memcpy_dtoh(&s.top_vals.slice(..m * k), &mut vals[..m * k])?;
                self.gpu.sync()?;
                out.extend(
                    ids[..m * k]
                        .iter()
                        .copied()
                        .zip(vals[..m * k].iter().copied()),
                );
            }
            Out::TopK(k, out) => {
                let mut logits = vec![0f32; m * v];
                st.memcpy_dtoh(&s.logits.slice(..m * v), &mut logits)?;
                bitnet_core::ops::top_k_rows(&logits, v, *k, out);
            }
        }
        self.gpu.sync()?;
        if decode
            && n == 1
            && self.mega_on()
            && let Some(g) = &self.mega
        {
            g.settle_stamps(&self.gpu, self.config.n_layers)?;
        }
        Ok(())
    }

    /// Captures one decode step over `n` rows as a graph.
    fn capture(
        &self,
        s: &Scratch,
        n: usize,
        m: usize,
        chunks: usize,
    ) -> Result<cudarc::driver::CudaGraph, CudaError> {
        let st = &self.gpu.stream;
        st.begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )?;
        let launched = self.launch_forward(s, n, m, chunks, true, None);
        let graph = st.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))?;
        launched?;
        graph.ok_or_else(|| CudaError::Unavailable("graph capture produced no graph".into()))
    }

    fn mega_on(&self) -> bool {
        self.mega
            .as_ref()
            .is_some_and(|g| g.on.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn mega_off(&self) {
        if let Some(g) = &self.mega {
            g.on.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The persistent decode step of one sequence's one token: every layer and the final norm
    /// in one cooperative launch, leaving the normalized row in `s.normed`.
    fn launch_mega(&self, s: &Scratch, g: &Mega) -> Result<(), CudaError> {
        let c = &self.config;
        let st = &self.gpu.stream;
        let pb = ptr(&s.params, st);
        let embed_type = match self.embed {
            Table::F32(_) => 0,
            Table::F16(_) => 1,
            _ => 2,
        };
        let glu_mode = glu_mode(c.activation);
        let Some(step) = &self.k.decode_step else {
            return Err(CudaError::Unavailable("no persistent decode kernel".into()));
        };
        self.gpu.launch_with(
            step,
            (g.grid, 1, 1),
            Kernel::WAVE_BLOCK,
            g.smem,
            &[
                Arg::P(ptr(&g.table, st)),
                Arg::I(c.n_layers as i32),
                Arg::P(self.embed.ptr(&self.gpu)),
                Arg::I(embed_type),
                Arg::P(pb + 4 * P_TOKENS as u64),
                Arg::P(pb + 4 * P_POS as u64),
                Arg::P(pb + 4 * P_SEQ as u64),
                Arg::P(pb + 4 * P_SEQTAB as u64),
                Arg::P(ptr(&s.h, st)),
                Arg::P(ptr(&s.qkv, st)),
                Arg::P(ptr(&s.attn, st)),
                Arg::P(ptr(&s.gate_up, st)),
                Arg::P(ptr(&s.part, st)),
                Arg::P(ptr(&s.counters, st)),
                Arg::P(ptr(&self.rope_cos, st)),
                Arg::P(ptr(&self.rope_sin, st)),
                Arg::I(c.hidden_size as i32),
                Arg::I(c.n_heads as i32),
                Arg::I(c.n_kv_heads as i32),
                Arg::I(c.head_dim as i32),
                Arg::I(c.intermediate_size as i32),
                Arg::F(c.rms_norm_eps),
                Arg::F((c.head_dim as f64).powf(-0.5) as f32),
                Arg::I(glu_mode),
                Arg::I(self.max_chunks as i32),
                Arg::P(ptr(&self.output_norm, st)),
                Arg::P(ptr(&s.normed, st)),
                Arg::P(ptr(&g.bar, st)),
                Arg::I(g.stage.0 as i32),
                Arg::I(g.stage.1 as i32),
                Arg::P(g.stamps.as_ref().map_or(0, |(b, _)| ptr(b, st))),
            ],
            Attr::Cooperative,
        )
    }

    /// Every launch of one pass over `n` rows (their parameters already on the device), ending
    /// with the `m` wanted rows' logits in `s.logits`. `decode`: every row is its own
    /// sequence's one new token, so RoPE and the key/value store run inside attention.
    fn launch_forward<'t>(
        &self,
        s: &Scratch,
        n: usize,
        m: usize,
        chunks: usize,
        decode: bool,
        mut tracer: Option<&mut (dyn Tracer + 't)>,
    ) -> Result<(), CudaError> {
        // Programmatic dependent launch for decode steps of more than PDL_ROWS rows: each
        // kernel's launch and its weight loads overlap its predecessor.
        let _pdl = self.gpu.pdl_scope(decode && n > PDL_ROWS);
        let c = &self.config;
        let (hd, qd, kvd, id) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let qkv_dim = qd + 2 * kvd;
        let st = self.gpu.stream.clone();
        let pb = ptr(&s.params, &st);
        let (tokens, pos, seq, want, seqtab) = (
            pb + 4 * P_TOKENS as u64,
            pb + 4 * P_POS as u64,
            pb + 4 * P_SEQ as u64,
            pb + 4 * P_WANTED as u64,
            pb + 4 * P_SEQTAB as u64,
        );
        let (h, qkv, attn, gu) = (
            ptr(&s.h, &st),
            ptr(&s.qkv, &st),
            ptr(&s.attn, &st),
            ptr(&s.gate_up, &st),
        );
        let attn_block = attn_block(decode, n, self.k.attn_mma.is_some());
        let attn_smem = attn_smem(c, attn_block);
        let attn_split = (self.k.attn_split.as_ref())
            .filter(|_| decode)
            .map(|split| split.launch(n, chunks));
        let glu_mode = glu_mode(c.activation);
        if decode
            && n == 1
            && m == 1
            && tracer.is_none()
            && self.mega_on()
            && let Some(g) = &self.mega
        {
            self.launch_mega(s, g)?;
            return self.launch_head(s, m);
        }

        self.gpu.launch(
            &self.k.embed,
            (n as u32, 1, 1),
            256,
            0,
            &[
                Arg::P(self.embed.ptr(&self.gpu)),
                Arg::P(tokens),
                Arg::P(h),
                Arg::I(hd as i32),
            ],
        )?;
        for (li, l) in self.layers.iter().enumerate() {
            let tr = tracer.as_deref_mut().map(|t| (t, li, TracePoint::AttnIn));
            let x = (h, hd, &l.attn_norm, hd, 0);
            self.norm_linear(s, n, x, &l.qkv, (qkv, qkv_dim, false, 0), tr)?;
            let (cos, sin) = (ptr(&self.rope_cos, &st), ptr(&self.rope_sin, &st));
            if !decode {
                self.gpu.launch(
                    &self.k.rope_kv,
                    (n as u32, 1, 1),
                    128,
                    0,
                    &[
                        Arg::P(qkv),
                        Arg::I(qkv_dim as i32),
                        Arg::P(pos),
                        Arg::P(seq),
                        Arg::P(seqtab),
                        Arg::P(cos),
                        Arg::P(sin),
                        Arg::I(c.n_heads as i32),
                        Arg::I(c.n_kv_heads as i32),
                        Arg::I(c.head_dim as i32),
                        Arg::I(li as i32),
                    ],
                )?;
            }
            let args = attn_args(
                &AttnIo {
                    qkv,
                    stride: qkv_dim,
                    pos,
                    seq,
                    seqtab,
                    layer: li,
                    part: ptr(&s.part, &st),
                    max_chunks: self.max_chunks,
                    rope: (cos, sin, decode),
                    counters: ptr(&s.counters, &st),
                    out: attn,
                },
                (c.n_heads, c.n_kv_heads, c.head_dim),
            );
            let grid = (chunks as u32, c.n_kv_heads as u32, n as u32);
            let k = &self.k;
            match (attn_block, &k.attn_mma, &k.attn_one, attn_split) {
                (_, _, Some(one), _) if decode && n <= one.max_rows && chunks <= one.max_chunks => {
                    // The per-row table in place of seq and seqtab.
                    let mut args = args;
                    (args[3], args[4]) = (Arg::P(0), Arg::P(pb + 4 * P_ROWTAB as u64));
                    let cluster = chunks as u32;
                    let (k, block) = (&one.kernel, Kernel::WAVE_BLOCK);
                    self.gpu
                        .launch_with(k, grid, block, one.smem, &args, Attr::Cluster(cluster))?
                }
                (128, _, _, Some((k, block, smem, splits))) => {
                    let grid = (splits as u32, grid.1, grid.2);
                    self.gpu.launch(k, grid, block, smem, &args)?
                }
                (128, Some(mma), _, _) => {
                    self.gpu.launch(mma, grid, 128, attn_smem as u32, &args)?
                }
                (128, None, _, _) => {
                    self.gpu
                        .launch(&self.k.attn_part4, grid, 128, attn_smem as u32, &args)?
                }
                _ => {
                    self.gpu
                        .launch(&self.k.attn_part, grid, attn_block, attn_smem as u32, &args)?
                }
            }
            let tr = tracer.as_deref_mut().map(|t| (t, li, TracePoint::OIn));
            let x = (attn, qd, &l.attn_sub_norm, qd, 0);
            self.norm_linear(s, n, x, &l.o, (h, hd, true, 0), tr)?;
            let tr = tracer.as_deref_mut().map(|t| (t, li, TracePoint::FfnIn));
            let x = (h, hd, &l.ffn_norm, hd, 0);
            let gu_stride = l.gate_up.rows;
            // The product forms act(gate) * up where its kernel can (decode's staged one, the
            // tensor cores); else the down product's norm does.
            let glu =
                self.norm_linear(s, n, x, &l.gate_up, (gu, gu_stride, false, glu_mode), tr)?;
            let tr = tracer.as_deref_mut().map(|t| (t, li, TracePoint::DownIn));
            let x = (
                gu,
                gu_stride,
                &l.ffn_sub_norm,
                id,
                if glu { 0 } else { glu_mode },
            );
            self.norm_linear(s, n, x, &l.down, (h, hd, true, 0), tr)?;
            if let Some(tr) = tracer.as_deref_mut() {
                let mut host = vec![0f32; n * hd];
                st.memcpy_dtoh(&s.h.slice(..n * hd), &mut host)?;
                self.gpu.sync()?;
                tr.layer_output(li, &host);
            }
        }
        if m == 0 {
            return Ok(());
        }
        let normed = ptr(&s.normed, &st);
        self.gpu.launch(
            &self.k.final_norm,
            (m as u32, 1, 1),
            256,
            0,
            &[
                Arg::P(h),
                Arg::P(want),
                Arg::P(ptr(&self.output_norm, &st)),
                Arg::I(hd as i32),
                Arg::F(c.rms_norm_eps),
                Arg::P(normed),
            ],
        )?;
        self.launch_head(s, m)?;
        if let Some(tr) = tracer {
            let mut host = vec![0f32; m * hd];
            st.memcpy_dtoh(&s.normed.slice(..m * hd), &mut host)?;
            self.gpu.sync()?;
            tr.final_norm(&host);
        }
        Ok(())
    }

    /// The head over the `m` normalized rows in `s.normed`, into `s.logits`.
    fn launch_head(&self, s: &Scratch, m: usize) -> Result<(), CudaError> {
        let st = &self.gpu.stream;
        let table = self.head.as_ref().unwrap_or(&self.embed);
        let io = HeadIo {
            table: table.ptr(&self.gpu),
            scales: table.scales(&self.gpu),
            vocab: self.config.vocab_size,
            cols: self.config.hidden_size,
            x: ptr(&s.normed, st),
            m,
            xhl: ptr(&s.xhl, st),
            logits: ptr(&s.logits, st),
        };
        match self.k.head_mma.as_ref().filter(|_| m >= HEAD_MMA_MIN_ROWS) {
            Some(k) => launch_head_mma(&self.gpu, k, &io),
            None => launch_head_rows(&self.gpu, &self.k.head, self.head_generic, &io),
        }
    }
}

/// Device addresses and sizes of one fused RMSNorm + quantization.
struct NormQuant {
    x: u64,
    x_stride: usize,
    weight: u64,
    cols: usize,
    eps: f32,
    mode: i32,
    codes: u64,
    scales: u64,
    sums: u64,
    rows: usize,
}

/// Widest row the fused decode kernel normalizes (`FUSED_MAX_COLS` in the kernels): the widest
/// instantiation's.
const FUSED_MAX_COLS: usize = NORM_PER_THREAD[NORM_PER_THREAD.len() - 1] * NORM_THREADS;

/// Launches `ternary_gemv_norm_p*` (the instantiation for the row width; `ternary_gemv_norm1_p*`
/// for one row) over `a.rows` (at most 4) rows: each block normalizes and quantizes the rows
/// itself, then multiplies its strips. `staged`: with the block's strips copied into shared
/// memory while it normalizes, where they fit (`gemv_stage`; the engine always asks for it, the
/// conformance tests also run without). `glu` (an activation mode; `w` interleaved gate/up):
/// a staged launch stores act(gate) * up (`gemv_staged`); true where it did.
fn launch_gemv_norm(
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
const GEMV_STAGE_STRIPS: usize = 4;

/// Most dynamic shared memory a block of the fused decode product stages its strips in.
const GEMV_STAGE_MAX: usize = 96 * 1024;

/// The staged launch of a fused decode product over `strips` strips of `kgroups` 128-column
/// groups (see `gemv_norm_body` in the kernels): the fewest strips per block whose grid runs in
/// one wave, as (blocks, bytes of shared memory per block); `None` where the strips do not fit.
fn gemv_stage(gpu: &Gpu, k: &Kernel, strips: usize, kgroups: usize) -> Option<(u32, usize)> {
    let cap = k.dynamic_smem_cap();
    (1..=strips.min(GEMV_STAGE_STRIPS))
        .map(|per| (per, per * kgroups * STRIP * KGROUP / 4))
        .take_while(|&(_, smem)| smem <= cap)
        .find_map(|(per, smem)| {
            let blocks = strips.div_ceil(per) as u32;
            (k.resident(gpu, Kernel::WAVE_BLOCK, smem) >= blocks).then_some((blocks, smem))
        })
}

/// `topk_rows` over `m` rows of `vocab` logits (device addresses): `k` ids and values per row.
fn launch_top_k(
    gpu: &Gpu,
    kernel: &Kernel,
    (logits, ids, vals): (u64, u64, u64),
    m: usize,
    vocab: usize,
    k: usize,
) -> Result<(), CudaError> {
    gpu.launch(
        kernel,
        (m as u32, 1, 1),
        1024,
        0,
        &[
            Arg::P(logits),
            Arg::I(vocab as i32),
            Arg::I(k as i32),
            Arg::P(ids),
            Arg::P(vals),
        ],
    )
}

/// The `k` (at most [`TOPK_MAX`]) best candidates of each row of `logits` (`vocab` wide),
/// chosen by the device's top-k kernel, row after row. For conformance tests against
/// `bitnet_core::ops::top_k`.
pub fn top_k_rows(
    gpu: &Gpu,
    logits: &[f32],
    vocab: usize,
    k: usize,
) -> Result<Vec<(u32, f32)>, CudaError> {
    let m = logits.len() / vocab.max(1);
    if k == 0 || k > TOPK_MAX || k > vocab {
        return Err(CudaError::Unavailable(format!(
            "top-k kernel: k = {k} must be in 1..={}",
            TOPK_MAX.min(vocab)
        )));
    }
    let kernel = gpu.function("topk_rows")?;
    let dl = gpu.upload(logits)?;
    let ids = gpu.zeros::<u32>(m * k)?;
    let vals = gpu.zeros::<f32>(m * k)?;
    let st = &gpu.stream;
    let addrs = (ptr(&dl, st), ptr(&ids, st), ptr(&vals, st));
    launch_top_k(gpu, &kernel, addrs, m, vocab, k)?;
    let (mut hi, mut hv) = (vec![0u32; m * k], vec![0f32; m * k]);
    st.memcpy_dtoh(&ids, &mut hi)?;
    st.memcpy_dtoh(&vals, &mut hv)?;
    gpu.sync()?;
    Ok(hi.into_iter().zip(hv).collect())
}

/// Blocks per row of `argmax_cluster` (the portable cluster size).
const ARGMAX_CLUSTER: u32 = 8;

/// The greedy choice over `m` rows of `vocab` logits (device addresses): one token id per row,
/// by `argmax_cluster` (`(kernel, true)`) or `argmax_rows` (`(kernel, false)`).
fn launch_argmax(
    gpu: &Gpu,
    (kernel, cluster): (&Kernel, bool),
    (logits, out): (u64, u64),
    m: usize,
    vocab: usize,
) -> Result<(), CudaError> {
    let args = [Arg::P(logits), Arg::I(vocab as i32), Arg::P(out)];
    if cluster {
        let grid = (ARGMAX_CLUSTER, m as u32, 1);
        gpu.launch_with(kernel, grid, 1024, 0, &args, Attr::Cluster(ARGMAX_CLUSTER))
    } else {
        gpu.launch(kernel, (m as u32, 1, 1), 1024, 0, &args)
    }
}

/// The greedy choice of each row of `logits` (`vocab` wide) by the device's argmax kernel (the
/// cluster one with `cluster`: [`CudaError::Unavailable`] before sm_90): the first index of the
/// largest logit, NaN never chosen, 0 for a row with no number above -inf. For conformance
/// tests against the engine's host argmax.
pub fn argmax_rows(
    gpu: &Gpu,
    logits: &[f32],
    vocab: usize,
    cluster: bool,
) -> Result<Vec<u32>, CudaError> {
    let m = logits.len() / vocab.max(1);
    let kernel = if cluster {
        gpu.optional_function("argmax_cluster")
            .ok_or_else(|| CudaError::Unavailable("no cluster argmax before sm_90".into()))?
    } else {
        gpu.function("argmax_rows")?
    };
    let dl = gpu.upload(logits)?;
    let out = gpu.zeros::<u32>(m)?;
    let st = &gpu.stream;
    launch_argmax(
        gpu,
        (&kernel, cluster),
        (ptr(&dl, st), ptr(&out, st)),
        m,
        vocab,
    )?;
    let mut host = vec![0u32; m];
    st.memcpy_dtoh(&out, &mut host)?;
    gpu.sync()?;
    Ok(host)
}

/// Launches `norm_quant_p*` (the instantiation for the row width): one block per row. Rows up to
/// [`FUSED_MAX_COLS`] wide are held in registers (the codes staged in at most 7 KB of static
/// shared memory); a wider row is kept in dynamic shared memory when it fits next to that in
/// the default 48 KB.
fn launch_norm_quant(gpu: &Gpu, k: &ByWidth, a: &NormQuant) -> Result<(), CudaError> {
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
struct MmaTile {
    /// By tokens per tile: 16, 32, 64.
    variants: [TileKernel; 3],
    /// `BITNET_CUDA_MMA_TILE=0|1`: off, or on for every batched product (default: on for steps
    /// of [`TILE_MIN_ROWS`] to [`TILE_MAX_ROWS`] rows).
    on: Option<bool>,
    /// `BITNET_CUDA_MMA_TILE_SPLITS=N`: N splits per row tile (at most 8) whatever the product.
    splits: Option<u32>,
}

/// One of [`MmaTile`]'s kernels and its launch shape.
struct TileKernel {
    k: Kernel,
    /// Tokens per tile (grid y).
    tokens: u32,
    smem: usize,
    /// Blocks that run at once on the whole GPU.
    slots: u32,
}

/// Threads per block of the tiled products (`TILE_WARPS` = 8 in the kernels).
const TILE_THREADS: u32 = 256;
/// Strips of 16 rows per block of the tiled products (one per warp).
const TILE_STRIPS: u32 = 8;
/// The most blocks that split a row tile (`tile_sum` in the kernels; a portable cluster).
const TILE_MAX_SPLITS: u32 = 8;
/// Rows of a decode step from which the tiled products take the batched products (below, the
/// kernels of 8-token tiles).
const TILE_MIN_ROWS: usize = 9;
/// Rows of a step up to which they take them: H200, BENCHMARKS.md session 18, +2-5% at batch
/// 16-32, level at 48, -5% at 64.
const TILE_MAX_ROWS: usize = 32;

/// Dynamic shared memory of a tiled product block for `tokens` tokens: its ring (`TILE_STAGES`
/// = 4 stages of a group's weights, 32 bytes per row, and the tokens' codes in 144-byte rows),
/// or the integer sums of its outputs (rows 4 ints apart), whichever is larger.
fn tile_smem(tokens: usize) -> usize {
    let rows = 16 * TILE_STRIPS as usize;
    (4 * (rows * 32 + tokens * 144)).max(tokens * (rows + 4) * 4)
}

/// How many blocks split each row tile's `kgroups` 128-column groups, for `tiles` row tiles
/// (times token tiles) and `slots` resident blocks: as many as the resident blocks allow, at
/// most [`TILE_MAX_SPLITS`], and no split without groups.
fn tile_splits(tiles: u32, kgroups: u32, slots: u32) -> u32 {
    let kgroups = kgroups.max(1);
    let s = (slots / tiles.max(1))
        .clamp(1, TILE_MAX_SPLITS)
        .min(kgroups);
    kgroups.div_ceil(kgroups.div_ceil(s))
}

impl MmaTile {
    fn load(gpu: &Gpu) -> Option<Self> {
        let kernel = |tokens: u32| {
            let k = gpu.optional_function(&format!("ternary_mma_tile_{}", tokens / 8))?;
            let smem = tile_smem(tokens as usize);
            k.allow_smem(smem).ok()?;
            let slots = k.resident(gpu, TILE_THREADS, smem);
            let clusters = k.cluster_limit(gpu, TILE_THREADS, smem) >= TILE_MAX_SPLITS;
            (slots > 0 && clusters).then_some(TileKernel {
                k,
                tokens,
                smem,
                slots,
            })
        };
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        Some(MmaTile {
            variants: [kernel(16)?, kernel(32)?, kernel(64)?],
            on: env("BITNET_CUDA_MMA_TILE").map(|v| v != 0),
            splits: env("BITNET_CUDA_MMA_TILE_SPLITS")
                .filter(|&n| (1..=TILE_MAX_SPLITS).contains(&n)),
        })
    }

    /// The kernel for `t` tokens where `forced` or the environment asks for it, else for
    /// [`TILE_MIN_ROWS`]..=[`TILE_MAX_ROWS`] tokens: the smallest tile that holds them, 64
    /// tokens beyond.
    fn pick(&self, t: usize, forced: bool) -> Option<&TileKernel> {
        let on = forced
            || self
                .on
                .unwrap_or((TILE_MIN_ROWS..=TILE_MAX_ROWS).contains(&t));
        let v = &self.variants;
        on.then(|| v.iter().find(|k| t <= k.tokens as usize).unwrap_or(&v[2]))
    }
}

/// Which ternary kernel runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPath {
    /// `dp4a` for up to 4 tokens, tensor cores beyond (what the model uses).
    Auto,
    /// `dp4a` only, 4 tokens per launch.
    Dp4a,
    /// Tensor cores only, the kernel the model picks.
    Mma,
    /// Tensor cores only, `ternary_mma_*` whatever the grid.
    MmaDirect,
    /// Tensor cores only, `ternary_mma_ring_*` with this many warps per strip (1, 2 or 4)
    /// whatever the grid.
    MmaRing(u32),
    /// Tensor cores only, `ternary_mma_tile_*` with this many blocks per row tile (1..=8; 0 for
    /// the model's choice), where the device has it (sm_90; else as `Mma`).
    MmaTile(u32),
}

/// The attention chunks a captured decode step launches for steps that need `needed`: the
/// next power of two, so that a step has one graph per batch size and power of two. (One graph
/// for the whole context launched every chunk's blocks at any depth: at depth 512 of a 4,096
/// context 56 of every 64 found nothing to do; without them b1 d512 +3.5%, BENCHMARKS.md,
/// session 13.)
fn graph_chunks(needed: usize, max_chunks: usize) -> usize {
    needed.next_power_of_two().min(max_chunks)
}

/// Which of the tensor-core kernels' tile sizes (8, 16, 32 tokens) takes `n` tokens.
fn tiles_index(n: usize) -> usize {
    match n {
        0..=8 => 0,
        9..=16 => 1,
        _ => 2,
    }
}

/// Device addresses and sizes of one ternary product.
struct LinearIo {
    t: usize,
    kpad: usize,
    codes: u64,
    xscale: u64,
    xsum: u64,
    out: u64,
    out_stride: usize,
    accumulate: bool,
    /// An activation mode where `w` is the interleaved gate/up matrix and act(gate) * up is
    /// wanted instead of its rows (the tensor-core kernels form it; see [`launch_linear`]).
    glu: i32,
}

/// Launches the ternary kernels over `io.t` activation rows (permuted codes `kpad` apart,
/// scales, code sums) into `out` (`out_stride` apart), added when `accumulate`: `dp4a` up to 4
/// rows, tensor cores (up to 64 rows per launch) beyond. With `io.glu`, the tensor-core kernels
/// store act(gate) * up (`store_glu` in the kernels); true where they did (every row went to
/// one tensor-core launch), false where the rows were stored as they are.
fn launch_linear(
    gpu: &Gpu,
    k: &Kernels,
    path: LinearPath,
    w: &DevTernary,
    io: &LinearIo,
) -> Result<bool, CudaError> {
    let strips = w.rows.div_ceil(STRIP) as u32;
    // `dp4a` for up to 4 rows (and where there are no tensor-core kernels), else the tensor
    // cores, whose one launch takes every row.
    let mma = match path {
        LinearPath::Dp4a => None,
        LinearPath::Auto if io.t <= 4 => None,
        _ => k.mma.as_ref(),
    };
    let glu = if mma.is_some() { io.glu } else { 0 };
    let mut t0 = 0;
    while t0 < io.t {
        let left = io.t - t0;
        let (m, n) = match mma {
            // Every remaining token in one launch: tiles of `mma_tokens` along grid y (32-token
            // tiles beat 64: fewer registers, more blocks per SM; BENCHMARKS.md, v9, v12).
            Some(m) => (Some(&m[mma_shape(left).0]), left),
            None => (None, left.min(4)),
        };
        let args = linear_args(gpu, w, io, (t0, n), glu);
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
            let s = splits
                .unwrap_or_else(|| tile_splits(tiles.0 * tiles.1, w.kgroups as u32, f.slots))
                .min(w.kgroups.max(1) as u32)
                .min(TILE_MAX_SPLITS);
            let mut a = [Arg::I(s as i32); 14];
            a[..13].copy_from_slice(&args);
            let grid = (tiles.0 * s, tiles.1, 1);
            if s > 1 {
                gpu.launch_with(
                    &f.k,
                    grid,
                    TILE_THREADS,
                    f.smem as u32,
                    &a,
                    Attr::Cluster(s),
                )?;
            } else {
                gpu.launch(&f.k, grid, TILE_THREADS, f.smem as u32, &a)?;
            }
            t0 += n;
            continue;
        }
        let Some(m) = m else {
            gpu.launch(&k.gemv, (strips, 1, 1), 256, 0, &args)?;
            t0 += n;
            continue;
        };
        // `ternary_mma_*` (two strips per block, tiles along y) where its grid runs in one wave:
        // every load of a block in flight at once, the shortest chain. Beyond one wave
        // (gate/up at batch 64, prefill) the staged kernel, whose blocks all run at once
        // (BENCHMARKS.md, session 13).
        let (variant, tiles) = mma_shape(n);
        let direct = (strips.div_ceil(2), tiles, 1);
        let ring = k.mma_ring.as_ref().map(|r| &r[variant]);
        match (path, ring) {
            (LinearPath::MmaDirect, _) | (_, None) => gpu.launch(m, direct, 256, 0, &args)?,
            (LinearPath::Mma | LinearPath::Auto | LinearPath::MmaTile(_), Some(_))
                if direct.0 * tiles <= m.wave(gpu) =>
            {
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

/// The arguments of every ternary product kernel, for tokens `t0..t0 + n` of `io`.
fn linear_args(
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
    let t = x.batch();
    let kpad = pack::round_up(w.cols(), KGROUP);
    let k = load_kernels(gpu, KvType::F32)?;
    let dw = DevTernary::upload(gpu, std::slice::from_ref(w))?;
    let perm = pack::permute_codes(&x.codes, t, x.cols);
    let sums: Vec<i32> = x
        .codes
        .chunks_exact(x.cols.max(1))
        .map(|r| r.iter().map(|&c| c as i32).sum())
        .collect();
    let codes = gpu.upload(&perm)?;
    let scales = gpu.upload(&x.scales)?;
    let sums = gpu.upload(&sums)?;
    let out = gpu.zeros::<f32>(t * w.rows())?;
    let st = &gpu.stream;
    let io = LinearIo {
        t,
        kpad,
        codes: ptr(&codes, st),
        xscale: ptr(&scales, st),
        xsum: ptr(&sums, st),
        out: ptr(&out, st),
        out_stride: w.rows(),
        accumulate: false,
        glu,
    };
    let formed = launch_linear(gpu, &k, path, &dw, &io)?;
    let mut host = vec![0f32; t * w.rows()];
    st.memcpy_dtoh(&out.slice(..t * w.rows()), &mut host)?;
    gpu.sync()?;
    Ok((host, formed))
}

/// Device addresses and sizes of one attention launch (`attn_vec*`, `attn_mma*`).
struct AttnIo {
    /// Rows of q | k | v, `stride` apart.
    qkv: u64,
    stride: usize,
    /// Per row: position and sequence; per sequence: cache base and capacity.
    pos: u64,
    seq: u64,
    seqtab: u64,
    layer: usize,
    /// Chunk partials (`max_chunks` per row and head) and the merge counters.
    part: u64,
    max_chunks: usize,
    /// RoPE tables and whether the kernel applies RoPE and stores the key and value (decode).
    rope: (u64, u64, bool),
    counters: u64,
    out: u64,
}

/// The attention kernels' arguments for `a` and `(n_heads, n_kv_heads, head_dim)`.
fn attn_args(a: &AttnIo, (n_heads, n_kv, hd): (usize, usize, usize)) -> [Arg; 17] {
    let (cos, sin, rope) = a.rope;
    [
        Arg::P(a.qkv),
        Arg::I(a.stride as i32),
        Arg::P(a.pos),
        Arg::P(a.seq),
        Arg::P(a.seqtab),
        Arg::I(a.layer as i32),
        Arg::I(n_heads as i32),
        Arg::I(n_kv as i32),
        Arg::I(hd as i32),
        Arg::F((hd as f64).powf(-0.5) as f32),
        Arg::P(a.part),
        Arg::I(a.max_chunks as i32),
        Arg::P(cos),
        Arg::P(sin),
        Arg::I(rope as i32),
        Arg::P(a.counters),
        Arg::P(a.out),
    ]
}

/// Attention over f16 key/value caches, as a prefill pass runs it, for conformance tests.
pub struct AttentionCase<'a> {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Per sequence: its keys and values (`positions x n_kv_heads * head_dim` each), stored in
    /// the cache as f16.
    pub caches: &'a [(Vec<f32>, Vec<f32>)],
    /// Per row: its sequence, its position (it attends to positions `0..=pos`) and its query
    /// heads (`n_heads * head_dim`).
    pub rows: &'a [(usize, usize, Vec<f32>)],
}

/// Whether `case`'s shapes fit together (the attention kernels' limits included).
fn check_attention_case(case: &AttentionCase<'_>) -> Result<(), CudaError> {
    let (hd, nkv) = (case.head_dim, case.n_kv_heads);
    let (kvd, qd) = (nkv * hd, case.n_heads * hd);
    let bad = |why: String| Err(CudaError::Invalid(why));
    if nkv == 0 || !case.n_heads.is_multiple_of(nkv) || case.n_heads / nkv > 8 {
        return bad(format!(
            "{} query heads over {nkv} key/value heads",
            case.n_heads
        ));
    }
    if hd == 0 || !hd.is_multiple_of(4) || hd > 128 {
        return bad(format!("head_dim {hd} (multiples of 4 up to 128)"));
    }
    for (s, (k, v)) in case.caches.iter().enumerate() {
        if k.len() != v.len() || !k.len().is_multiple_of(kvd) {
            return bad(format!(
                "sequence {s}: {} keys and {} values",
                k.len(),
                v.len()
            ));
        }
    }
    for (r, (s, p, q)) in case.rows.iter().enumerate() {
        let len = case.caches.get(*s).map_or(0, |c| c.0.len() / kvd);
        if *p >= len || q.len() != qd {
            return bad(format!(
                "row {r}: position {p} of sequence {s} ({len} cached), {} query values for {qd}",
                q.len()
            ));
        }
    }
    Ok(())
}

/// Which attention kernel [`attention_forward`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The 128-thread vector kernel (`attn_vec4_f16`: prefill and batched decode without tensor
    /// cores).
    Vector,
    /// The 128-thread tensor-core kernel (`attn_mma_f16_h*`: prefill and batched decode).
    TensorCores,
    /// The 256-thread cluster kernel of small decode steps (`attn_one_f16_g*`, sm_90), over
    /// every row of the case.
    Cluster,
    /// The tensor-core kernel of batched decode split over each row's chunks
    /// (`attn_split{8,4,4a}_f16_h*`).
    Split {
        /// Blocks (splits) per row and key/value head.
        splits: usize,
        /// Their shape.
        shape: SplitBlock,
    },
}

/// The attention output of every row of `case` (`n_heads * head_dim` each), by `kernel`
/// ([`CudaError::Unavailable`] where that kernel does not fit the case or the device).
pub fn attention_forward(
    gpu: &Gpu,
    case: &AttentionCase<'_>,
    kernel: AttentionKernel,
) -> Result<Vec<f32>, CudaError> {
    check_attention_case(case)?;
    let (hd, nkv) = (case.head_dim, case.n_kv_heads);
    let (kvd, qd) = (nkv * hd, case.n_heads * hd);
    let group = case.n_heads / nkv;
    let stride = qd + 2 * kvd;
    let st = &gpu.stream;
    let chunks = case
        .rows
        .iter()
        .map(|r| r.1)
        .max()
        .map_or(1, |p| p / CHUNK + 1);
    let unavailable = |what: &str| CudaError::Unavailable(format!("no {what} for this case"));
    let (k, block, cluster) = match kernel {
        AttentionKernel::Vector => (gpu.function("attn_vec4_f16")?, 128, None),
        AttentionKernel::TensorCores => (
            attn_mma_kernel(gpu, KvType::F16, hd, group)
                .ok_or_else(|| unavailable("tensor-core attention"))?,
            128,
            None,
        ),
        AttentionKernel::Cluster => {
            let one = attn_one_kernel(gpu, KvType::F16, hd, group)
                .filter(|one| chunks <= one.max_chunks)
                .ok_or_else(|| unavailable("cluster attention"))?;
            (one.kernel, Kernel::WAVE_BLOCK, Some(chunks as u32))
        }
        AttentionKernel::Split { shape, .. } => (
            attn_split_kernel(gpu, KvType::F16, hd, group, shape)
                .ok_or_else(|| unavailable("split attention"))?,
            shape.threads(),
            None,
        ),
    };
    // Each sequence's cache: [layer 0][k | v][positions][kv_dim].
    let mut caches = Vec::with_capacity(case.caches.len());
    let mut seqtab = Vec::with_capacity(3 * case.caches.len());
    for (k, v) in case.caches {
        let f16s: Vec<u16> = k
            .iter()
            .chain(v)
            .map(|&a| half::f16::from_f32(a).to_bits())
            .collect();
        let buf = gpu.upload(&f16s)?;
        let a = ptr(&buf, st);
        seqtab.extend([a as u32, (a >> 32) as u32, (k.len() / kvd) as u32]);
        caches.push(buf);
    }
    let n = case.rows.len();
    let mut qkv = vec![0f32; n * stride];
    for (r, (_, _, q)) in case.rows.iter().enumerate() {
        qkv[r * stride..r * stride + qd].copy_from_slice(q);
    }
    let pos: Vec<u32> = case.rows.iter().map(|r| r.1 as u32).collect();
    let seq: Vec<u32> = case.rows.iter().map(|r| r.0 as u32).collect();
    // The cluster kernel takes each row's entry in place of seq and seqtab.
    let rowtab: Vec<u32> = case
        .rows
        .iter()
        .flat_map(|r| seqtab[3 * r.0..3 * r.0 + 3].iter().copied())
        .collect();
    let (qkv, pos, seq, seqtab, rowtab) = (
        gpu.upload(&qkv)?,
        gpu.upload(&pos)?,
        gpu.upload(&seq)?,
        gpu.upload(&seqtab)?,
        gpu.upload(&rowtab)?,
    );
    let part = gpu.zeros::<f32>(n * case.n_heads * chunks * (hd + 2))?;
    let counters = gpu.zeros::<u32>(n * nkv)?;
    let out = gpu.zeros::<f32>(n * qd)?;
    let args = attn_args(
        &AttnIo {
            qkv: ptr(&qkv, st),
            stride,
            pos: ptr(&pos, st),
            seq: if cluster.is_some() { 0 } else { ptr(&seq, st) },
            seqtab: ptr(if cluster.is_some() { &rowtab } else { &seqtab }, st),
            layer: 0,
            part: ptr(&part, st),
            max_chunks: chunks,
            rope: (0, 0, false),
            counters: ptr(&counters, st),
            out: ptr(&out, st),
        },
        (case.n_heads, nkv, hd),
    );
    let blocks = match kernel {
        AttentionKernel::Split { splits, .. } => splits.max(1),
        _ => chunks,
    };
    let grid = (blocks as u32, nkv as u32, n as u32);
    let smem = attn_smem_for(group, hd, block) as u32;
    match cluster {
        Some(c) => gpu.launch_with(&k, grid, block, smem, &args, Attr::Cluster(c))?,
        None => gpu.launch(&k, grid, block, smem, &args)?,
    }
    let mut host = vec![0f32; n * qd];
    st.memcpy_dtoh(&out, &mut host)?;
    gpu.sync()?;
    Ok(host)
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
    let kpad = pack::round_up(cols, KGROUP);
    let k = load_kernels(gpu, KvType::F32)?;
    let st = &gpu.stream;
    let dx = gpu.upload(x)?;
    let dw = gpu.upload(weight)?;
    let codes = gpu.zeros::<i8>(rows * kpad)?;
    let scales = gpu.zeros::<f32>(rows)?;
    let sums = gpu.zeros::<i32>(rows)?;
    let nq = NormQuant {
        x: ptr(&dx, st),
        x_stride: cols,
        weight: ptr(&dw, st),
        cols,
        eps,
        mode: 0,
        codes: ptr(&codes, st),
        scales: ptr(&scales, st),
        sums: ptr(&sums, st),
        rows,
    };
    launch_norm_quant(gpu, &k.norm_quant, &nq)?;
    let mut perm = vec![0i8; rows * kpad];
    let mut sc = vec![0f32; rows];
    st.memcpy_dtoh(&codes.slice(..rows * kpad), &mut perm)?;
    st.memcpy_dtoh(&scales.slice(..rows), &mut sc)?;
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
    let cols = norm.len();
    let k = load_kernels(gpu, KvType::F32)?;
    let st = &gpu.stream;
    let dw = DevTernary::upload(gpu, std::slice::from_ref(w))?;
    let dx = gpu.upload(x)?;
    let dn = gpu.upload(norm)?;
    let kpad = pack::round_up(cols, KGROUP);
    let codes = gpu.zeros::<i8>(rows * kpad)?;
    let scales = gpu.zeros::<f32>(rows)?;
    let sums = gpu.zeros::<i32>(rows)?;
    let out = gpu.zeros::<f32>(rows * w.rows())?;
    let nq = NormQuant {
        x: ptr(&dx, st),
        x_stride: cols,
        weight: ptr(&dn, st),
        cols,
        eps,
        mode: 0,
        codes: ptr(&codes, st),
        scales: ptr(&scales, st),
        sums: ptr(&sums, st),
        rows,
    };
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
            kpad,
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

fn load_kernels(gpu: &Gpu, kv: KvType) -> Result<Kernels, CudaError> {
    let sfx = match kv {
        KvType::F16 => "f16",
        KvType::F32 => "f32",
    };
    let mma = match (
        gpu.optional_function("ternary_mma_1"),
        gpu.optional_function("ternary_mma_2"),
        gpu.optional_function("ternary_mma_4"),
    ) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    let mma_ring = (|| {
        Some([
            RingKernel::variants(gpu, 1)?,
            RingKernel::variants(gpu, 2)?,
            RingKernel::variants(gpu, 4)?,
        ])
    })();
    Ok(Kernels {
        embed: gpu.function("embed_f32")?,
        norm_quant: ByWidth::load(gpu, "norm_quant")?,
        final_norm: gpu.function("final_norm")?,
        gemv: gpu.function("ternary_gemv")?,
        gemv_norm: ByWidth::load(gpu, "ternary_gemv_norm")?.allow_smem(GEMV_STAGE_MAX),
        gemv_norm1: ByWidth::load(gpu, "ternary_gemv_norm1")?.allow_smem(GEMV_STAGE_MAX),
        mma,
        mma_ring,
        mma_tile: MmaTile::load(gpu),
        rope_kv: gpu.function(&format!("rope_kv_{sfx}"))?,
        attn_part: gpu.function(&format!("attn_vec_{sfx}"))?,
        attn_part4: gpu.function(&format!("attn_vec4_{sfx}"))?,
        attn_mma: None,
        attn_split: None,
        attn_one: None,
        head: gpu.function("head_f32")?,
        head_mma: None,
        argmax: gpu.function("argmax_rows")?,
        argmax_cluster: gpu.optional_function("argmax_cluster"),
        top_k: gpu.function("topk_rows")?,
        decode_step: gpu.optional_function(&format!("decode_step_{sfx}")),
    })
}

impl CudaModel {
    fn run(
        &self,
        batch: &[DeviceEntry<'_>],
        out: &mut Out<'_>,
        mut tracer: Option<&mut dyn Tracer>,
    ) -> Result<(), ModelError> {
        let mut s = self.scratch.lock().map_err(|_| dev(CudaError::Poisoned))?;
        // Rows in order; a pass closes when it holds MAX_ROWS rows. The lists live in the
        // scratch so that steps do not allocate.
        let (mut rows, mut seqs, mut wanted) = std::mem::take(&mut s.lists);
        rows.clear();
        seqs.clear();
        wanted.clear();
        for e in batch {
            let kv = e
                .cache
                .as_any()
                .downcast_ref::<CudaKv>()
                .filter(|kv| kv.ordinal == self.gpu.ordinal)
                .ok_or_else(|| ModelError::Device("a KV cache from another device".into()))?;
            if e.start + e.tokens.len() > kv.capacity {
                return Err(ModelError::ContextExceeded {
                    needed: e.start + e.tokens.len(),
                    capacity: kv.capacity,
                });
            }
            let n = e.tokens.len();
            for (i, &tok) in e.tokens.iter().enumerate() {
                if rows.is_empty() || seqs.last().map(|s| s.0) != Some(kv.addr) {
                    seqs.push((kv.addr, kv.capacity));
                }
                let want = match e.logits {
                    Logits::All => true,
                    Logits::Last => i + 1 == n,
                };
                if want {
                    wanted.push(rows.len() as u32);
                }
                rows.push((tok, (e.start + i) as u32, (seqs.len() - 1) as u32));
                if rows.len() == MAX_ROWS {
                    self.pass(&mut s, &rows, &seqs, &wanted, out, tracer.as_deref_mut())
                        .map_err(dev)?;
                    rows.clear();
                    seqs.clear();
                    wanted.clear();
                }
            }
        }
        if !rows.is_empty() {
            self.pass(&mut s, &rows, &seqs, &wanted, out, tracer)
                .map_err(dev)?;
        }
        s.lists = (rows, seqs, wanted);
        Ok(())
    }
}

impl Accelerator for CudaModel {
    fn describe(&self) -> String {
        format!(
            "cuda:{} ({}, {})",
            self.gpu.ordinal, self.gpu.name, self.gpu.arch
        )
    }

    fn new_cache(&self, capacity: usize) -> Result<Box<dyn DeviceCache>, ModelError> {
        let c = &self.config;
        let capacity = capacity
            .min(self.opts.max_context.min(c.context_length))
            .max(1);
        let per_position = self.kv_bytes_per_position();
        let buf = self.gpu.zeros::<u8>(capacity * per_position).map_err(dev)?;
        let addr = ptr(&buf, &self.gpu.stream);
        Ok(Box::new(CudaKv {
            buf,
            addr,
            capacity,
            per_position,
            ordinal: self.gpu.ordinal,
        }))
    }

    fn forward_batch(
        &self,
        batch: &[DeviceEntry<'_>],
        logits: &mut Vec<f32>,
        tracer: Option<&mut dyn Tracer>,
    ) -> Result<(), ModelError> {
        logits.clear();
        self.run(batch, &mut Out::Logits(logits), tracer)
    }

    fn forward_batch_greedy(
        &self,
        batch: &[DeviceEntry<'_>],
        tokens: &mut Vec<u32>,
    ) -> Result<(), ModelError> {
        tokens.clear();
        self.run(batch, &mut Out::Greedy(tokens), None)
    }

    fn forward_batch_top_k(
        &self,
        batch: &[DeviceEntry<'_>],
        k: usize,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<(), ModelError> {
        out.clear();
        self.run(batch, &mut Out::TopK(k, out), None)
    }

    fn kv_bytes_per_position(&self) -> usize {
        self.config.n_layers * 2 * self.config.kv_dim() * self.kv_elem()
    }

    fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes
    }

    fn head_type(&self) -> &'static str {
        self.head.as_ref().unwrap_or(&self.embed).name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn split_attention_takes_one_split_per_row_unless_sms_idle_over_long_rows() {
        use SplitBlock::*;
        // 2B4T (5 kv heads) on 132 SMs: batch 64 in blocks of 4 warps (one wave of three per
        // SM), 32 and 48 of 4 with a second set of registers, 24 and below of 8.
        assert_eq!(split_shape(320, 132, 16), (Four, 1));
        assert_eq!(split_shape(240, 132, 16), (FourAhead, 1));
        assert_eq!(split_shape(160, 132, 64), (FourAhead, 1));
        assert_eq!(split_shape(120, 132, 64), (Eight, 1));
        assert_eq!(split_shape(80, 132, 64), (Eight, 1));
        // Batch 4: 4 splits at depth 2048 (33 chunks: 64 in a graph), 2 at 1,024, 1 below.
        assert_eq!(split_shape(20, 132, 64), (Eight, 4));
        assert_eq!(split_shape(20, 132, 32), (Eight, 2));
        assert_eq!(split_shape(20, 132, 16), (Eight, 1));
        assert_eq!(split_shape(0, 132, 1), (Eight, 1));
    }

    #[test]
    fn decode_graphs_cover_the_step_with_a_power_of_two_of_chunks() {
        let got: Vec<usize> = [1, 2, 3, 8, 9, 33, 64].map(|n| graph_chunks(n, 64)).into();
        assert_eq!(got, [1, 2, 4, 8, 16, 64, 64]);
        assert_eq!(graph_chunks(9, 12), 12);
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

    #[test]
    fn attention_cases_that_do_not_fit_are_refused() {
        let caches = vec![(vec![0.0f32; 3 * 64], vec![0.0f32; 3 * 64])];
        let row = |s: usize, p: usize, q: usize| vec![(s, p, vec![0.0f32; q])];
        let case = |n_heads, n_kv_heads, head_dim, rows: &[(usize, usize, Vec<f32>)]| {
            check_attention_case(&AttentionCase {
                n_heads,
                n_kv_heads,
                head_dim,
                caches: &caches,
                rows,
            })
        };
        assert!(case(2, 1, 64, &row(0, 2, 128)).is_ok());
        for (n_heads, n_kv, hd, rows) in [
            (2, 1, 64, row(0, 3, 128)),  // position past the cache
            (2, 1, 64, row(1, 0, 128)),  // no such sequence
            (2, 1, 64, row(0, 0, 100)),  // query length
            (3, 2, 32, row(0, 0, 96)),   // heads not a multiple
            (2, 0, 64, row(0, 0, 128)),  // no key/value heads
            (18, 2, 32, row(0, 0, 576)), // 9 query heads per key/value head
            (2, 1, 62, row(0, 0, 124)),  // head_dim not a multiple of 4
            (2, 1, 80, row(0, 0, 160)),  // cache length not a multiple of kv_dim
        ] {
            let got = case(n_heads, n_kv, hd, &rows);
            assert!(
                matches!(got, Err(CudaError::Invalid(_))),
                "{n_heads} {n_kv} {hd}: {got:?}"
            );
        }
    }
}

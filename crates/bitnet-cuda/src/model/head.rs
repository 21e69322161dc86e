//! The output head on the GPU: the float table's device forms (f32, f16, bf16, int8 rows), the
//! head kernels (one row, rows of 8, tensor cores) and greedy and top-k selection over logits.

use super::*;

/// A float table (embedding or head) on the device.
pub(super) enum Table {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
    BF16(CudaSlice<u16>),
    I8 {
        values: CudaSlice<i8>,
        scales: CudaSlice<f32>,
    },
}

impl Table {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Table::F32(_) => "f32",
            Table::F16(_) => "f16",
            Table::BF16(_) => "bf16",
            Table::I8 { .. } => "int8",
        }
    }

    pub(super) fn bytes(&self) -> usize {
        match self {
            Table::F32(v) => v.len() * 4,
            Table::F16(v) | Table::BF16(v) => v.len() * 2,
            Table::I8 { values, scales } => values.len() + scales.len() * 4,
        }
    }

    /// Uploads `m` as stored (f32/f16/bf16); block-quantized tables are decoded to f16, or to f32
    /// with `f32_only`.
    pub(super) fn upload(gpu: &Gpu, m: &FloatMatrix, f32_only: bool) -> Result<Self, CudaError> {
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
    pub(super) fn upload_int8(gpu: &Gpu, m: &FloatMatrix) -> Result<Self, CudaError> {
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

    pub(super) fn ptr(&self, gpu: &Gpu) -> u64 {
        match self {
            Table::F32(v) => ptr(v, &gpu.stream),
            Table::F16(v) | Table::BF16(v) => ptr(v, &gpu.stream),
            Table::I8 { values, .. } => ptr(values, &gpu.stream),
        }
    }

    /// The CUDA-core head kernel for this table (`head_generic_f32` for widths it cannot take
    /// 8 values at a time).
    pub(super) fn head_kernel(&self, generic: bool) -> &'static str {
        match self {
            _ if generic => "head_generic_f32",
            Table::F32(_) => "head_f32",
            Table::F16(_) => "head_f16",
            Table::BF16(_) => "head_bf16",
            Table::I8 { .. } => "head_i8",
        }
    }

    /// The per-row scales (int8 tables) or 0.
    pub(super) fn scales(&self, gpu: &Gpu) -> u64 {
        match self {
            Table::I8 { scales, .. } => ptr(scales, &gpu.stream),
            _ => 0,
        }
    }

    /// The bulk-copy warpgroup head's operands: the table (rows `cols` wide) in the stages'
    /// order and swizzle (`wg_tile_swizzled`), and room for x's planes in that order, up to
    /// [`BULK_X_BLOCKS`] blocks of 64 rows.
    fn bulk(&self, gpu: &Gpu, cols: usize, elem: usize) -> Result<WgBulk, CudaError> {
        let values = match self {
            Table::F32(v) => v.len(),
            Table::F16(v) | Table::BF16(v) => v.len(),
            Table::I8 { values, .. } => values.len(),
        };
        let (vocab, row) = (values / cols, cols * elem);
        let retile = gpu.function("wg_tile_swizzled")?;
        let table =
            gpu.zeros::<u8>(vocab.div_ceil(HEAD_WG_TABLE_ROWS) * HEAD_WG_TABLE_ROWS * row)?;
        launch_retile(
            gpu,
            &retile,
            self.ptr(gpu),
            vocab,
            row,
            ptr(&table, &gpu.stream),
        )?;
        let x = gpu.zeros::<u8>(BULK_X_BLOCKS * 64 * (2 * row + 4))?;
        Ok(WgBulk {
            table,
            x,
            blocks: 0,
            tiles: 1,
        })
    }

    /// The tensor-core head for batches of rows over this table, as (split, head) kernels:
    /// 16-bit and int8 tables whose rows are a multiple of 128 wide, on sm_80+.
    pub(super) fn head_mma(&self, gpu: &Gpu, cols: usize) -> Option<HeadMma> {
        if !cols.is_multiple_of(128) {
            return None;
        }
        // The `mma.sync` head (split, head, shared memory, table rows per block) and the
        // warpgroup one (split, head, the table's bytes per element, stages).
        let ((split, head, smem, block_rows), (wg_split, wg_head, elem, stages)) = match self {
            Table::F32(_) => return None,
            Table::F16(_) => (
                ("split_rows_f16", "head_mma_f16", HEAD_MMA_SMEM, 256),
                ("split_rows_f16p", "head_wg_f16", 2, 6),
            ),
            Table::BF16(_) => (
                ("split_rows_bf16", "head_mma_bf16", HEAD_MMA_SMEM, 256),
                ("split_rows_bf16p", "head_wg_bf16", 2, 6),
            ),
            Table::I8 { .. } => (
                ("split_rows_i16", "head_imma_i8", HEAD_IMMA_SMEM, 128),
                ("split_rows_i16p", "head_wg_i8", 1, 4),
            ),
        };
        let head = gpu.optional_function(head)?;
        head.allow_smem(smem as usize).ok()?;
        // The warpgroup heads (sm_90a, more than 32 rows): by default each stage as two bulk
        // copies from a copy of the table in the stages' order and swizzle (`head_wgb_*`; on
        // an H200 the 64-row int8 head 132 -> 113 us, f16 205 -> 185 us, BENCHMARKS.md session
        // 41), which holds the table's bytes once more (328 MB for 2B4T's int8 head, 656 MB
        // for its f16 one) on cards of 80 GB and more; where that copy cannot be made, or with
        // `BITNET_CUDA_HEAD_WG=nobulk`, every thread's own copies from the table as it is.
        // `BITNET_CUDA_HEAD_WG=0`: the `mma.sync` heads at every row count.
        let mode = std::env::var("BITNET_CUDA_HEAD_WG").unwrap_or_default();
        let kernel = |name: &str, smem: u32| {
            let k = gpu.optional_function(name)?;
            k.allow_smem(smem as usize).ok()?;
            Some((k, smem))
        };
        let plain = || kernel(wg_head, wg_smem(stages, 1)).map(|(k, smem)| (k, smem, None));
        // The bulk head's items: two tiles of the table (`head_wgb2_*`, four stages; each stage
        // of x's planes serves 256 table rows, so x's bytes through L2 are half the table's
        // instead of as many: on an H200 q8 cache + int8 head b64 +0.5%, b128 +1.6%, f16 b64
        // +1.2%, b128 +2.4%, BENCHMARKS.md session 43) unless `BITNET_CUDA_HEAD_TILES=1`
        // (`head_wgb_*`, the stages of `head_wg_*`).
        let tiles = match std::env::var("BITNET_CUDA_HEAD_TILES").as_deref() {
            Ok("1") => 1,
            _ => 2,
        };
        let bulk = || {
            let (name, stages) = match tiles {
                1 => (wg_head.replace("head_wg_", "head_wgb_"), stages),
                _ => (wg_head.replace("head_wg_", "head_wgb2_"), WGB2_STAGES),
            };
            let (k, smem) = kernel(&name, wg_smem(stages, tiles))?;
            let mut b = self.bulk(gpu, cols, elem).ok()?;
            b.tiles = tiles;
            // Persistent blocks, as many as fit at once (`BITNET_CUDA_HEAD_PERSIST=0`: one
            // block per work item).
            if std::env::var("BITNET_CUDA_HEAD_PERSIST").as_deref() != Ok("0") {
                b.blocks = k.resident(gpu, wgb_threads(tiles), smem as usize);
            }
            Some((k, smem, Some(b)))
        };
        let wg = match mode.as_str() {
            "0" => None,
            "nobulk" => plain(),
            _ => bulk().or_else(plain),
        }
        .and_then(|(head, smem, bulk)| {
            Some(WgHead {
                split: gpu.optional_function(wg_split)?,
                head,
                elem,
                smem,
                bulk,
                // Greedy steps' tokens chosen inside the head (`wg_finish`), unless
                // `BITNET_CUDA_HEAD_GREEDY=0`: then its logits and the argmax kernel.
                tokens: gpu
                    .optional_function("head_keys_tokens")
                    .filter(|_| std::env::var("BITNET_CUDA_HEAD_GREEDY").as_deref() != Ok("0")),
            })
        });
        Some(HeadMma {
            split: gpu.optional_function(split)?,
            head,
            smem,
            block_rows,
            wg,
        })
    }
}

/// The tensor-core head's kernels: x split into two 16-bit parts (`head_mma_*` in the
/// kernels) or, for int8 tables, into two int8 planes of 16-bit integers (`head_imma_i8`), then
/// the table read once per 64 rows.
pub(super) struct HeadMma {
    pub(super) split: Kernel,
    pub(super) head: Kernel,
    /// Dynamic shared memory of `head`.
    smem: u32,
    /// Table rows per block of `head` (each block takes up to 64 rows of x).
    block_rows: usize,
    /// The warpgroup head (sm_90), for more than [`HEAD_WG_MIN_ROWS`] rows.
    wg: Option<WgHead>,
}

/// The warpgroup head's kernels (`split_rows_*p`, `head_wg_*`), the table's bytes per element
/// and the head's dynamic shared memory.
struct WgHead {
    split: Kernel,
    head: Kernel,
    elem: usize,
    smem: u32,
    /// The bulk-copy variant's operands, where it runs.
    bulk: Option<WgBulk>,
    /// `head_keys_tokens`, where greedy passes take their tokens from the head's keys.
    tokens: Option<Kernel>,
}

impl HeadMma {
    /// The warpgroup head `m` rows of x `cols` wide take, given `xhl_bytes` of scratch for x's
    /// planes, if any.
    fn wg_for(&self, m: usize, cols: usize, xhl_bytes: usize) -> Option<&WgHead> {
        self.wg
            .as_ref()
            .filter(|w| takes_wg_head(m, cols, w.elem, xhl_bytes))
            .filter(|w| w.bulk.is_none() || m <= BULK_X_BLOCKS * 64)
    }

    /// Whether a greedy head over `m` rows (as [`HeadMma::wg_for`]) chooses the tokens itself
    /// ([`HeadIo::greedy`]): no logits written, no argmax kernel.
    pub(super) fn fuses_greedy(&self, m: usize, cols: usize, xhl_bytes: usize) -> bool {
        self.wg_for(m, cols, xhl_bytes)
            .is_some_and(|w| w.tokens.is_some())
    }
}

/// The bulk-copy warpgroup head's table copy and room for x's planes (which the split kernel
/// writes there in the stages' order).
struct WgBulk {
    table: CudaSlice<u8>,
    x: CudaSlice<u8>,
    /// Blocks of the persistent head (as many as fit the GPU at once; 0: one per work item).
    blocks: u32,
    /// Tiles of [`HEAD_WG_TABLE_ROWS`] table rows per work item (`TILES` in the kernels).
    tiles: usize,
}

/// Blocks of 64 rows of x the bulk-copy head takes: [`MAX_ROWS`](super::MAX_ROWS), a pass's
/// most (a head of more rows would take the `mma.sync` one).
const BULK_X_BLOCKS: usize = 4;
const _: () = assert!(BULK_X_BLOCKS * 64 >= super::MAX_ROWS);

/// `wg_tile_swizzled` over `rows` rows of `row` bytes in blocks of [`HEAD_WG_TABLE_ROWS`] rows
/// (the head's table rows per block; x's planes are written in that order by the split kernel,
/// through the same `wg_tiled_at`).
fn launch_retile(
    gpu: &Gpu,
    k: &Kernel,
    src: u64,
    rows: usize,
    row: usize,
    out: u64,
) -> Result<(), CudaError> {
    let tr = HEAD_WG_TABLE_ROWS;
    let threads = rows.div_ceil(tr) * tr * row / 16;
    gpu.launch(
        k,
        (threads.div_ceil(256) as u32, 1, 1),
        256,
        0,
        &[
            Arg::P(src),
            Arg::I(rows as i32),
            Arg::I(row as i32),
            Arg::P(out),
        ],
    )
}

/// Stages of the two-tile bulk heads (`head_wgb2_*`, `HEAD_WGB_ENTRY` in the kernels), whatever
/// the table's element: four of 48 KB are as many as fit an sm_90 block.
const WGB2_STAGES: u32 = 4;

/// The warpgroup heads' dynamic shared memory: `stages` stages of `tiles` times 128 table rows
/// and 128 plane rows, 128 bytes each (`HEAD_WG_ENTRY` and `HEAD_WGB_ENTRY` in the kernels: for
/// one tile four stages for the int8 table, six for the 16-bit ones; for two tiles
/// [`WGB2_STAGES`]), and 1,024 bytes to align them.
const fn wg_smem(stages: u32, tiles: usize) -> u32 {
    stages * (tiles as u32 + 1) * 16 * 1024 + 1024
}

/// Rows past which the head runs on the warpgroup kernel (its blocks always multiply 64
/// rows of x). At 64 rows of 2B4T's head on an H200 the int8 one takes 131-133 us against
/// `head_imma_i8`'s ~189, the f16 one ~207 against `head_mma_f16`'s ~311 (BENCHMARKS.md,
/// sessions 39 and 40).
const HEAD_WG_MIN_ROWS: usize = 32;

/// The warpgroup head's block: two warpgroups that multiply 64 table rows each, one that copies.
const HEAD_WG_THREADS: u32 = 384;
/// The bulk-copy one's (`WGB_THREADS` and `WGB2_THREADS` in the kernels): the two multiplying
/// warpgroups and one warp whose lane 0 issues the copies; with two tiles per item a whole
/// warpgroup there, which hands its registers to the multiplying ones (`setmaxnreg`).
const fn wgb_threads(tiles: usize) -> u32 {
    if tiles > 1 { 384 } else { 288 }
}
const HEAD_WG_TABLE_ROWS: usize = 128;

/// Bytes of the warpgroup head's planes of `m` rows of x `cols` wide for a table of
/// `elem`-byte values: 64-row blocks of two planes; for int8 tables the rows' scales after them.
fn wg_planes_bytes(m: usize, cols: usize, elem: usize) -> usize {
    let scales = if elem == 1 { 4 } else { 0 };
    m.div_ceil(64) * 64 * (2 * cols * elem + scales)
}

/// Whether `m` rows of x `cols` wide take the warpgroup head of a table of `elem`-byte values,
/// given `xhl_bytes` of scratch for x's planes.
fn takes_wg_head(m: usize, cols: usize, elem: usize, xhl_bytes: usize) -> bool {
    m > HEAD_WG_MIN_ROWS && wg_planes_bytes(m, cols, elem) <= xhl_bytes
}

/// Two stages of 64 rows x 576 bytes (`HM_STAGE` in the kernels).
pub(super) const HEAD_MMA_SMEM: u32 = 2 * 64 * 576;

/// Three stages of 64 rows x 272 bytes (`HI_STAGE` in the kernels) and each of the 8 warps'
/// 5 table slots of 1,024 bytes (`HI_SLOTS`).
pub(super) const HEAD_IMMA_SMEM: u32 = 3 * 64 * 272 + 8 * 5 * 1024;

/// Rows from which the head runs on the tensor cores. The CUDA-core head reads the table once
/// per 8 rows but is bound by its instructions from two rows on: on the H200 the tensor-core
/// head from 2 rows made decode steps of 2, 4 and 8 rows 4.5%, 18% and 42% faster with the f16
/// head and 10%, 24% and 48% with the int8 one; for one row the CUDA-core head (`head_one`, two
/// table rows per warp, at ~80-90% of DRAM bandwidth) stays 3% faster (BENCHMARKS.md, session 26).
pub(super) const HEAD_MMA_MIN_ROWS: usize = 2;

/// Device addresses of one head evaluation: `m` rows of `x` (`cols` wide) against the table
/// (`vocab` rows, optional per-row scales) into `logits` (`m` x `vocab`); `xhl` is scratch for
/// `2 * round_up(m, 8) * cols` 16-bit values (x's two parts; the int8 table's planes and row
/// scales take less).
pub(super) struct HeadIo {
    pub(super) table: u64,
    pub(super) scales: u64,
    pub(super) vocab: usize,
    pub(super) cols: usize,
    pub(super) x: u64,
    pub(super) m: usize,
    pub(super) xhl: u64,
    /// Bytes at `xhl`.
    pub(super) xhl_bytes: usize,
    pub(super) logits: u64,
    /// Greedy tokens instead of logits where the head can choose them ([`HeadMma::fuses_greedy`]):
    /// room for `m` 64-bit keys and the `m` token ids.
    pub(super) greedy: Option<(u64, u64)>,
}

/// The head on the tensor cores: x split once (all `m` rows, padded to a multiple of 8; for the
/// warpgroup head, to a multiple of 64, as planes), then one launch over every
/// 64-row tile (grid y). Returns whether it wrote `io.greedy`'s tokens (else the logits).
pub(super) fn launch_head_mma(gpu: &Gpu, k: &HeadMma, io: &HeadIo) -> Result<bool, CudaError> {
    let wg = k.wg_for(io.m, io.cols, io.xhl_bytes);
    // The greedy choice inside the head: its keys, and the kernel that reads them.
    let greedy = wg
        .and_then(|w| w.tokens.as_ref())
        .zip(io.greedy)
        .map(|(k, (keys, tokens))| (k, keys, tokens));
    let keys = Arg::P(greedy.map_or(0, |g| g.1));
    let (split, head, pad, table_rows, threads, smem) = match wg {
        Some(w) => (
            &w.split,
            &w.head,
            64,
            HEAD_WG_TABLE_ROWS,
            match &w.bulk {
                Some(b) => wgb_threads(b.tiles),
                None => HEAD_WG_THREADS,
            },
            w.smem,
        ),
        None => (&k.split, &k.head, 8, k.block_rows, 256, k.smem),
    };
    let mpad = io.m.div_ceil(pad) * pad;
    let bulk = wg.and_then(|w| w.bulk.as_ref());
    // The bulk head reads its copy of the table, and x's planes as the split kernel writes them
    // in its stages' order (`tiled`) into its own buffer.
    let (table, xhl, tiled) = match bulk {
        Some(b) => (ptr(&b.table, &gpu.stream), ptr(&b.x, &gpu.stream), 1),
        None => (io.table, io.xhl, 0),
    };
    // The warpgroup heads' split kernels take the keys and `tiled` after the other arguments,
    // their heads the keys.
    let (split_args, head_args) = if wg.is_some() { (7, 8) } else { (5, 7) };
    gpu.launch(
        split,
        (mpad as u32, 1, 1),
        256,
        0,
        &[
            Arg::P(io.x),
            Arg::I(io.m as i32),
            Arg::I(mpad as i32),
            Arg::I(io.cols as i32),
            Arg::P(xhl),
            keys,
            Arg::I(tiled),
        ][..split_args],
    )?;
    let item_rows = table_rows * bulk.map_or(1, |b| b.tiles);
    let (tiles, row_blocks) = (
        io.vocab.div_ceil(item_rows) as u32,
        io.m.div_ceil(64) as u32,
    );
    // The bulk head's blocks take its (table tile, row block) items in turn.
    let grid = match bulk {
        Some(b) if b.blocks > 0 => ((tiles * row_blocks).min(b.blocks), 1, 1),
        Some(_) => (tiles * row_blocks, 1, 1),
        None => (tiles, row_blocks, 1),
    };
    gpu.launch(
        head,
        grid,
        threads,
        smem,
        &[
            Arg::P(table),
            Arg::P(io.scales),
            Arg::I(io.vocab as i32),
            Arg::I(io.cols as i32),
            Arg::P(xhl),
            Arg::I(io.m as i32),
            Arg::P(io.logits),
            keys,
        ][..head_args],
    )?;
    let Some((k, keys, tokens)) = greedy else {
        return Ok(false);
    };
    gpu.launch(
        k,
        (1, 1, 1),
        256,
        0,
        &[Arg::P(keys), Arg::I(io.m as i32), Arg::P(tokens)],
    )?;
    Ok(true)
}

/// The head on the CUDA cores: one launch per 8 rows, each reading the whole table (a warp per
/// table row, or per two table rows where there is one row).
pub(super) fn launch_head_rows(
    gpu: &Gpu,
    k: &Kernel,
    generic: bool,
    io: &HeadIo,
) -> Result<(), CudaError> {
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
    match test_head(gpu, table, head, x, tensor_cores, false)? {
        Choice::Logits(l) => Ok(l),
        Choice::Tokens(_) => Err(CudaError::Invalid("tokens where logits were asked".into())),
    }
}

/// The greedy token of each row of `x` as the tensor-core head chooses it inside its kernel for
/// greedy decode steps (the warpgroup heads, more than 32 rows on sm_90a: `wg_finish`);
/// [`CudaError::Unavailable`] where the head over these rows writes logits instead. For
/// conformance tests against the argmax of [`head_logits`].
pub fn head_greedy(
    gpu: &Gpu,
    table: &FloatMatrix,
    head: HeadType,
    x: &[f32],
) -> Result<Vec<u32>, CudaError> {
    match test_head(gpu, table, head, x, true, true)? {
        Choice::Tokens(t) => Ok(t),
        Choice::Logits(_) => Err(CudaError::Unavailable(format!(
            "the head over {} rows writes logits",
            x.len() / table.cols().max(1)
        ))),
    }
}

/// What [`test_head`] returns.
enum Choice {
    Logits(Vec<f32>),
    Tokens(Vec<u32>),
}

fn test_head(
    gpu: &Gpu,
    table: &FloatMatrix,
    head: HeadType,
    x: &[f32],
    tensor_cores: bool,
    greedy: bool,
) -> Result<Choice, CudaError> {
    let (vocab, cols) = (table.rows(), table.cols());
    let m = x.len() / cols.max(1);
    let t = match head {
        HeadType::Int8 => Table::upload_int8(gpu, table)?,
        HeadType::Native => Table::upload(gpu, table, false)?,
    };
    let dx = gpu.upload(x)?;
    let xhl_bytes = (4 * m.div_ceil(8) * 8 * cols).max(wg_planes_bytes(m, cols, 2));
    let xhl = gpu.zeros::<u8>(xhl_bytes)?;
    let logits = gpu.zeros::<f32>(m * vocab)?;
    // Keys not zero: the split kernel must clear them.
    let keys = gpu.upload(&vec![u64::MAX; m.max(1)])?;
    let tokens = gpu.zeros::<u32>(m.max(1))?;
    let st = &gpu.stream;
    let io = HeadIo {
        table: t.ptr(gpu),
        scales: t.scales(gpu),
        vocab,
        cols,
        x: ptr(&dx, st),
        m,
        xhl: ptr(&xhl, st),
        xhl_bytes,
        logits: ptr(&logits, st),
        greedy: greedy.then(|| (ptr(&keys, st), ptr(&tokens, st))),
    };
    let fused = if tensor_cores {
        let k = t.head_mma(gpu, cols).ok_or_else(|| {
            CudaError::Unavailable(format!(
                "no tensor-core head for a {} table {cols} wide",
                t.name()
            ))
        })?;
        launch_head_mma(gpu, &k, &io)?
    } else {
        if !cols.is_multiple_of(8) {
            return Err(CudaError::Unavailable(format!(
                "the CUDA-core head needs a multiple of 8 columns, not {cols}"
            )));
        }
        launch_head_rows(gpu, &gpu.function(t.head_kernel(false))?, false, &io)?;
        false
    };
    if fused {
        let mut host = vec![0u32; m];
        st.memcpy_dtoh(&tokens.slice(..m), &mut host)?;
        gpu.sync()?;
        return Ok(Choice::Tokens(host));
    }
    let mut host = vec![0f32; m * vocab];
    st.memcpy_dtoh(&logits, &mut host)?;
    gpu.sync()?;
    Ok(Choice::Logits(host))
}

pub(super) fn decode_all(m: &FloatMatrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows() * m.cols()];
    for (r, row) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.row_into(r, row);
    }
    out
}

/// `topk_rows` over `m` rows of `vocab` logits (device addresses): `k` ids and values per row.
pub(super) fn launch_top_k(
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
pub(super) const ARGMAX_CLUSTER: u32 = 8;

/// The greedy choice over `m` rows of `vocab` logits (device addresses): one token id per row,
/// by `argmax_cluster` (`(kernel, true)`) or `argmax_rows` (`(kernel, false)`).
pub(super) fn launch_argmax(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warpgroup_head_takes_more_than_32_rows_in_the_model_scratch() {
        // The model's scratch for x's parts holds 2 x 16 bits per value of its head rows
        // (`Scratch::xhl`): enough for the planes of any step of more than 32 rows, even where
        // the scratch has no row to spare.
        for cols in [128, 256, 2560, 4096] {
            for m in 1..=256 {
                assert_eq!(
                    takes_wg_head(m, cols, 1, 4 * m * cols),
                    m > 32,
                    "{m} rows, {cols} wide"
                );
            }
        }
        // Where the planes do not fit, the mma.sync head runs.
        assert!(!takes_wg_head(64, 2560, 1, 64 * 2 * 2560));
        // The 16-bit tables' planes take 4 bytes per value of x: the model's scratch holds them
        // for its largest steps (MAX_ROWS rows), not for a step of 33 rows in 33 rows' room.
        assert!(takes_wg_head(64, 2560, 2, 4 * 64 * 2560));
        assert!(!takes_wg_head(33, 2560, 2, 4 * 33 * 2560));
    }

    #[test]
    fn warpgroup_heads_stages_fit_an_sm90_block() {
        // sm_90 gives a block at most 227 KB of dynamic shared memory.
        assert_eq!(wg_smem(4, 1), 4 * 32 * 1024 + 1024);
        assert!(wg_smem(6, 1) <= 227 * 1024);
        // Two tiles per item: four stages of 48 KB, with the greedy epilogue's 8 KB of static
        // slots (`red2`) and the mbarriers beside them.
        assert_eq!(wg_smem(WGB2_STAGES, 2), 4 * 48 * 1024 + 1024);
        assert!(wg_smem(WGB2_STAGES, 2) + 8 * 1024 + 64 <= 227 * 1024);
    }
}

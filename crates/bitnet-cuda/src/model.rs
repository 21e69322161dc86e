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

use crate::device::{Arg, Attr, Gpu, HostBuf, Kernel, ptr};
use crate::pack::{self, KGROUP, STRIP};
use crate::{CudaError, CudaOptions, HeadType, KvType};

mod attention;
mod gaps;
mod head;
mod linear;
mod mega;

use attention::*;
use head::*;
use linear::*;
use mega::*;

pub use attention::{AttentionCase, AttentionKernel, SplitBlock, attention_forward};
pub use head::{argmax_rows, head_greedy, head_logits, top_k_rows};
pub use linear::{
    LinearPath, NormPath, norm_linear_forward, norm_quant, ternary_forward, ternary_forward_onto,
    ternary_timing,
};

/// Rows (tokens over all sequences) one pass runs; longer batches run in several passes.
pub const MAX_ROWS: usize = 256;
/// Positions per attention chunk (`CHUNK` in the kernels).
const CHUNK: usize = 64;
/// Most candidates the top-k kernel returns per row (`TOPK_MAX` in the kernels); a wider `k`
/// is chosen on the host from the copied logits.
pub const TOPK_MAX: usize = 256;
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
    /// `ternary_mma_w{1,2}`: tiles of 8 and 16 tokens with K split over 16 warps, and when the
    /// model takes them ([`linear::WideRule`]; `BITNET_CUDA_MMA_WIDE=0`: never,
    /// `BITNET_CUDA_MMA_WIDE16=all|long` the rule for 16-token tiles whatever the cache).
    mma_wide: Option<([Kernel; 2], linear::WideRule)>,
    /// `ternary_mma_ring_{1,2,4}_k*`: the same tiles staged through shared memory, each in the
    /// variants of 4, 2 and 1 warps per strip that the device can run.
    mma_ring: Option<[Vec<RingKernel>; 3]>,
    /// `ternary_mma_tile_*` (sm_90): batched products where asked for
    /// ([`MmaTile::pick`]).
    mma_tile: Option<MmaTile>,
    /// `ternary_gemm` (sm_90): register-blocked products, prefill's gate/up ([`Gemm::takes`]).
    gemm: Option<Gemm>,
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

/// The kernels' `mode` for the FFN's `act(gate) * up` (1 relu2, 2 SiLU).
fn glu_mode(a: Activation) -> i32 {
    match a {
        Activation::Relu2 => 1,
        Activation::Silu => 2,
    }
}

/// Decode steps of more rows than this are launched with programmatic dependent launch (sm_90,
/// unless `BITNET_CUDA_PDL` says otherwise). Same call on an H200 (BENCHMARKS.md, session 16),
/// PDL against none: batch 1 -3.5%, 8 and 32 level, 16 +3-4%, 64 level, prefill -1.3%; since
/// steps of 2-8 rows take the tensor-core products (session 22): batch 1 -2.4% (its fused
/// kernels), 3 +5%, 4 +5%, 6 +4%, 8 +3.6%.
const PDL_ROWS: usize = 1;

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
    /// The stream this scratch's passes run on: `None` for the model's own; each further lane
    /// ([`CudaModel::lanes`]) has one of its own.
    gpu: Option<Gpu>,
    /// u32 parameters: tokens, positions, sequence of each row, wanted rows, sequence table.
    params: CudaSlice<u32>,
    /// The parameters' host copies, taken in turn (`turns.0`): a pass launched before the
    /// previous one was waited for ([`CudaModel::greedy_ahead`]) must not change the copy that
    /// one's upload may not have read yet.
    host_params: [HostBuf<u32>; 2],
    /// The host's copies of `tokens_out`, taken in turn (`turns.1`), for the same reason.
    host_tokens: [HostBuf<u32>; 2],
    /// Which of `host_params` and of `host_tokens` the next pass takes.
    turns: (usize, usize),
    /// Where this pass's tokens come from on the device (a launched step's greedy tokens) rather
    /// than from the host: set by [`CudaModel::greedy_ahead`], taken by the pass.
    feed: Option<u64>,
    /// A greedy pass's tokens are left on their way back (`pending`) rather than waited for.
    defer: bool,
    /// The tokens of the last deferred greedy pass: on their way to `host_tokens`.
    pending: Option<Pending>,
    /// The greedy decode step launched ahead of its call ([`CudaModel::greedy_ahead`]).
    ahead: Option<Ahead>,
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
    /// The greedy choice's keys where the head makes it ([`HeadOut::Greedy`]).
    keys: CudaSlice<u64>,
    tokens_out: CudaSlice<u32>,
    /// Top-k candidates of each wanted row (`TOPK_MAX` per row): ids and logits, and their
    /// host copies.
    top_ids: CudaSlice<u32>,
    top_vals: CudaSlice<f32>,
    host_top: (Vec<u32>, Vec<f32>),
    /// Captured decode steps by batch size, attention chunks (a power of two) and the split
    /// attention's shape and splits ([`AttnSplit::shape`]: it also depends on the step's rows).
    graphs: std::collections::HashMap<GraphKey, Graph>,
    /// Rows of the step this scratch's pass belongs to: its own, or every lane's where lanes run
    /// at once ([`CudaModel::step`]), whose blocks share the SMs.
    step_rows: usize,
    /// A step's rows (token, position, sequence), sequences (cache address, capacity) and
    /// wanted rows, reused across steps.
    lists: StepLists,
    /// `BITNET_CUDA_STEP_GAPS=1` (the model's own scratch): where each step's time goes.
    gaps: Option<gaps::Gaps>,
}

impl Scratch {
    /// Buffers for passes of up to [`MAX_ROWS`] rows of a model of shape `c`, on `gpu` (and
    /// run on `lane` where given: a lane's passes end before the head, which runs on the
    /// model's own scratch, so its head buffers hold one row).
    fn new(
        gpu: &Gpu,
        lane: Option<Gpu>,
        c: &ModelConfig,
        max_chunks: usize,
    ) -> Result<Self, CudaError> {
        let kpad_max = pack::round_up(
            c.hidden_size.max(c.q_dim()).max(c.intermediate_size),
            KGROUP,
        );
        let qkv_dim = c.q_dim() + 2 * c.kv_dim();
        let head_rows = if lane.is_some() { 1 } else { MAX_ROWS };
        let gaps = if lane.is_none() {
            gaps::Gaps::new()
        } else {
            None
        };
        Ok(Scratch {
            gpu: lane,
            params: gpu.zeros::<u32>(P_LEN)?,
            host_params: [HostBuf::new(gpu, P_LEN), HostBuf::new(gpu, P_LEN)],
            host_tokens: [HostBuf::new(gpu, head_rows), HostBuf::new(gpu, head_rows)],
            turns: (0, 0),
            feed: None,
            defer: false,
            pending: None,
            ahead: None,
            h: gpu.zeros(MAX_ROWS * c.hidden_size)?,
            qkv: gpu.zeros(MAX_ROWS * qkv_dim)?,
            attn: gpu.zeros(MAX_ROWS * c.q_dim())?,
            gate_up: gpu.zeros(MAX_ROWS * glu_rows(c.intermediate_size))?,
            codes: gpu.zeros(MAX_ROWS * kpad_max)?,
            xscale: gpu.zeros(MAX_ROWS)?,
            xsum: gpu.zeros(MAX_ROWS)?,
            part: gpu.zeros(MAX_ROWS * c.n_heads * max_chunks * (c.head_dim + 2))?,
            counters: gpu.zeros(MAX_ROWS * c.n_kv_heads)?,
            normed: gpu.zeros(MAX_ROWS * c.hidden_size)?,
            xhl: gpu.zeros(2 * head_rows * c.hidden_size)?,
            logits: gpu.zeros(head_rows * c.vocab_size)?,
            keys: gpu.zeros(head_rows)?,
            tokens_out: gpu.zeros(head_rows)?,
            top_ids: gpu.zeros(head_rows * TOPK_MAX)?,
            top_vals: gpu.zeros(head_rows * TOPK_MAX)?,
            host_top: (
                vec![0; head_rows * TOPK_MAX],
                vec![0.0; head_rows * TOPK_MAX],
            ),
            graphs: Default::default(),
            step_rows: 0,
            lists: Default::default(),
            gaps,
        })
    }
}

/// A deferred greedy pass's tokens on their way to `host_tokens[turn]` (`m` of them), there once
/// `done` has passed.
struct Pending {
    done: cudarc::driver::CudaEvent,
    turn: usize,
    m: usize,
}

/// A greedy decode step launched before its call ([`CudaModel::greedy_ahead`]): its rows
/// (their tokens those its predecessor chose, filled in once they are back) and sequences, and
/// its tokens on their way back.
struct Ahead {
    rows: Vec<(u32, u32, u32)>,
    seqs: Vec<(u64, usize)>,
    pending: Pending,
}

impl Drop for Pending {
    /// However a pass's tokens are left (an error on the way included), what wrote them is done
    /// before the host copies they went through can be taken again.
    fn drop(&mut self) {
        let _ = self.done.synchronize();
    }
}

impl Ahead {
    /// Waits for a launched step no call asked for: then the host copies of its parameters and
    /// tokens may be written again (the next pass takes the other ones, the one after these).
    /// Returns its lists, for the next launched step to reuse.
    fn forget(self) -> Result<AheadLists, CudaError> {
        self.pending.done.synchronize()?;
        Ok((self.rows, self.seqs))
    }
}

/// A launched step's rows and sequences ([`Ahead`]), kept from step to step (no allocation per
/// step).
type AheadLists = (Vec<(u32, u32, u32)>, Vec<(u64, usize)>);

/// Whether a pass is a decode step: untraced, one row per sequence, every row's logits wanted
/// (such steps replay captured graphs).
fn is_decode(traced: bool, (rows, seqs, wanted): PassRows<'_>) -> bool {
    !traced && wanted.len() == rows.len() && seqs.len() == rows.len()
}

/// A step's rows, sequences and wanted rows (`Scratch::lists`).
type StepLists = (Vec<(u32, u32, u32)>, Vec<(u64, usize)>, Vec<u32>);

/// One pass's rows, sequences and wanted rows, borrowed.
type PassRows<'a> = (&'a [(u32, u32, u32)], &'a [(u64, usize)], &'a [u32]);

/// The lanes of passes split over several streams beyond the model's own ([`CudaModel::step`]):
/// each its own scratch and stream, made as passes first need them.
struct Lanes {
    lanes: Vec<Scratch>,
    /// The most lanes: unbounded until one could not be made.
    cap: usize,
}

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
    /// The further lanes of passes split by `lanes_rule`, locked after `scratch`.
    lanes: Mutex<Lanes>,
    /// Passes of more rows than the first split into parts of at most about the second
    /// ([`LANE_SPLIT_ROWS`], [`LANE_ROWS`]; `BITNET_CUDA_LANES=N` sets both to N, 0 keeps every
    /// pass whole).
    lanes_rule: (usize, usize),
    weight_bytes: u64,
    /// Whether decode steps replay CUDA graphs (`BITNET_CUDA_GRAPHS=0` turns them off).
    graphs: bool,
    /// The persistent single-sequence decode step, where the shapes allow it (off unless
    /// `BITNET_CUDA_MEGA=1`).
    mega: Option<Mega>,
    /// Whether greedy decode steps may be launched ahead of their calls
    /// ([`CudaModel::greedy_ahead`]; `BITNET_CUDA_AHEAD=0` or [`CudaModel::set_decode_ahead`]
    /// turn it off).
    ahead: std::sync::atomic::AtomicBool,
    /// Two instances of each decode graph where steps are launched ahead
    /// (`BITNET_CUDA_AHEAD=one`: one).
    graph_pairs: bool,
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
        let gpu = Gpu::open_with(opts.ordinal, opts.progress).map_err(dev)?;
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
        let scratch = Scratch::new(&gpu, None, &c, max_chunks).map_err(dev)?;
        let profiling = gpu.profiling();
        let mega = match &k.decode_step {
            Some(step) => Mega::build(&gpu, step, &c, &layers, &embed).map_err(dev)?,
            None => None,
        };
        // `BITNET_CUDA_AHEAD=0`: no greedy step launched ahead; `=one`: one instance of each
        // decode graph.
        let ahead = std::env::var("BITNET_CUDA_AHEAD").ok();
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
            lanes: Mutex::new(Lanes {
                lanes: Vec::new(),
                cap: usize::MAX,
            }),
            lanes_rule: match std::env::var("BITNET_CUDA_LANES").map(|v| v.parse::<usize>()) {
                Ok(Ok(0)) => (usize::MAX, LANE_ROWS),
                Ok(Ok(n)) => (n, n),
                _ => (LANE_SPLIT_ROWS, LANE_ROWS),
            },
            weight_bytes: weight_bytes as u64,
            graphs: std::env::var("BITNET_CUDA_GRAPHS").map_or(true, |v| v != "0") && !profiling,
            mega,
            ahead: (ahead.as_deref() != Some("0")).into(),
            graph_pairs: ahead.as_deref() != Some("one"),
        };
        model.gpu.sync().map_err(dev)?;
        Ok(model)
    }

    /// Whether greedy decode steps whose caller expects to continue them
    /// ([`Accelerator::forward_batch_greedy_ahead`]) launch their successor before their tokens
    /// are back (on unless `BITNET_CUDA_AHEAD=0`).
    pub fn decode_ahead(&self) -> bool {
        self.ahead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns launching greedy decode steps ahead on or off (a step already launched is still
    /// used by the call that asks for it). For comparisons and measurements.
    pub fn set_decode_ahead(&self, on: bool) {
        self.ahead.store(on, std::sync::atomic::Ordering::Relaxed);
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

    /// The handle whose stream a scratch's passes run on, from its `gpu` field: its lane's, or
    /// the model's own.
    fn gpu_of<'a>(&'a self, lane: &'a Option<Gpu>) -> &'a Gpu {
        lane.as_ref().unwrap_or(&self.gpu)
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
        let gpu = self.gpu_of(&s.gpu);
        let (xp, x_stride, norm, cols, mode) = x;
        let (op, out_stride, accumulate, glu) = out;
        let st = &gpu.stream;
        if trace.is_none() && fused_norm(n, cols) {
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
            return launch_gemv_norm(gpu, &self.k, w, &nq, out, true);
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
        launch_linear(gpu, &self.k, LinearPath::Auto, w, &io)
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
        let gpu = self.gpu_of(&s.gpu);
        let kpad = pack::round_up(cols, KGROUP);
        let st = &gpu.stream;
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
        launch_norm_quant(gpu, &self.k.norm_quant, &nq)?;
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
        let gpu = self.gpu_of(&s.gpu);
        let kpad = pack::round_up(cols, KGROUP);
        let mut perm = vec![0i8; rows * kpad];
        let mut scales = vec![0f32; rows];
        gpu.stream
            .memcpy_dtoh(&s.codes.slice(..rows * kpad), &mut perm)?;
        gpu.stream
            .memcpy_dtoh(&s.xscale.slice(..rows), &mut scales)?;
        gpu.sync()?;
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
        p: PassRows<'_>,
        out: &mut Out<'_>,
        tracer: Option<&mut (dyn Tracer + 't)>,
    ) -> Result<(), CudaError> {
        self.pass_launch(s, p, out, tracer, true)?;
        self.pass_collect(s, p.0.len(), p.2.len(), out)
    }

    /// Every launch of a pass (ending with the selection kernels `out` asks for), nothing
    /// waited for: the outputs are read by [`CudaModel::pass_collect`]. Without `head`, it ends
    /// with the wanted rows normalized in `s.normed` (a lane whose head runs with the others').
    fn pass_launch<'t>(
        &self,
        s: &mut Scratch,
        (rows, seqs, wanted): PassRows<'_>,
        out: &Out<'_>,
        tracer: Option<&mut (dyn Tracer + 't)>,
        head: bool,
    ) -> Result<(), CudaError> {
        let feed = s.feed.take();
        let gpu = self.gpu_of(&s.gpu);
        let n = rows.len();
        let head = match head {
            false => HeadOut::None,
            true => self.head_out(s, wanted.len(), out),
        };
        let st = gpu.stream.clone();
        let turn = s.turns.0;
        s.turns.0 ^= 1;
        let p = &mut s.host_params[turn];
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
        st.memcpy_htod(&s.host_params[turn][..], &mut s.params)?;
        if let Some(src) = feed {
            // The tokens a launched step chose, after its head on the model's stream (a lane
            // waits for that stream before its pass).
            let dst = ptr(&s.params, &st) + 4 * P_TOKENS as u64;
            gpu.copy_device(dst, src, 4 * n)?;
        }
        let m = wanted.len();
        // A decode step (one token per sequence, every logit row wanted) replays a captured graph
        // per batch size: its launches and arguments never change, only the parameters' values.
        let decode = is_decode(tracer.is_some(), (rows, seqs, wanted));
        let max_pos = rows.iter().map(|r| r.1 as usize).max().unwrap_or(0);
        let chunks = (max_pos / CHUNK + 1).min(self.max_chunks);
        if decode && self.graphs {
            let chunks = graph_chunks(chunks, self.max_chunks);
            let split =
                (self.k.attn_split.as_ref()).map(|a| a.shape(n, s.step_rows.max(n), chunks));
            // Where steps may be launched ahead, two instances of each graph taken in turn (as
            // the parameters' host copies are), so that no launch is of an instance still
            // running (at batch 1 one instance measured level with two, BENCHMARKS.md session
            // 42).
            let instance = if self.decode_ahead() && self.graph_pairs {
                turn
            } else {
                0
            };
            let key = (n, chunks, split, head, instance);
            if !s.graphs.contains_key(&key) {
                let graph = match self.capture(s, n, m, chunks, head) {
                    Err(e) if n == 1 && self.mega_on() => {
                        // The driver refused the persistent step (inside a graph): without it.
                        eprintln!(
                            "warning: the persistent decode step is unavailable ({e}); using one kernel per operation"
                        );
                        self.mega_off();
                        self.capture(s, n, m, chunks, head)?
                    }
                    r => r?,
                };
                s.graphs.insert(key, Graph(graph));
            }
            s.graphs[&key].0.launch()?;
        } else {
            self.launch_forward(s, n, m, chunks, decode, tracer, head)?;
        }
        if head == HeadOut::Logits {
            self.launch_select(s, m, out)?;
        }
        Ok(())
    }

    /// What the head of a pass with `m` wanted rows whose results go to `out` makes: greedy
    /// tokens where the head can choose them itself, else logits.
    fn head_out(&self, s: &Scratch, m: usize, out: &Out<'_>) -> HeadOut {
        let fuses = || {
            self.head_mma_for(m)
                .is_some_and(|k| k.fuses_greedy(m, self.config.hidden_size, s.xhl.num_bytes()))
        };
        match out {
            Out::Greedy(_) if fuses() => HeadOut::Greedy,
            _ => HeadOut::Logits,
        }
    }

    /// The tensor-core head a head over `m` rows takes, if any (else the CUDA-core one).
    fn head_mma_for(&self, m: usize) -> Option<&HeadMma> {
        self.k.head_mma.as_ref().filter(|_| m >= HEAD_MMA_MIN_ROWS)
    }

    /// The selection kernels `out` asks for over the `m` logit rows in `s.logits`.
    fn launch_select(&self, s: &Scratch, m: usize, out: &Out<'_>) -> Result<(), CudaError> {
        let gpu = self.gpu_of(&s.gpu);
        let st = &gpu.stream;
        if m == 0 {
            return Ok(());
        }
        let v = self.config.vocab_size;
        match out {
            Out::Greedy(_) => {
                let io = (ptr(&s.logits, st), ptr(&s.tokens_out, st));
                let k = match &self.k.argmax_cluster {
                    Some(k) => (k, true),
                    None => (&self.k.argmax, false),
                };
                launch_argmax(gpu, k, io, m, v)?;
            }
            Out::TopK(k, _) if *k <= TOPK_MAX => {
                let addrs = (
                    ptr(&s.logits, st),
                    ptr(&s.top_ids, st),
                    ptr(&s.top_vals, st),
                );
                launch_top_k(gpu, &self.k.top_k, addrs, m, v, *k)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The outputs of the pass [`CudaModel::pass_launch`] launched over `n` rows with `m`
    /// wanted, appended to `out` once its stream has finished.
    fn pass_collect(
        &self,
        s: &mut Scratch,
        n: usize,
        m: usize,
        out: &mut Out<'_>,
    ) -> Result<(), CudaError> {
        let gpu = self.gpu_of(&s.gpu);
        let st = gpu.stream.clone();
        let decode = m == n;
        if m == 0 {
            return Ok(());
        }
        let v = self.config.vocab_size;
        if let Some(g) = &mut s.gaps {
            g.mark(1, &st)?;
        }
        let mut greedy_turn = 0;
        match out {
            Out::Logits(logits) => {
                let old = logits.len();
                logits.resize(old + m * v, 0.0);
                st.memcpy_dtoh(&s.logits.slice(..m * v), &mut logits[old..])?;
            }
            Out::Greedy(_) => {
                let turn = s.turns.1;
                s.turns.1 ^= 1;
                greedy_turn = turn;
                st.memcpy_dtoh(&s.tokens_out.slice(..m), &mut s.host_tokens[turn][..m])?;
                if s.defer {
                    let done = st.record_event(Some(NO_TIMING))?;
                    s.pending = Some(Pending { done, turn, m });
                    return Ok(());
                }
            }
            Out::TopK(k, out) if *k <= TOPK_MAX => {
                let k = *k;
                let (ids, vals) = &mut s.host_top;
                st.memcpy_dtoh(&s.top_ids.slice(..m * k), &mut ids[..m * k])?;
                st.memcpy_dtoh(&s.top_vals.slice(..m * k), &mut vals[..m * k])?;
                gpu.sync()?;
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
        gpu.sync()?;
        if let Out::Greedy(tokens) = out {
            tokens.extend_from_slice(&s.host_tokens[greedy_turn][..m]);
        }
        if let Some(g) = &mut s.gaps {
            g.mark(2, &st)?;
        }
        if decode
            && n == 1
            && self.mega_on()
            && let Some(g) = &self.mega
        {
            g.settle_stamps(gpu, self.config.n_layers)?;
        }
        Ok(())
    }

    /// A greedy decode step (`p` is one, of at most [`MAX_ROWS`] rows, through captured
    /// graphs) whose tokens are appended to `tokens`. Where the step was launched ahead by the
    /// previous call (the same rows, each at the next position with the token chosen there), it
    /// is only waited for; else launched now. With `then` (the caller expects to continue every
    /// sequence by its token next) the following step is launched before this one's tokens are
    /// waited for: fed those tokens on the device, at the next positions, so that the GPU goes
    /// from one step to the next without waiting for the host. A launched step that the next
    /// call does not ask for is forgotten: its cache writes are at positions past each
    /// sequence's end (which a real step writes before any reads them), and the work on the
    /// streams stays in order.
    fn greedy_ahead(
        &self,
        s: &mut Scratch,
        p: PassRows<'_>,
        tokens: &mut Vec<u32>,
        then: bool,
    ) -> Result<(), CudaError> {
        let (rows, seqs, wanted) = p;
        let launched = s.ahead.take();
        let (cur, (mut next, mut next_seqs)) = match launched {
            Some(a) if a.rows == rows && a.seqs == seqs => (a.pending, (a.rows, a.seqs)),
            other => {
                let lists = other.map_or(Ok(Default::default()), Ahead::forget)?;
                s.defer = true;
                let r = self.step(s, p, &mut Out::Greedy(tokens), None);
                s.defer = false;
                r?;
                let pending = s.pending.take().ok_or(CudaError::Invalid(
                    "a deferred greedy step left no tokens".into(),
                ))?;
                (pending, lists)
            }
        };
        // The next step: every row one position on, if its cache has room.
        let room = rows
            .iter()
            .all(|&(_, pos, seq)| (pos as usize) + 1 < seqs[seq as usize].1);
        if then && room {
            next.clear();
            next.extend(rows.iter().map(|&(_, p, q)| (0, p + 1, q)));
            next_seqs.clear();
            next_seqs.extend_from_slice(seqs);
            s.feed = Some(ptr(&s.tokens_out, &self.gpu.stream));
            s.defer = true;
            let r = self.step(
                s,
                (&next, seqs, wanted),
                &mut Out::Greedy(&mut Vec::new()),
                None,
            );
            (s.defer, s.feed) = (false, None);
            if let (Ok(()), Some(pending)) = (r, s.pending.take()) {
                s.ahead = Some(Ahead {
                    rows: next,
                    seqs: next_seqs,
                    pending,
                });
            }
        }
        cur.done.synchronize()?;
        let got = &s.host_tokens[cur.turn][..cur.m];
        tokens.extend_from_slice(got);
        if let Some(a) = &mut s.ahead {
            for (r, &t) in a.rows.iter_mut().zip(got) {
                r.0 = t;
            }
        }
        Ok(())
    }

    /// One pass over `rows` (at most [`MAX_ROWS`]; `seqs` the sequences they index, `wanted`
    /// the rows whose logits are wanted). Passes of more than `lanes_rule.0` rows that are not
    /// traced run as up to [`MAX_LANES`] parts (split where sequences start: [`lane_cuts`]) on
    /// as many streams at once; the lanes beyond the model's own (scratch and stream) are made
    /// at the first pass that needs them.
    fn step<'t>(
        &self,
        s: &mut Scratch,
        p: PassRows<'_>,
        out: &mut Out<'_>,
        tracer: Option<&mut (dyn Tracer + 't)>,
    ) -> Result<(), CudaError> {
        let done = self.step_launch(s, p, out, tracer);
        if done.is_err() {
            // Whatever was launched finishes before the host may write the page-locked
            // parameters again (their copies read them when the stream reaches them).
            self.settle();
        }
        done
    }

    /// [`CudaModel::step`]'s launches and outputs.
    fn step_launch<'t>(
        &self,
        s: &mut Scratch,
        p: PassRows<'_>,
        out: &mut Out<'_>,
        tracer: Option<&mut (dyn Tracer + 't)>,
    ) -> Result<(), CudaError> {
        let (rows, seqs, wanted) = p;
        let cuts = match tracer {
            None => lane_cuts(rows, self.lanes_rule),
            Some(_) => Cuts::default(),
        };
        s.step_rows = rows.len();
        if let Some(g) = &mut s.gaps {
            g.start(&self.gpu.stream, rows.len(), is_decode(tracer.is_some(), p))?;
        }
        if cuts.is_empty() {
            return self.pass(s, p, out, tracer);
        }
        let mut lanes = self.lanes.lock().map_err(|_| CudaError::Poisoned)?;
        let Lanes { lanes, cap } = &mut *lanes;
        while lanes.len() < cuts.len().min(*cap) {
            let lane = (self.gpu.second_stream())
                .and_then(|gpu| Scratch::new(&self.gpu, Some(gpu), &self.config, self.max_chunks));
            match lane {
                Ok(lane) => lanes.push(lane),
                Err(e) => {
                    // No room for another lane (device memory): this many from now on.
                    *cap = lanes.len();
                    eprintln!(
                        "warning: no room for another CUDA lane ({e}); steps of more than \
                         {} rows run in at most {} parts",
                        self.lanes_rule.0,
                        *cap + 1
                    );
                    break;
                }
            }
            // Its buffers were zeroed on the model's stream.
            self.gpu.sync()?;
        }
        // As many parts as there are lanes (the last ones merged where lanes ran out).
        let cuts = &cuts[..cuts.len().min(lanes.len())];
        let Some(&r) = cuts.first() else {
            return self.pass(s, p, out, None);
        };
        // Each further lane's rows, sequences and wanted rows, renumbered from its first row.
        for (i, (lane, &a)) in lanes.iter_mut().zip(cuts).enumerate() {
            let b = cuts.get(i + 1).copied().unwrap_or(rows.len());
            let (s0, s1) = (rows[a].2, rows[b - 1].2);
            // Fed tokens: the lane's rows' (every row is wanted in a decode step).
            lane.feed = s.feed.map(|t| t + 4 * a as u64);
            let (lr, ls, lw) = &mut lane.lists;
            lr.clear();
            lr.extend(rows[a..b].iter().map(|&(t, p, q)| (t, p, q - s0)));
            ls.clear();
            ls.extend_from_slice(&seqs[s0 as usize..=s1 as usize]);
            lw.clear();
            lw.extend(
                (wanted.iter())
                    .filter(|&&w| (a..b).contains(&(w as usize)))
                    .map(|&w| w - a as u32),
            );
        }
        // The model's own lane: the rows before the first cut, as they are numbered.
        let wa = wanted.partition_point(|&w| (w as usize) < r);
        let sa = rows[r].2 as usize;
        let used = &mut lanes[..cuts.len()];
        for lane in used.iter_mut() {
            lane.step_rows = rows.len();
        }
        // Later work on the model's stream waits for every lane's (`lanes_run` joins them before
        // the head).
        self.lanes_run(s, (&rows[..r], &seqs[..sa], &wanted[..wa]), used, out)
    }

    /// The passes of [`CudaModel::step`]'s lanes: the model's own over `own`, the others over
    /// the lists in their scratch, every one without its head; then, on the model's stream once
    /// they are done, the lanes' normalized rows after its own and one head (and selection) over
    /// all of them, so that the head's table is read once per step rather than once per lane
    /// (BENCHMARKS.md, session 36).
    fn lanes_run(
        &self,
        s: &mut Scratch,
        own: PassRows<'_>,
        lanes: &mut [Scratch],
        out: &mut Out<'_>,
    ) -> Result<(), CudaError> {
        // Every lane starts after everything earlier on the model's stream (new caches, earlier
        // passes of its sequences).
        let start = self.gpu.stream.record_event(Some(NO_TIMING))?;
        for lane in lanes.iter() {
            self.gpu_of(&lane.gpu).stream.wait(&start)?;
        }
        let mut launched = self.pass_launch(s, own, out, None, false);
        for lane in lanes.iter_mut() {
            if launched.is_err() {
                break;
            }
            let (r, q, w) = std::mem::take(&mut lane.lists);
            launched = self.pass_launch(lane, (&r, &q, &w), out, None, false);
            lane.lists = (r, q, w);
        }
        // The model's stream waits for every lane, also after a failed launch, so that nothing
        // later on it overtakes a lane's work.
        let st = &self.gpu.stream;
        let mut joined = Ok(());
        for lane in lanes.iter_mut() {
            lane.feed = None;
            joined = joined.and(wait_for(st, &self.gpu_of(&lane.gpu).stream));
        }
        launched?;
        joined?;
        let hd = self.config.hidden_size;
        let (mut n, mut m) = (own.0.len(), own.2.len());
        for lane in lanes.iter() {
            let lane_stream = &self.gpu_of(&lane.gpu).stream;
            let lm = lane.lists.2.len();
            let (dst, src) = (ptr(&s.normed, st), ptr(&lane.normed, lane_stream));
            self.gpu
                .copy_device(dst + (4 * m * hd) as u64, src, 4 * lm * hd)?;
            (n, m) = (n + lane.lists.0.len(), m + lm);
        }
        if m > 0 {
            let head = self.head_out(s, m, out);
            self.launch_head(s, m, head)?;
            if head == HeadOut::Logits {
                self.launch_select(s, m, out)?;
            }
        }
        self.pass_collect(s, n, m, out)
    }

    /// Captures one decode step over `n` rows as a graph (with the head or without it).
    fn capture(
        &self,
        s: &Scratch,
        n: usize,
        m: usize,
        chunks: usize,
        head: HeadOut,
    ) -> Result<cudarc::driver::CudaGraph, CudaError> {
        self.gpu_of(&s.gpu)
            .capture(|| self.launch_forward(s, n, m, chunks, true, None, head))
    }

    /// Waits for everything launched on the model's stream and its lanes' (errors ignored: a
    /// failed context has nothing left to run).
    fn settle(&self) {
        let _ = self.gpu.sync();
        if let Ok(lanes) = self.lanes.lock() {
            for lane in &lanes.lanes {
                let _ = self.gpu_of(&lane.gpu).sync();
            }
        }
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
        let gpu = self.gpu_of(&s.gpu);
        let c = &self.config;
        let st = &gpu.stream;
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
        gpu.launch_with(
            step,
            (g.grid, 1, 1),
            Kernel::WAVE_BLOCK,
            g.smem,
            &[
                Arg::P(ptr(&g.table, st)),
                Arg::I(c.n_layers as i32),
                Arg::P(self.embed.ptr(gpu)),
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
    /// with what `head` makes of the `m` wanted rows ([`HeadOut::None`]: normalized in
    /// `s.normed`). `decode`: every row is its own sequence's one new token, so RoPE and the
    /// key/value store run inside attention.
    #[allow(clippy::too_many_arguments)]
    fn launch_forward<'t>(
        &self,
        s: &Scratch,
        n: usize,
        m: usize,
        chunks: usize,
        decode: bool,
        mut tracer: Option<&mut (dyn Tracer + 't)>,
        head: HeadOut,
    ) -> Result<(), CudaError> {
        let gpu = self.gpu_of(&s.gpu);
        // Programmatic dependent launch for decode steps of more than PDL_ROWS rows: each
        // kernel's launch and its weight loads overlap its predecessor.
        let _pdl = gpu.pdl_scope(decode && n > PDL_ROWS);
        let c = &self.config;
        let (hd, qd, kvd, id) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let qkv_dim = qd + 2 * kvd;
        let st = gpu.stream.clone();
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
            .map(|split| split.launch(n, s.step_rows.max(n), chunks));
        let glu_mode = glu_mode(c.activation);
        if decode
            && n == 1
            && m == 1
            && tracer.is_none()
            && self.mega_on()
            && let Some(g) = &self.mega
        {
            self.launch_mega(s, g)?;
            return self.launch_head(s, m, head);
        }

        gpu.launch(
            &self.k.embed,
            (n as u32, 1, 1),
            256,
            0,
            &[
                Arg::P(self.embed.ptr(gpu)),
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
                gpu.launch(
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
                    gpu.launch_with(k, grid, block, one.smem, &args, Attr::Cluster(cluster))?
                }
                (128, _, _, Some((k, block, smem, splits))) => {
                    let grid = (splits as u32, grid.1, grid.2);
                    gpu.launch(k, grid, block, smem, &args)?
                }
                (128, Some(mma), _, _) => gpu.launch(mma, grid, 128, attn_smem as u32, &args)?,
                (128, None, _, _) => {
                    gpu.launch(&self.k.attn_part4, grid, 128, attn_smem as u32, &args)?
                }
                _ => gpu.launch(&self.k.attn_part, grid, attn_block, attn_smem as u32, &args)?,
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
                gpu.sync()?;
                tr.layer_output(li, &host);
            }
        }
        if m == 0 {
            return Ok(());
        }
        let normed = ptr(&s.normed, &st);
        gpu.launch(
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
        self.launch_head(s, m, head)?;
        if let Some(tr) = tracer {
            let mut host = vec![0f32; m * hd];
            st.memcpy_dtoh(&s.normed.slice(..m * hd), &mut host)?;
            gpu.sync()?;
            tr.final_norm(&host);
        }
        Ok(())
    }

    /// The head over the `m` normalized rows in `s.normed`, into `s.logits` or (greedy) into
    /// `s.tokens_out`; nothing for [`HeadOut::None`].
    fn launch_head(&self, s: &Scratch, m: usize, head: HeadOut) -> Result<(), CudaError> {
        if head == HeadOut::None {
            return Ok(());
        }
        let gpu = self.gpu_of(&s.gpu);
        let st = &gpu.stream;
        let table = self.head.as_ref().unwrap_or(&self.embed);
        let io = HeadIo {
            table: table.ptr(gpu),
            scales: table.scales(gpu),
            vocab: self.config.vocab_size,
            cols: self.config.hidden_size,
            x: ptr(&s.normed, st),
            m,
            xhl: ptr(&s.xhl, st),
            xhl_bytes: s.xhl.num_bytes(),
            logits: ptr(&s.logits, st),
            greedy: (head == HeadOut::Greedy).then(|| (ptr(&s.keys, st), ptr(&s.tokens_out, st))),
        };
        let fused = match self.head_mma_for(m) {
            Some(k) => launch_head_mma(gpu, k, &io)?,
            None => launch_head_rows(gpu, &self.k.head, self.head_generic, &io).map(|_| false)?,
        };
        if fused != (head == HeadOut::Greedy) {
            return Err(CudaError::Invalid(format!(
                "the head over {m} rows chose tokens: {fused}, expected {head:?}"
            )));
        }
        Ok(())
    }
}

/// A captured decode step's key: batch size, attention chunks, the split attention's shape and
/// splits (see [`Scratch::graphs`]), what its head makes, and which of two instances.
type GraphKey = (usize, usize, Option<(SplitBlock, usize)>, HeadOut, usize);

/// What a pass's head makes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum HeadOut {
    /// No head: the pass ends with its wanted rows normalized (a lane of a step).
    None,
    /// Logits in `Scratch::logits`.
    Logits,
    /// Greedy tokens in `Scratch::tokens_out`, chosen inside the head ([`HeadMma::fuses_greedy`]).
    Greedy,
}

/// Events that only order streams (no timestamps: cheaper to record).
const NO_TIMING: cudarc::driver::sys::CUevent_flags =
    cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;

/// Makes `waiter` wait for the work launched on `other` so far.
fn wait_for(
    waiter: &cudarc::driver::CudaStream,
    other: &cudarc::driver::CudaStream,
) -> Result<(), CudaError> {
    Ok(waiter.wait(&other.record_event(Some(NO_TIMING))?)?)
}

/// Passes of more rows than this run as concurrent parts ([`CudaModel::step`]) of at most about
/// [`LANE_ROWS`] rows, at least two. On an H200 (BENCHMARKS.md, session 23), chains of 64 rows
/// at once gave 28,700 tok/s for two, 31,300 for three and 31,700 for four, where one pass of
/// 128 rows gave 22,400. Two 32-row chains were then slower than one 64-row pass (21,400 against
/// 22,100); with session 36's kernels they are faster (depth 512, two rounds: f16 cache b56 +5%,
/// b60 +7.7%, b64 +7.5%, b64 at depth 128 +2.5% and 2,048 +4%; q8 cache b64 +2.4%, with the int8
/// head b56 +2.5%, b64 +0.5-3%), while b48 was level (f16 -1.7%, q8 +0.1%) and b96 in three
/// parts of 32 rows lost 3% against two of 48.
const LANE_SPLIT_ROWS: usize = 48;

/// The most rows of one lane, about ([`lane_cuts`]).
const LANE_ROWS: usize = 64;

/// The most lanes of one pass (its [`MAX_ROWS`] rows in parts of [`LANE_ROWS`]).
const MAX_LANES: usize = MAX_ROWS / LANE_ROWS;

/// The cuts of one pass ([`lane_cuts`]), held in place (no allocation per step).
#[derive(Clone, Copy, Default)]
struct Cuts {
    at: [usize; MAX_LANES - 1],
    len: usize,
}

impl std::ops::Deref for Cuts {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.at[..self.len]
    }
}

/// Where a pass of `rows` splits into lanes, for passes of more than `split` rows: into
/// `ceil(rows / part)` parts, at least two and at most [`MAX_LANES`], of about even size, each
/// part ending at the sequence start nearest its share's end (the parts then share no sequence).
/// Returns the cuts (the first row of every part but the first), increasing; none where no
/// sequence starts.
fn lane_cuts(rows: &[(u32, u32, u32)], (split, part): (usize, usize)) -> Cuts {
    let mut cuts = Cuts::default();
    let n = rows.len();
    if n <= split {
        return cuts;
    }
    let parts = n.div_ceil(part.max(1)).clamp(2, MAX_LANES);
    let share = n.div_ceil(parts);
    let mut from = 0;
    while cuts.len + 1 < parts && from + share < n {
        let goal = from + share;
        let best = (from + 1..n)
            .filter(|&r| rows[r].2 != rows[r - 1].2)
            .min_by_key(|&r| r.abs_diff(goal));
        let Some(r) = best else { break };
        cuts.at[cuts.len] = r;
        cuts.len += 1;
        from = r;
    }
    cuts
}

/// The attention chunks a captured decode step launches for steps that need `needed`: the
/// next power of two, so that a step has one graph per batch size and power of two. (One graph
/// for the whole context launched every chunk's blocks at any depth: at depth 512 of a 4,096
/// context 56 of every 64 found nothing to do; without them b1 d512 +3.5%, BENCHMARKS.md,
/// session 13.)
fn graph_chunks(needed: usize, max_chunks: usize) -> usize {
    needed.next_power_of_two().min(max_chunks)
}

fn load_kernels(gpu: &Gpu, kv: KvType) -> Result<Kernels, CudaError> {
    let sfx = kv.suffix();
    let mma = match (
        gpu.optional_function("ternary_mma_1"),
        gpu.optional_function("ternary_mma_2"),
        gpu.optional_function("ternary_mma_4"),
    ) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    let mma_wide = match (
        gpu.optional_function("ternary_mma_w1"),
        gpu.optional_function("ternary_mma_w2"),
    ) {
        (Some(a), Some(b)) => {
            let wave = if std::env::var("BITNET_CUDA_MMA_WIDE").is_ok_and(|v| v == "0") {
                0
            } else {
                let threads = linear::WIDE_THREADS;
                a.resident(gpu, threads, 0).min(b.resident(gpu, threads, 0))
            };
            let all16 = match std::env::var("BITNET_CUDA_MMA_WIDE16").as_deref() {
                Ok("all") => true,
                Ok("long") => false,
                _ => kv != KvType::Q8,
            };
            Some(([a, b], linear::WideRule { wave, all16 }))
        }
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
        mma_wide,
        mma_ring,
        mma_tile: MmaTile::load(gpu),
        gemm: Gemm::load(gpu),
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
    /// Every entry's tokens in passes of at most [`MAX_ROWS`] rows, their results into `out`.
    /// `then`: a greedy caller expects to continue every sequence by its token next
    /// ([`CudaModel::greedy_ahead`]).
    fn run(
        &self,
        batch: &[DeviceEntry<'_>],
        out: &mut Out<'_>,
        mut tracer: Option<&mut dyn Tracer>,
        then: bool,
    ) -> Result<(), ModelError> {
        let mut s = self.scratch.lock().map_err(|_| dev(CudaError::Poisoned))?;
        // A step launched ahead serves only a greedy decode step of one pass that asks for it.
        let one = batch.iter().map(|e| e.tokens.len()).sum::<usize>() <= MAX_ROWS;
        let mut launched = s.ahead.take();
        if !one && let Some(a) = launched.take() {
            a.forget().map_err(dev)?;
        }
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
                if rows.len() == MAX_ROWS && !one {
                    self.step(&mut s, (&rows, &seqs, &wanted), out, tracer.as_deref_mut())
                        .map_err(dev)?;
                    rows.clear();
                    seqs.clear();
                    wanted.clear();
                }
            }
        }
        let p = (&rows[..], &seqs[..], &wanted[..]);
        let ahead = self.ahead.load(std::sync::atomic::Ordering::Relaxed)
            && !rows.is_empty()
            && self.graphs
            && s.gaps.is_none()
            && !(rows.len() == 1 && self.mega_on())
            && is_decode(tracer.is_some(), p);
        let done = match (out, launched) {
            (Out::Greedy(tokens), launched) if ahead => {
                s.ahead = launched;
                self.greedy_ahead(&mut s, p, tokens, then)
            }
            (out, launched) => {
                let forgot = launched.map_or(Ok(()), |a| a.forget().map(drop));
                match rows.is_empty() {
                    true => forgot,
                    false => forgot.and_then(|()| self.step(&mut s, p, out, tracer)),
                }
            }
        };
        s.lists = (rows, seqs, wanted);
        done.map_err(dev)
    }
}

impl Drop for CudaModel {
    /// A step launched ahead still copies its tokens into page-locked host memory that goes
    /// with the scratch: everything launched finishes first.
    fn drop(&mut self) {
        self.settle();
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

    fn copy_cache(
        &self,
        from: &dyn DeviceCache,
        to: &dyn DeviceCache,
        positions: usize,
    ) -> Result<(), ModelError> {
        let (Some(a), Some(b)) = (
            from.as_any().downcast_ref::<CudaKv>(),
            to.as_any().downcast_ref::<CudaKv>(),
        ) else {
            return Err(ModelError::Device("not this backend's KV caches".into()));
        };
        if a.ordinal != b.ordinal || positions > a.capacity.min(b.capacity) {
            return Err(ModelError::Device(format!(
                "cannot copy {positions} positions from a cache of {} on cuda:{} to one of {} on cuda:{}",
                a.capacity, a.ordinal, b.capacity, b.ordinal
            )));
        }
        // `[layer][k|v][capacity][row]`: one copy per (layer, k|v) of `positions` rows, on the
        // model's stream (every later step's work is ordered after it).
        let parts = 2 * self.config.n_layers;
        let row = a.per_position / parts;
        for i in 0..parts {
            let (src, dst) = (
                a.addr + (i * a.capacity * row) as u64,
                b.addr + (i * b.capacity * row) as u64,
            );
            self.gpu
                .copy_device(dst, src, positions * row)
                .map_err(dev)?;
        }
        Ok(())
    }

    fn forward_batch(
        &self,
        batch: &[DeviceEntry<'_>],
        logits: &mut Vec<f32>,
        tracer: Option<&mut dyn Tracer>,
    ) -> Result<(), ModelError> {
        logits.clear();
        self.run(batch, &mut Out::Logits(logits), tracer, false)
    }

    fn forward_batch_greedy(
        &self,
        batch: &[DeviceEntry<'_>],
        tokens: &mut Vec<u32>,
    ) -> Result<(), ModelError> {
        tokens.clear();
        self.run(batch, &mut Out::Greedy(tokens), None, false)
    }

    fn forward_batch_greedy_ahead(
        &self,
        batch: &[DeviceEntry<'_>],
        tokens: &mut Vec<u32>,
    ) -> Result<(), ModelError> {
        tokens.clear();
        self.run(batch, &mut Out::Greedy(tokens), None, true)
    }

    fn forward_batch_top_k(
        &self,
        batch: &[DeviceEntry<'_>],
        k: usize,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<(), ModelError> {
        out.clear();
        self.run(batch, &mut Out::TopK(k, out), None, false)
    }

    fn kv_bytes_per_position(&self) -> usize {
        let c = &self.config;
        c.n_layers * 2 * self.opts.kv.row_bytes(c.n_kv_heads, c.head_dim)
    }

    fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes
    }

    fn head_type(&self) -> &'static str {
        self.head.as_ref().unwrap_or(&self.embed).name()
    }

    fn memory(&self) -> Option<(u64, u64)> {
        let (free, total) = self.gpu.ctx.mem_get_info().ok()?;
        Some((free as u64, total as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_split_into_lanes_where_sequences_start_nearest_even_shares() {
        // Decode: one row per sequence.
        let decode: Vec<(u32, u32, u32)> = (0..256).map(|i| (0, 5, i)).collect();
        let rule = (LANE_SPLIT_ROWS, LANE_ROWS);
        let cuts = |rows: &[(u32, u32, u32)]| lane_cuts(rows, rule).to_vec();
        assert_eq!(cuts(&decode[..128]), vec![64]);
        assert!(cuts(&decode[..LANE_SPLIT_ROWS]).is_empty());
        // Just past the split: two parts, although one would not exceed LANE_ROWS.
        assert_eq!(cuts(&decode[..LANE_SPLIT_ROWS + 1]), vec![25]);
        assert_eq!(cuts(&decode[..64]), vec![32]);
        assert_eq!(cuts(&decode[..65]), vec![33]);
        assert_eq!(cuts(&decode[..192]), vec![64, 128]);
        assert_eq!(cuts(&decode), vec![64, 128, 192]);
        assert_eq!(cuts(&decode[..129]), vec![43, 86]);
        // One long prompt cannot split; a prompt and decode rows split where the prompt ends.
        let prompt: Vec<(u32, u32, u32)> = (0..200).map(|i| (0, i, 0)).collect();
        assert!(cuts(&prompt).is_empty());
        let mut mixed = prompt.clone();
        mixed.extend((1..=40).map(|i| (0, 9, i)));
        // Shares of 60 rows: the prompt's 200 cannot split, the 40 rows after it are one part.
        assert_eq!(cuts(&mixed), vec![200]);
        let mut mixed: Vec<(u32, u32, u32)> = (0..30).map(|i| (0, 9, i)).collect();
        mixed.extend((0..100).map(|i| (0, i, 30)));
        mixed.extend((0..40).map(|i| (0, 9, 31 + i)));
        assert_eq!(cuts(&mixed), vec![30, 130]);
    }

    #[test]
    fn decode_graphs_cover_the_step_with_a_power_of_two_of_chunks() {
        let got: Vec<usize> = [1, 2, 3, 8, 9, 33, 64].map(|n| graph_chunks(n, 64)).into();
        assert_eq!(got, [1, 2, 4, 8, 16, 64, 64]);
        assert_eq!(graph_chunks(9, 12), 12);
    }
}

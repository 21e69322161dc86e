//! Attention on the GPU: its kernels (the cluster kernel of small decode steps, the split
//! tensor-core kernel of larger ones, the chunked kernels of prefill), their launch shapes and
//! arguments (the forward in `model.rs` picks among them per step), and the public entry point
//! the conformance suite drives each one through.

use super::*;

/// Threads per attention block for a pass of `rows` rows. Decode steps of one row: 256
/// (`attn_vec_*`, the persistent step's block size, so that both sum the warps' partial outputs
/// in the same order; 4-6% faster at batch 1 than the 128-thread vector kernel, and level with
/// the tensor-core one). Everything else: 128, on the tensor cores where `mma` (batch 16 +6%,
/// batch 64 +8%, pp512 +3% over the vector kernels: BENCHMARKS.md, session 11); without them,
/// decode steps of under 32 rows take 256 (level at batch 16) and the rest 128 (+10% at batch
/// 64; 256 lost 13% at pp512: v10, v11). On sm_90, decode steps of up to [`ATTN_ONE_ROWS`] rows
/// take the 256-thread cluster kernel instead, whatever this says; the other decode steps of
/// 128 take the split tensor-core kernel ([`AttnSplit`]) where it loaded.
pub(super) fn attn_block(decode: bool, rows: usize, mma: bool) -> u32 {
    if decode && (rows == 1 || (rows < 32 && !mma)) {
        Kernel::WAVE_BLOCK
    } else {
        128
    }
}

/// Whether the tensor-core attention kernels (`attn_mma_*`, `attn_split*`) take a model: an f16
/// or q8 cache, `head_dim` 32, 64 or 128 and at most 4 query heads per key/value head. Over a
/// q8 cache the scores are exact integer sums of the key codes and the queries as 16-bit
/// integers (two int8 planes, one scale per head: each query element off by at most 1/65278 of
/// its head's largest magnitude), and the value codes enter the weighted sums as f16, exactly.
pub(super) fn tensor_core_attention(kv: KvType, head_dim: usize, group: usize) -> bool {
    matches!(kv, KvType::F16 | KvType::Q8) && matches!(head_dim, 32 | 64 | 128) && group <= 4
}

/// The tensor-core attention for 128-thread blocks (`attn_mma_{f16,q8}_h*`, sm_80+), where
/// [`tensor_core_attention`] allows it; `None` otherwise.
pub(super) fn attn_mma_kernel(
    gpu: &Gpu,
    kv: KvType,
    head_dim: usize,
    group: usize,
) -> Option<Kernel> {
    let name = format!("attn_mma_{}_h{head_dim}", kv.suffix());
    tensor_core_attention(kv, head_dim, group)
        .then(|| gpu.optional_function(&name))
        .flatten()
}

/// The split tensor-core attention in blocks of `shape` (`attn_split{4,8,4a}_{f16,q8}_h*`,
/// sm_80+), where [`tensor_core_attention`] allows it; `None` otherwise. Its dynamic shared
/// memory is `attn_mma`'s for blocks of `shape.threads()`.
pub(super) fn attn_split_kernel(
    gpu: &Gpu,
    kv: KvType,
    head_dim: usize,
    group: usize,
    shape: SplitBlock,
) -> Option<Kernel> {
    let name = format!("attn_split{}_{}_h{head_dim}", shape.suffix(), kv.suffix());
    tensor_core_attention(kv, head_dim, group)
        .then(|| gpu.optional_function(&name))
        .flatten()
}

/// The blocks of the split attention (the discriminant is the index in `SplitBlock::ALL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    pub(super) const ALL: [SplitBlock; 3] =
        [SplitBlock::Eight, SplitBlock::Four, SplitBlock::FourAhead];

    /// The kernels' name part (`attn_split{8,4,4a}_*`), also `BITNET_CUDA_ATTN_WARPS`'s value.
    pub(super) fn suffix(self) -> &'static str {
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
pub(super) const ATTN_SPLIT_MIN_CHUNKS: usize = 16;

/// The split decode attention (its three block shapes) and how a step uses it.
pub(super) struct AttnSplit {
    /// The kernels and their dynamic shared memory, in the order of [`SplitBlock::ALL`].
    pub(super) kernels: [(Kernel, u32); 3],
    /// Streaming multiprocessors, key/value heads and the blocks of [`SplitBlock::Eight`] and
    /// of [`SplitBlock::FourAhead`] resident at once on the whole GPU (see [`split_shape`]).
    pub(super) sms: usize,
    pub(super) n_kv: usize,
    pub(super) resident: Resident,
    /// `BITNET_CUDA_ATTN_SPLITS=N` and `BITNET_CUDA_ATTN_WARPS=8|4|4a`: N splits per row and
    /// that block shape whatever the step (for measurements).
    pub(super) splits: Option<usize>,
    pub(super) shape: Option<SplitBlock>,
}

impl AttnSplit {
    pub(super) fn new(gpu: &Gpu, kv: KvType, c: &ModelConfig) -> Option<Self> {
        let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
        let env = |name: &str| std::env::var(name).ok();
        let kernel = |shape: SplitBlock| {
            let smem = attn_smem_for(group, hd, shape.threads()) as u32;
            Some((attn_split_kernel(gpu, kv, hd, group, shape)?, smem))
        };
        let [eight, four, ahead] = SplitBlock::ALL.map(kernel);
        let (eight, ahead) = (eight?, ahead?);
        let sms = gpu.sm_count() as usize;
        // Where the driver cannot say: one per SM of 8 warps (as for f16 at head size 128,
        // where they take 160 registers) and two of 4 with the second set.
        let fit = |(k, smem): &(Kernel, u32), shape: SplitBlock, guess: usize| match k.resident(
            gpu,
            shape.threads(),
            *smem as usize,
        ) {
            0 => guess,
            n => n as usize,
        };
        let resident = Resident {
            eight: fit(&eight, SplitBlock::Eight, sms),
            ahead: fit(&ahead, SplitBlock::FourAhead, 2 * sms),
        };
        Some(AttnSplit {
            kernels: [eight, four?, ahead],
            sms,
            n_kv: c.n_kv_heads,
            resident,
            splits: env("BITNET_CUDA_ATTN_SPLITS")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0),
            shape: env("BITNET_CUDA_ATTN_WARPS")
                .and_then(|v| SplitBlock::ALL.into_iter().find(|s| s.suffix() == v)),
        })
    }

    /// The block shape and splits per row for a decode pass of `rows` rows, part of a step of
    /// `step_rows` rows on the GPU at once, that launches `chunks` chunks ([`split_shape`], or
    /// the `BITNET_CUDA_ATTN_*` overrides).
    pub(super) fn shape(
        &self,
        rows: usize,
        step_rows: usize,
        chunks: usize,
    ) -> (SplitBlock, usize) {
        let pairs = (rows * self.n_kv, step_rows * self.n_kv);
        let (shape, splits) = split_shape(pairs, self.sms, self.resident, chunks);
        (self.shape.unwrap_or(shape), self.splits.unwrap_or(splits))
    }

    /// The kernel, block size, shared memory and splits per row of [`AttnSplit::shape`].
    pub(super) fn launch(
        &self,
        rows: usize,
        step_rows: usize,
        chunks: usize,
    ) -> (&Kernel, u32, u32, usize) {
        let (shape, splits) = self.shape(rows, step_rows, chunks);
        let (k, smem) = &self.kernels[shape as usize];
        (k, shape.threads(), *smem, splits)
    }
}

/// Blocks of two of the split attention's shapes that fit the whole GPU at once.
#[derive(Clone, Copy, Debug)]
pub(super) struct Resident {
    /// [`SplitBlock::Eight`]: one per SM for an f16 cache at head size 128, two for q8.
    pub(super) eight: usize,
    /// [`SplitBlock::FourAhead`]: two per SM for f16 at head size 128, three for q8.
    pub(super) ahead: usize,
}

/// The split attention's block shape and splits per row for a pass of `pairs.0` (row, kv head)
/// pairs, part of a step of `pairs.1` on the GPU at once (lanes), on `sms` SMs, a step that
/// launches `chunks` chunks: blocks of 8 warps where each pair can have an SM to itself or those
/// blocks (`resident.eight` of them fit the GPU at once) hold every pair of the step, 4 warps
/// with the next chunk in a second set of registers where those blocks (`resident.ahead`) do,
/// else 4 warps that reuse their registers (three per SM: one wave at batch 64 of 2B4T with
/// f16); one split per row unless the blocks leave SMs idle, and then at most one per
/// [`ATTN_SPLIT_MIN_CHUNKS`] chunks. H200, BENCHMARKS.md session 17: at depth 512 every split
/// more lost at batch 10-64; at depth 2048, batch 4 gained 13% from 4 splits, batch 16 lost 12%
/// from 2. Session 29 (q8 cache): batch 64 with the second set (three per SM) +8.5%; the same
/// for each of two lanes of 64 rows -3 to -4%. Session 32 (q8, two 8-warp blocks per SM), 8 warps
/// against 4 with the second set: at depth 512 batch 32 +5%, 40 +2%, 48 +1.4%, 56 (beyond one
/// wave) -12%; at depth 2,048 batch 32 +18%, 48 +12%; at 128 batch 32 +2-3%, 48 -1.3%.
pub(super) fn split_shape(
    (pairs, step_pairs): (usize, usize),
    sms: usize,
    resident: Resident,
    chunks: usize,
) -> (SplitBlock, usize) {
    let pairs = pairs.max(1);
    let step = step_pairs.max(pairs);
    let shape = if pairs <= sms || step <= resident.eight {
        SplitBlock::Eight
    } else if step <= resident.ahead {
        SplitBlock::FourAhead
    } else {
        SplitBlock::Four
    };
    let splits = (sms / pairs).min(chunks / ATTN_SPLIT_MIN_CHUNKS).max(1);
    (shape, splits)
}

/// The cluster decode attention (`attn_one_*`) and the most chunks (blocks of one cluster) it
/// takes; steps that need more take `attn_vec_*` or `attn_mma_*`.
pub(super) struct AttnOne {
    pub(super) kernel: Kernel,
    /// Its dynamic shared memory per (256-thread) block.
    pub(super) smem: u32,
    pub(super) max_chunks: usize,
    /// Decode steps of up to this many rows take it ([`ATTN_ONE_ROWS`];
    /// `BITNET_CUDA_ATTN_ONE_ROWS=N` for measurements).
    pub(super) max_rows: usize,
}

/// Decode steps of up to this many rows take the cluster attention: against the tensor-core one
/// at depth 512 (H200, BENCHMARKS.md "Session 15"), batch 2 +11%, 4 +7.5%, 8 +1.5%, 16 -8%,
/// 64 -30% (a vector kernel per row, where the tensor cores serve the rows of a chunk at once);
/// against the split tensor-core kernel, with these steps' products on the tensor cores and
/// launched with PDL (session 22): batch 5 level, 6 -2%, 7 -2.3%, 8 -5%.
pub(super) const ATTN_ONE_ROWS: usize = 4;

/// The cluster attention for small decode steps (`attn_one_{f16,f32}_g*`, sm_90): 1, 2, 4 or
/// 8 query heads per key/value head, and a device that places clusters of at least 8 of its
/// blocks; `None` otherwise. Same results as `attn_vec_*`, bit for bit.
pub(super) fn attn_one_kernel(
    gpu: &Gpu,
    kv: KvType,
    head_dim: usize,
    group: usize,
) -> Option<AttnOne> {
    if !matches!(group, 1 | 2 | 4 | 8) {
        return None;
    }
    let sfx = kv.suffix();
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
pub(super) fn attn_smem(c: &ModelConfig, block: u32) -> usize {
    attn_smem_for(c.n_heads / c.n_kv_heads, c.head_dim, block)
}

/// [`attn_smem`] for `group` query heads per key/value head of `head_dim`.
pub(super) fn attn_smem_for(group: usize, head_dim: usize, block: u32) -> usize {
    let warps = block as usize / 32;
    (group * head_dim * (1 + warps) + group * CHUNK) * 4
}

/// Device addresses and sizes of one attention launch (`attn_vec*`, `attn_mma*`).
pub(super) struct AttnIo {
    /// Rows of q | k | v, `stride` apart.
    pub(super) qkv: u64,
    pub(super) stride: usize,
    /// Per row: position and sequence; per sequence: cache base and capacity.
    pub(super) pos: u64,
    pub(super) seq: u64,
    pub(super) seqtab: u64,
    pub(super) layer: usize,
    /// Chunk partials (`max_chunks` per row and head) and the merge counters.
    pub(super) part: u64,
    pub(super) max_chunks: usize,
    /// RoPE tables and whether the kernel applies RoPE and stores the key and value (decode).
    pub(super) rope: (u64, u64, bool),
    pub(super) counters: u64,
    pub(super) out: u64,
}

/// The attention kernels' arguments for `a` and `(n_heads, n_kv_heads, head_dim)`.
pub(super) fn attn_args(a: &AttnIo, (n_heads, n_kv, hd): (usize, usize, usize)) -> [Arg; 17] {
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

/// Attention over f16 or q8 key/value caches, as a prefill pass runs it, for conformance tests.
pub struct AttentionCase<'a> {
    /// How the caches hold keys and values: f16 or q8 ([`KvType::F32`] is refused).
    pub kv: KvType,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Per sequence: its keys and values (`positions x n_kv_heads * head_dim` each), stored in
    /// the cache as `kv` says (q8: [`bitnet_model::quantize_q8`] per position and head).
    pub caches: &'a [(Vec<f32>, Vec<f32>)],
    /// Per row: its sequence, its position (it attends to positions `0..=pos`) and its query
    /// heads (`n_heads * head_dim`).
    pub rows: &'a [(usize, usize, Vec<f32>)],
}

/// Whether `case`'s shapes fit together (the attention kernels' limits included).
pub(super) fn check_attention_case(case: &AttentionCase<'_>) -> Result<(), CudaError> {
    let (hd, nkv) = (case.head_dim, case.n_kv_heads);
    let (kvd, qd) = (nkv * hd, case.n_heads * hd);
    let bad = |why: String| Err(CudaError::Invalid(why));
    if case.kv == KvType::F32 {
        return bad("attention cases hold f16 or q8 caches".into());
    }
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

/// Rows of `n_kv_heads * head_dim` values as a `kv` cache holds them, appended to `out`.
fn cache_bytes(kv: KvType, n_kv: usize, hd: usize, values: &[f32], out: &mut Vec<u8>) {
    let kvd = n_kv * hd;
    match kv {
        KvType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        KvType::F16 => out.extend(
            values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes()),
        ),
        KvType::Q8 => {
            let pitch = kv.row_bytes(n_kv, hd);
            let start = out.len();
            out.resize(start + values.len() / kvd * pitch, 0);
            let mut codes = vec![0i8; hd];
            for (row, dst) in values.chunks(kvd).zip(out[start..].chunks_mut(pitch)) {
                for (h, x) in row.chunks(hd).enumerate() {
                    let scale = bitnet_model::quantize_q8(x, &mut codes);
                    for (d, c) in dst[h * hd..(h + 1) * hd].iter_mut().zip(&codes) {
                        *d = *c as u8;
                    }
                    dst[kvd + 4 * h..kvd + 4 * h + 4].copy_from_slice(&scale.to_le_bytes());
                }
            }
        }
    }
}

/// Which attention kernel [`attention_forward`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The 128-thread vector kernel (`attn_vec4_f16`: prefill and batched decode without tensor
    /// cores).
    Vector,
    /// The 128-thread tensor-core kernel (`attn_mma_{f16,q8}_h*`: prefill and batched decode).
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
    let kv = case.kv;
    let (k, block, cluster) = match kernel {
        AttentionKernel::Vector => (
            gpu.function(&format!("attn_vec4_{}", kv.suffix()))?,
            128,
            None,
        ),
        AttentionKernel::TensorCores => (
            attn_mma_kernel(gpu, kv, hd, group)
                .ok_or_else(|| unavailable("tensor-core attention"))?,
            128,
            None,
        ),
        AttentionKernel::Cluster => {
            let one = attn_one_kernel(gpu, kv, hd, group)
                .filter(|one| chunks <= one.max_chunks)
                .ok_or_else(|| unavailable("cluster attention"))?;
            (one.kernel, Kernel::WAVE_BLOCK, Some(chunks as u32))
        }
        AttentionKernel::Split { shape, .. } => (
            attn_split_kernel(gpu, kv, hd, group, shape)
                .ok_or_else(|| unavailable("split attention"))?,
            shape.threads(),
            None,
        ),
    };
    // Each sequence's cache: [layer 0][k | v][positions][row].
    let mut caches = Vec::with_capacity(case.caches.len());
    let mut seqtab = Vec::with_capacity(3 * case.caches.len());
    for (k, v) in case.caches {
        let mut bytes = Vec::new();
        cache_bytes(kv, nkv, hd, k, &mut bytes);
        cache_bytes(kv, nkv, hd, v, &mut bytes);
        let buf = gpu.upload(&bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_attention_takes_one_split_per_row_unless_sms_idle_over_long_rows() {
        use SplitBlock::*;
        // 2B4T (5 kv heads) on 132 SMs, f16 cache (one block of 8 warps and two with the second
        // set of registers per SM): batch 64 in blocks of 4 warps (one wave of three per SM), 32
        // and 48 of 4 with a second set of registers, 24 and below of 8.
        let f16 = Resident {
            eight: 132,
            ahead: 2 * 132,
        };
        let alone = |pairs| (pairs, pairs);
        assert_eq!(split_shape(alone(320), 132, f16, 16), (Four, 1));
        assert_eq!(split_shape(alone(240), 132, f16, 16), (FourAhead, 1));
        assert_eq!(split_shape(alone(160), 132, f16, 64), (FourAhead, 1));
        assert_eq!(split_shape(alone(120), 132, f16, 64), (Eight, 1));
        assert_eq!(split_shape(alone(80), 132, f16, 64), (Eight, 1));
        // q8 (two of 8 warps, three with the second set per SM): batch 32 and 48 in 8 warps,
        // batch 56 and 64 with the second set, 80 without, and neither lane of batch 96 (48 + 48
        // rows) or 128 (64 + 64).
        let q8 = Resident {
            eight: 2 * 132,
            ahead: 3 * 132,
        };
        assert_eq!(split_shape(alone(160), 132, q8, 16), (Eight, 1));
        assert_eq!(split_shape(alone(240), 132, q8, 16), (Eight, 1));
        assert_eq!(split_shape(alone(280), 132, q8, 16), (FourAhead, 1));
        assert_eq!(split_shape(alone(320), 132, q8, 16), (FourAhead, 1));
        assert_eq!(split_shape(alone(400), 132, q8, 16), (Four, 1));
        assert_eq!(split_shape((240, 480), 132, q8, 16), (Four, 1));
        assert_eq!(split_shape((320, 640), 132, q8, 16), (Four, 1));
        // Batch 4: 4 splits at depth 2048 (33 chunks: 64 in a graph), 2 at 1,024, 1 below.
        assert_eq!(split_shape(alone(20), 132, f16, 64), (Eight, 4));
        assert_eq!(split_shape(alone(20), 132, f16, 32), (Eight, 2));
        assert_eq!(split_shape(alone(20), 132, f16, 16), (Eight, 1));
        assert_eq!(split_shape((0, 0), 132, f16, 1), (Eight, 1));
    }

    #[test]
    fn attention_cases_that_do_not_fit_are_refused() {
        let caches = vec![(vec![0.0f32; 3 * 64], vec![0.0f32; 3 * 64])];
        let row = |s: usize, p: usize, q: usize| vec![(s, p, vec![0.0f32; q])];
        let case = |n_heads, n_kv_heads, head_dim, rows: &[(usize, usize, Vec<f32>)]| {
            check_attention_case(&AttentionCase {
                kv: KvType::F16,
                n_heads,
                n_kv_heads,
                head_dim,
                caches: &caches,
                rows,
            })
        };
        assert!(case(2, 1, 64, &row(0, 2, 128)).is_ok());
        let f32_cache = check_attention_case(&AttentionCase {
            kv: KvType::F32,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 64,
            caches: &caches,
            rows: &row(0, 2, 128),
        });
        assert!(matches!(f32_cache, Err(CudaError::Invalid(_))));
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

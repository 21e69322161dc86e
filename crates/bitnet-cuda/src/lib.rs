//! The NVIDIA GPU backend of bitnet-rs: the whole BitNet b1.58 forward pass on one GPU.
//!
//! Nothing CUDA is needed to build this crate: [`cudarc`] opens the driver (`libcuda`) and the
//! run-time compiler (`libnvrtc`) when a model is first placed on a GPU, and the kernels
//! (`kernels.cu`) are compiled then for the device's architecture and cached on disk. On a
//! machine without them, [`device_count`] says why and the engine stays on the CPU.
//!
//! Per step: embedding lookup, then per layer RMSNorm + int8 quantization (one kernel), the
//! stacked q|k|v ternary product, RoPE + KV-cache store, split attention and its merge, sub-norm +
//! quantization, the output projection added into the residual, the same for the FFN with
//! gate|up stacked and `act(gate) * up` fused into the next norm; then the final norm and the
//! head. Ternary products use `dp4a` for one token (normalizing inside the product kernel) and
//! int8 tensor-core `mma` beyond; attention over an f16 cache uses f16 tensor-core `mma`
//! (queries and softmax weights split into f16 high and low parts) except in decode steps of up
//! to 4 rows, which on sm_90 run each key/value head's chunks as one thread-block cluster
//! merging through distributed shared memory.
#![deny(missing_docs)]

mod device;
mod model;
pub mod pack;

pub use device::{
    Compiled, Gpu, Kernel, PARTS, PdlScope, cache_dir, compile, compile_part, compile_parts,
    device_count, driver_present, elf_is_whole, fill_cache, nvrtc_present,
};
pub use model::{
    AttentionCase, AttentionKernel, CudaKv, CudaModel, LinearPath, MAX_ROWS, NormPath, SplitBlock,
    TOPK_MAX, argmax_rows, attention_forward, head_greedy, head_logits, norm_linear_forward,
    norm_quant, ternary_forward, ternary_forward_onto, ternary_timing, top_k_rows,
};

/// Element type of the KV cache on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// IEEE half (default: half the bytes per attended position).
    #[default]
    F16,
    /// f32, as the CPU path stores it.
    F32,
    /// int8 codes with one f32 scale per position and key/value head (`absmax / 127`), as the
    /// CPU's q8 cache stores them, code for code: about a quarter of f32's bytes (each position's
    /// row padded to 16 bytes). Attention runs on the same kernels as over f16 (the tensor cores'
    /// scores then exact integer sums: `tensor_core_attention` in `model/attention.rs`).
    Q8,
}

impl KvType {
    /// Bytes one position of one layer's keys (or values) takes: `n_kv_heads * head_dim`
    /// elements, and for q8 their scales, the row padded to 16 bytes.
    pub fn row_bytes(self, n_kv_heads: usize, head_dim: usize) -> usize {
        let kvd = n_kv_heads * head_dim;
        match self {
            KvType::F16 => 2 * kvd,
            KvType::F32 => 4 * kvd,
            KvType::Q8 => (kvd + 4 * n_kv_heads).next_multiple_of(16),
        }
    }

    /// The kernels' name part (`rope_kv_q8`, `attn_vec_f16`, ...).
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
            KvType::Q8 => "q8",
        }
    }
}

/// How the output head is stored on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadType {
    /// As the file stores it (f32/f16/bf16; block-quantized heads are decoded to f16).
    #[default]
    Native,
    /// Per-row symmetric int8 (half the bytes of f16).
    Int8,
}

/// Where and how a model is placed on a GPU.
#[derive(Clone, Copy, Debug)]
pub struct CudaOptions {
    /// Device index.
    pub ordinal: usize,
    /// KV cache element type.
    pub kv: KvType,
    /// Head storage.
    pub head: HeadType,
    /// The longest sequence to serve (sizes the RoPE table and attention scratch).
    pub max_context: usize,
    /// Says on stderr when the kernels are compiled (the first use on a GPU architecture: 86 s
    /// on an H200 host; cached on disk afterwards) and how long that took.
    pub progress: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            ordinal: 0,
            kv: KvType::default(),
            head: HeadType::default(),
            max_context: 4096,
            progress: false,
        }
    }
}

/// Errors of the GPU backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable GPU (library missing, no device, bad index).
    #[error("no usable CUDA GPU: {0}")]
    Unavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// NVRTC rejected the kernels.
    #[error("compiling the CUDA kernels failed: {0}")]
    Compile(String),
    /// A previous step panicked while holding the device's buffers.
    #[error("the GPU state was poisoned by an earlier failure")]
    Poisoned,
    /// Arguments that do not fit together (shapes, indices).
    #[error("invalid arguments: {0}")]
    Invalid(String),
}

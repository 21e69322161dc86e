//! `bitnet convert`: any model the engine reads, written as GGUF with the ternary encoding and
//! head type of the caller's choice; and synthetic models of real shapes (2B4T) with random
//! ternary weights, so anyone can benchmark without downloading.
//!
//! Everything goes through the model crate's [`WeightSource`], so a converted file holds exactly
//! the ternary codes, scales, norms and float tensors the engine would run from the original.

use std::path::Path;
use std::sync::Arc;

use bitnet_core::TernaryMatrix;
use bitnet_core::ops::{FloatMatrix, FloatStorage};
use bitnet_gguf::{Array, GgufFile, GgufWriter, TensorType, Value};
use bitnet_hf::HfModel;
use bitnet_model::{
    Activation, GgufSource, HfSource, ModelConfig, ModelError, Norm, Proj, WeightSource,
};
use bitnet_tokenizer::GgufVocab;

use crate::inspect::load_hf_tokenizer;
use crate::load::{Source, detect, gguf_vocab};
use crate::{EngineBuilder, EngineError};

/// How ternary linears are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    /// bitnet.cpp's I2_S: 2 bits per weight, one f32 scale per tensor (type 36, fork ids).
    I2S,
    /// llama.cpp's TQ2_0: 2.06 bits per weight, f16 scale per 256-block.
    TQ2_0,
    /// llama.cpp's TQ1_0: 1.69 bits per weight (base 3), f16 scale per 256-block.
    TQ1_0,
    /// f16 values `t * s` (what llama.cpp's converter writes before quantizing).
    F16,
}

impl std::str::FromStr for WeightType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "i2_s" | "i2s" => Ok(Self::I2S),
            "tq2_0" => Ok(Self::TQ2_0),
            "tq1_0" => Ok(Self::TQ1_0),
            "f16" => Ok(Self::F16),
            _ => Err(format!(
                "unknown weight type '{s}' (i2_s, tq2_0, tq1_0, f16)"
            )),
        }
    }
}

/// How a float matrix (embedding or head) is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    /// f32.
    F32,
    /// IEEE half: the faithful default for 2B4T.
    F16,
    /// 8-bit, blocks of 32 with an f16 scale.
    Q8_0,
    /// 6.56-bit k-quant (bitnet.cpp's recommended head type).
    Q6K,
    /// 4.5-bit, blocks of 32 with an f16 scale (ggml's Q4_0): the smallest head, at a cost in
    /// accuracy.
    Q4_0,
    /// 4.5-bit k-quant: 256-value super-blocks of 32-value sub-blocks with 6-bit scales and
    /// mins (ggml's Q4_K), as small as Q4_0 and usually closer.
    Q4K,
}

impl std::str::FromStr for FloatType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            "q6_k" => Ok(Self::Q6K),
            "q4_0" => Ok(Self::Q4_0),
            "q4_k" => Ok(Self::Q4K),
            _ => Err(format!(
                "unknown float type '{s}' (f32, f16, q8_0, q6_k, q4_k, q4_0)"
            )),
        }
    }
}

/// What to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Ternary encoding of the seven linears of each block.
    pub weights: WeightType,
    /// The output head's type (for tied models: the shared token embedding's).
    pub head: FloatType,
    /// The token embedding's type when the head is separate.
    pub embedding: FloatType,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            weights: WeightType::I2S,
            head: FloatType::F16,
            embedding: FloatType::F16,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvertReport {
    /// Bytes of the file.
    pub bytes: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of the ternary linears.
    pub ternary_bytes: u64,
    /// Bytes of the head (the embedding when tied).
    pub head_bytes: u64,
}

/// Converts a model (GGUF file, HF directory or hub id) to a GGUF file.
pub fn convert(
    model: &str,
    out: &Path,
    opts: &ConvertOptions,
    offline: bool,
) -> Result<ConvertReport, EngineError> {
    let path = EngineBuilder::new(model)
        .offline(offline)
        .progress(true)
        .resolve()?;
    match detect(&path)? {
        Source::Gguf(file) => {
            let file = Arc::new(GgufFile::open(&file)?);
            let vocab = gguf_vocab(&file)?;
            let name = file.opt_str("general.name")?.map(str::to_string);
            write_gguf(
                &GgufSource::new(file)?,
                vocab.as_ref(),
                name.as_deref(),
                out,
                opts,
            )
        }
        Source::Hf(dir) => {
            let hf = HfModel::open(&dir)?;
            let vocab = load_hf_tokenizer(&hf)?
                .map(|t| t.to_gguf_vocab())
                .transpose()?;
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            write_gguf(
                &HfSource::new(&hf)?,
                vocab.as_ref(),
                name.as_deref(),
                out,
                opts,
            )
        }
    }
}

fn float_values(m: &FloatMatrix) -> Vec<f32> {
    let mut v = vec![0.0f32; m.rows() * m.cols()];
    for (r, row) in v.chunks_exact_mut(m.cols().max(1)).enumerate() {
        m.row_into(r, row);
    }
    v
}

fn encode_float(name: &str, values: &[f32], t: FloatType) -> Result<(u32, Vec<u8>), EngineError> {
    let err = |e: bitnet_gguf::GgufError| EngineError::Options(format!("{name}: {e}"));
    Ok(match t {
        FloatType::F32 => (TensorType::F32.id(), bitnet_gguf::encode_f32(values)),
        FloatType::F16 => (
            TensorType::F16.id(),
            bitnet_gguf::encode_f16(values).map_err(err)?,
        ),
        FloatType::Q8_0 => (
            TensorType::Q8_0.id(),
            bitnet_gguf::encode_q8_0(values).map_err(err)?,
        ),
        FloatType::Q6K => (
            TensorType::Q6_K.id(),
            bitnet_gguf::encode_q6_k(values).map_err(err)?,
        ),
        FloatType::Q4_0 => (
            TensorType::Q4_0.id(),
            bitnet_gguf::encode_q4_0(values).map_err(err)?,
        ),
        FloatType::Q4K => (
            TensorType::Q4_K.id(),
            bitnet_gguf::encode_q4_k(values).map_err(err)?,
        ),
    })
}

fn encode_ternary(
    name: &str,
    m: &TernaryMatrix,
    t: WeightType,
) -> Result<(u32, Vec<u8>), EngineError> {
    let err = |e: bitnet_gguf::GgufError| {
        EngineError::Options(format!(
            "{name} ({}x{}) cannot be stored as {t:?}: {e}",
            m.rows(),
            m.cols()
        ))
    };
    Ok(match t {
        WeightType::I2S => (
            TensorType::I2_S.id(),
            bitnet_gguf::encode_i2_s(m.codes(), m.scale()).map_err(err)?,
        ),
        WeightType::TQ2_0 => (
            TensorType::TQ2_0.id(),
            bitnet_gguf::encode_tq2_0(m.codes(), m.scale()).map_err(err)?,
        ),
        WeightType::TQ1_0 => (
            TensorType::TQ1_0.id(),
            bitnet_gguf::encode_tq1_0(m.codes(), m.scale()).map_err(err)?,
        ),
        WeightType::F16 => {
            let s = m.scale();
            if half::f16::from_f32(s).to_f32() != s {
                return Err(EngineError::Options(format!(
                    "{name}: scale {s} is not exact in f16, so f16 weights would change the model; use i2_s"
                )));
            }
            let values: Vec<f32> = m.codes().iter().map(|&c| c as f32 * s).collect();
            (
                TensorType::F16.id(),
                bitnet_gguf::encode_f16(&values).map_err(err)?,
            )
        }
    })
}

/// Writes `src` (with `vocab` as tokenizer metadata, if any) as a GGUF file.
pub fn write_gguf(
    src: &dyn WeightSource,
    vocab: Option<&GgufVocab>,
    name: Option<&str>,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, EngineError> {
    let c = src.config().clone();
    // llama.cpp's `bitnet` graph is SiLU; BitNet b1.58 (relu2) files use bitnet.cpp's name.
    let arch = match c.activation {
        Activation::Relu2 => "bitnet-b1.58",
        Activation::Silu => "bitnet",
    };
    let mut w = GgufWriter::new();
    let gerr = |e: bitnet_gguf::GgufError| EngineError::Gguf(Box::new(e));
    w.add_metadata("general.architecture", arch).map_err(gerr)?;
    w.add_metadata("general.name", name.unwrap_or("bitnet-rs model"))
        .map_err(gerr)?;
    let k = |key: &str| format!("{arch}.{key}");
    let u = |v: usize| Value::U32(v as u32);
    for (key, v) in [
        ("vocab_size", u(c.vocab_size)),
        ("context_length", u(c.context_length)),
        ("embedding_length", u(c.hidden_size)),
        ("block_count", u(c.n_layers)),
        ("feed_forward_length", u(c.intermediate_size)),
        ("attention.head_count", u(c.n_heads)),
        ("attention.head_count_kv", u(c.n_kv_heads)),
        ("rope.dimension_count", u(c.head_dim)),
        ("rope.freq_base", Value::F32(c.rope_theta)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps),
        ),
    ] {
        w.add_metadata(k(key), v).map_err(gerr)?;
    }
    if c.head_dim * c.n_heads != c.hidden_size {
        w.add_metadata(k("attention.key_length"), u(c.head_dim))
            .map_err(gerr)?;
    }
    if let Some(v) = vocab {
        add_vocab(&mut w, v).map_err(gerr)?;
    }
    let mut report = ConvertReport {
        bytes: 0,
        tensors: 0,
        ternary_bytes: 0,
        head_bytes: 0,
    };
    let mut add =
        |w: &mut GgufWriter<'_>, name: String, dims: Vec<u64>, (ty, data): (u32, Vec<u8>)| {
            report.tensors += 1;
            let n = data.len() as u64;
            w.add_tensor(name, dims, ty, data).map_err(gerr)?;
            Ok::<u64, EngineError>(n)
        };
    let (v, h) = (c.vocab_size as u64, c.hidden_size as u64);
    let embed = float_values(&src.embedding()?);
    let head = src.head()?;
    let embed_type = if head.is_none() {
        opts.head
    } else {
        opts.embedding
    };
    let n = add(
        &mut w,
        "token_embd.weight".into(),
        vec![h, v],
        encode_float("token_embd", &embed, embed_type)?,
    )?;
    drop(embed);
    if let Some(head) = head {
        report.head_bytes = add(
            &mut w,
            "output.weight".into(),
            vec![h, v],
            encode_float("output", &float_values(&head), opts.head)?,
        )?;
    } else {
        report.head_bytes = n;
    }
    add(
        &mut w,
        "output_norm.weight".into(),
        vec![h],
        (
            TensorType::F32.id(),
            bitnet_gguf::encode_f32(&src.output_norm()?),
        ),
    )?;
    for l in 0..c.n_layers {
        for norm in Norm::ALL {
            let values = src.norm(l, norm)?;
            let name = format!("blk.{l}.{}.weight", norm.gguf_name());
            add(
                &mut w,
                name,
                vec![values.len() as u64],
                (TensorType::F32.id(), bitnet_gguf::encode_f32(&values)),
            )?;
        }
        for p in Proj::ALL {
            let m = src.ternary(l, p)?;
            let name = format!("blk.{l}.{}.weight", p.gguf_name());
            let enc = encode_ternary(&name, &m, opts.weights)?;
            report.ternary_bytes += add(&mut w, name, vec![m.cols() as u64, m.rows() as u64], enc)?;
        }
    }
    report.bytes = w.write_to(out).map_err(gerr)?;
    Ok(report)
}

fn add_vocab(w: &mut GgufWriter<'_>, v: &GgufVocab) -> bitnet_gguf::Result<()> {
    w.add_metadata("tokenizer.ggml.model", v.model.as_str())?;
    if let Some(pre) = &v.pre {
        w.add_metadata("tokenizer.ggml.pre", pre.as_str())?;
    }
    w.add_metadata("tokenizer.ggml.tokens", Array::String(v.tokens.clone()))?;
    if let Some(t) = &v.token_types {
        w.add_metadata("tokenizer.ggml.token_type", Array::I32(t.clone()))?;
    }
    w.add_metadata("tokenizer.ggml.merges", Array::String(v.merges.clone()))?;
    for (key, id) in [("bos", v.bos), ("eos", v.eos), ("eot", v.eot)] {
        if let Some(id) = id {
            w.add_metadata(format!("tokenizer.ggml.{key}_token_id"), Value::U32(id))?;
        }
    }
    if let Some(b) = v.add_bos {
        w.add_metadata("tokenizer.ggml.add_bos_token", b)?;
    }
    if let Some(b) = v.add_eos {
        w.add_metadata("tokenizer.ggml.add_eos_token", b)?;
    }
    if let Some(t) = &v.chat_template {
        w.add_metadata("tokenizer.chat_template", t.as_str())?;
    }
    Ok(())
}

/// Shapes of synthetic models: `2b4t` is microsoft/bitnet-b1.58-2B-4T's exact shape.
pub fn synthetic_config(preset: &str) -> Result<ModelConfig, EngineError> {
    // `<preset>-silu`: the same shape as llama.cpp's `bitnet` architecture (SiLU FFN), the form
    // the peers load, for side-by-side speed runs.
    let (shape, silu) = match preset.strip_suffix("-silu") {
        Some(base) => (base, true),
        None => (preset, false),
    };
    let (hidden, layers, heads, kv, inter, vocab) = match shape {
        "2b4t" => (2560, 30, 20, 5, 6912, 128256),
        "700m" => (1536, 24, 16, 4, 4096, 32000),
        "125m" => (768, 12, 12, 4, 2048, 32000),
        "tiny" => (256, 2, 4, 2, 512, 1024),
        // About one million parameters: the seed's "1M-parameter model" benchmark target.
        "1m" => (128, 4, 4, 2, 384, 512),
        _ => {
            return Err(EngineError::Options(format!(
                "unknown synthetic preset '{preset}' (2b4t, 700m, 125m, tiny, 1m; -silu for llama.cpp's bitnet architecture)"
            )));
        }
    };
    Ok(ModelConfig {
        architecture: if silu { "bitnet" } else { "bitnet-b1.58" }.into(),
        activation: if silu {
            Activation::Silu
        } else {
            Activation::Relu2
        },
        hidden_size: hidden,
        intermediate_size: inter,
        n_layers: layers,
        n_heads: heads,
        n_kv_heads: kv,
        head_dim: hidden / heads,
        vocab_size: vocab,
        rope_theta: 500000.0,
        rms_norm_eps: 1e-5,
        context_length: 4096,
        tied_embeddings: true,
    })
}

/// A model with a real shape and random weights: ternary codes with about half non-zero,
/// per-tensor scales near 2B4T's, random f16-exact embeddings and unit-ish norms. Deterministic
/// for a seed.
pub struct SyntheticSource {
    config: ModelConfig,
    seed: u64,
}

impl SyntheticSource {
    /// A synthetic model of `preset`'s shape.
    pub fn new(preset: &str, seed: u64) -> Result<Self, EngineError> {
        Ok(Self {
            config: synthetic_config(preset)?,
            seed,
        })
    }

    fn rng(&self, stream: u64) -> SplitMix {
        SplitMix(self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// A tiny, fast, reproducible generator (SplitMix64); weights only need to be arbitrary.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

impl WeightSource for SyntheticSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn ternary(&self, layer: usize, proj: Proj) -> Result<TernaryMatrix, ModelError> {
        let (rows, cols) = proj.shape(&self.config);
        let mut rng = self.rng(1000 + layer as u64 * 16 + proj as u64);
        let mut codes = Vec::with_capacity(rows * cols);
        while codes.len() < rows * cols {
            let mut bits = rng.next();
            for _ in 0..32 {
                // 0 -> -1, 1|2 -> 0, 3 -> +1: half of the weights are zero.
                codes.push(match bits & 3 {
                    0 => -1,
                    3 => 1,
                    _ => 0,
                });
                bits >>= 2;
            }
        }
        codes.truncate(rows * cols);
        // Scales exact in f16 (so every weight type stores them losslessly), near 2B4T's ~1.5.
        let scale = 1.0 + (rng.next() % 8) as f32 / 8.0;
        Ok(TernaryMatrix::new(rows, cols, codes, scale)?)
    }

    fn norm(&self, layer: usize, norm: Norm) -> Result<Vec<f32>, ModelError> {
        let mut rng = self.rng(layer as u64 * 8 + norm as u64);
        Ok((0..norm.len(&self.config))
            .map(|_| 1.0 + 0.25 * rng.unit())
            .collect())
    }

    fn output_norm(&self) -> Result<Vec<f32>, ModelError> {
        let mut rng = self.rng(7);
        Ok((0..self.config.hidden_size)
            .map(|_| 1.0 + 0.25 * rng.unit())
            .collect())
    }

    fn embedding(&self) -> Result<FloatMatrix, ModelError> {
        let (v, h) = (self.config.vocab_size, self.config.hidden_size);
        let mut rng = self.rng(3);
        let data = (0..v * h)
            .map(|_| half::f16::from_f32(0.05 * rng.unit()))
            .collect();
        Ok(FloatMatrix::new(v, h, FloatStorage::F16(data))?)
    }

    fn head(&self) -> Result<Option<FloatMatrix>, ModelError> {
        Ok(None)
    }
}

/// Writes a synthetic model of `preset`'s shape. Without `vocab_from` it has no tokenizer (run
/// it with token ids); with it, it borrows that model's tokenizer (whose ids must fit the
/// preset's vocabulary), so text prompts and the server work on it too.
pub fn synthetic(
    preset: &str,
    seed: u64,
    out: &Path,
    opts: &ConvertOptions,
    vocab_from: Option<&str>,
) -> Result<ConvertReport, EngineError> {
    let src = SyntheticSource::new(preset, seed)?;
    let vocab = match vocab_from {
        Some(m) => {
            let v = crate::load_tokenizer(m, true)?.to_gguf_vocab()?;
            let mut v = v;
            let (have, want) = (v.tokens.len(), src.config.vocab_size);
            if have > want {
                return Err(EngineError::Options(format!(
                    "{m}'s tokenizer has {have} tokens, more than the {preset} vocabulary of {want}"
                )));
            }
            // Pad the token list to the embedding's rows with unused placeholders: llama.cpp
            // takes the vocabulary size from the token list and checks the embedding against it.
            let mut types = v.token_types.take().unwrap_or_else(|| vec![1; have]);
            v.tokens
                .extend((have..want).map(|i| format!("<|bitnet_rs_unused_{i}|>")));
            types.resize(want, 5); // 5: UNUSED in GGUF's token types
            v.token_types = Some(types);
            Some(v)
        }
        None => None,
    };
    let name = format!("bitnet-rs synthetic {preset}");
    write_gguf(&src, vocab.as_ref(), Some(&name), out, opts)
}

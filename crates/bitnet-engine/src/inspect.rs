//! `inspect` and tokenizer-only loading: reading what a model file holds without running it.

use std::path::Path;

use bitnet_gguf::GgufFile;
use bitnet_hf::HfModel;
use bitnet_tokenizer::Tokenizer;
use serde::Serialize;

use crate::load::{Source, detect, gguf_vocab};
use crate::{EngineBuilder, EngineError};

/// One tensor as stored.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSummary {
    /// Name in the file.
    pub name: String,
    /// Stored type (`i2_s`, `f16`, `u8`, or `unknown(<id>)`).
    pub dtype: String,
    /// Shape as the file lists it (GGUF: innermost first; safetensors: outermost first).
    pub shape: Vec<u64>,
    /// Bytes in the file (`None` when the type is unknown).
    pub bytes: Option<u64>,
}

/// What a model file holds.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// Resolved local path.
    pub path: String,
    /// `gguf` or `huggingface`.
    pub format: String,
    /// Architecture named by the file.
    pub architecture: Option<String>,
    /// Hyper-parameters as the engine reads them (`None` for vocabulary-only files or when the
    /// file cannot be run; see `config_error`).
    pub config: Option<serde_json::Value>,
    /// Why the hyper-parameters could not be read, if they could not.
    pub config_error: Option<String>,
    /// Metadata key/values (GGUF; long arrays summarized).
    pub metadata: Vec<(String, String)>,
    /// Tensors in file order.
    pub tensors: Vec<TensorSummary>,
    /// Tokenizer summary, if any.
    pub tokenizer: Option<serde_json::Value>,
    /// The chat template source, if the file carries one.
    pub chat_template: Option<String>,
}

fn config_json(c: &bitnet_model::ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "architecture": c.architecture,
        "activation": c.activation.name(),
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "rope_theta": short(c.rope_theta),
        "rms_norm_eps": short(c.rms_norm_eps),
        "context_length": c.context_length,
        "tied_embeddings": c.tied_embeddings,
    })
}

fn tokenizer_json(t: &Tokenizer) -> serde_json::Value {
    serde_json::json!({
        "vocab_size": t.vocab_size(),
        "bos": t.bos_id(),
        "eos": t.eos_id(),
        "eot": t.eot_id(),
        "add_bos": t.add_bos_default(),
    })
}

/// Describes a model (GGUF file, HF directory or hub id) without loading its weights.
pub fn inspect(model: &str, offline: bool) -> Result<Inspection, EngineError> {
    let path = EngineBuilder::new(model)
        .offline(offline)
        .progress(true)
        .resolve()?;
    match detect(&path)? {
        Source::Gguf(file) => inspect_gguf(&file),
        Source::Hf(dir) => inspect_hf(&dir),
    }
}

fn inspect_gguf(path: &Path) -> Result<Inspection, EngineError> {
    let file = GgufFile::open(path)?;
    let (config, config_error) = match bitnet_model::config_from_gguf(&file) {
        Ok(c) => (Some(config_json(&c)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let metadata = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), abbreviate(v.to_string(), 160)))
        .collect();
    let tensors = file
        .tensors()
        .iter()
        .map(|t| TensorSummary {
            name: t.name.clone(),
            dtype: t
                .kind
                .map(|k| k.name().to_string())
                .unwrap_or_else(|| format!("unknown({})", t.type_id)),
            shape: t.dims.clone(),
            bytes: t.kind.map(|_| t.n_bytes),
        })
        .collect();
    let vocab = gguf_vocab(&file)?;
    let tokenizer = vocab.as_ref().map(|v| match Tokenizer::from_gguf_vocab(v) {
        Ok(t) => tokenizer_json(&t),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    });
    Ok(Inspection {
        path: path.display().to_string(),
        format: "gguf".into(),
        architecture: file.architecture().ok().map(str::to_string),
        config,
        config_error,
        metadata,
        tensors,
        tokenizer,
        chat_template: vocab.and_then(|v| v.chat_template),
    })
}

fn inspect_hf(dir: &Path) -> Result<Inspection, EngineError> {
    let hf = HfModel::open(dir)?;
    let (config, config_error) = match bitnet_model::config_from_hf(hf.config()) {
        Ok(c) => (Some(config_json(&c)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut tensors = Vec::new();
    for name in hf.tensor_names() {
        let t = hf.tensor(name)?;
        tensors.push(TensorSummary {
            name: name.to_string(),
            dtype: format!("{:?}", t.dtype).to_lowercase(),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            bytes: Some(t.data.len() as u64),
        });
    }
    let tok = load_hf_tokenizer(&hf)?;
    Ok(Inspection {
        path: dir.display().to_string(),
        format: "huggingface".into(),
        architecture: hf.config().architectures.first().cloned(),
        config,
        config_error,
        metadata: Vec::new(),
        tensors,
        tokenizer: tok.as_ref().map(tokenizer_json),
        chat_template: tok.and_then(|t| t.chat_template().map(str::to_string)),
    })
}

pub(crate) fn load_hf_tokenizer(hf: &HfModel) -> Result<Option<Tokenizer>, EngineError> {
    Ok(match hf.tokenizer_json_path() {
        Some(json) => Some(Tokenizer::from_files(json, hf.tokenizer_config_path())?),
        None => None,
    })
}

/// Loads only the tokenizer of a model (works on vocabulary-only GGUF files).
pub fn load_tokenizer(model: &str, offline: bool) -> Result<Tokenizer, EngineError> {
    let path = EngineBuilder::new(model)
        .offline(offline)
        .progress(true)
        .resolve()?;
    let tok = match detect(&path)? {
        Source::Gguf(file) => {
            let file = GgufFile::open(&file)?;
            gguf_vocab(&file)?
                .map(|v| Tokenizer::from_gguf_vocab(&v))
                .transpose()?
        }
        Source::Hf(dir) => load_hf_tokenizer(&HfModel::open(&dir)?)?,
    };
    tok.ok_or(EngineError::NoTokenizer)
}

/// Cuts long metadata values (chat templates, long strings) to `max` characters for listings.
fn abbreviate(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}… ({} bytes)", one_line(&s[..at]), s.len()),
        None => one_line(&s),
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}

/// f32 hyper-parameters shown with their shortest decimal form (1e-5, not 9.99999974e-6).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

//! `config.json`: the model hyper-parameters and the BitNet `quantization_config`.
//!
//! Defaults follow transformers where a key may legitimately be absent; keys that decide tensor
//! shapes or the forward pass (sizes, `hidden_act`, `rms_norm_eps`...) are required, because
//! guessing them silently produces a model that runs and talks nonsense.

use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::HfError;

/// How a checkpoint's BitLinear layers interpret `weight_scale`.
///
/// Read from transformers' `integrations/bitnet.py`:
/// - `BitLinear` (`bitlinear`, the older 1bitLLM/HF1BitLLM checkpoints) computes
///   `y = F.linear(x_q, t) / (input_scale * weight_scale)`, i.e. the stored value is the
///   *reciprocal* of the weight scale: `W = t / weight_scale`.
/// - `AutoBitLinear` (`autobitlinear`, 2B4T) computes `F.linear(act_quant(x), t) * weight_scale`:
///   `W = t * weight_scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearClass {
    /// `bitlinear`: `weight_scale` is the reciprocal of the effective scale.
    BitLinear,
    /// `autobitlinear`: `weight_scale` multiplies.
    AutoBitLinear,
}

/// Whether the checkpoint stores packed ternary weights or float masters quantized at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizationMode {
    /// Float master weights, ternarized with absmean on every forward (training/QAT layout).
    Online,
    /// Packed uint8 weights plus `weight_scale`, already ternary.
    Offline,
}

/// The `quantization_config` object of a BitNet `config.json`.
///
/// Defaults are transformers' `BitNetQuantConfig` defaults (`linear_class = "bitlinear"`,
/// `quantization_mode = "offline"`), so an old checkpoint that only says
/// `{"quant_method": "bitnet"}` is read the way transformers reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationConfig {
    /// `"bitnet"` for every checkpoint this crate decodes; other methods are kept so the caller
    /// can report them.
    pub quant_method: String,
    /// See [`LinearClass`].
    pub linear_class: LinearClass,
    /// See [`QuantizationMode`].
    pub quantization_mode: QuantizationMode,
    /// Newer transformers option: an extra RMSNorm (weights `<linear>.rms_norm.weight`) applied
    /// to each BitLinear input before quantization. 2B4T does not use it; an engine that does not
    /// implement it must refuse checkpoints that set it.
    pub use_rms_norm: bool,
    /// Epsilon of that optional RMSNorm.
    pub rms_norm_eps: Option<f64>,
    /// Modules kept in float (transformers always adds `lm_head`).
    pub modules_to_not_convert: Option<Vec<String>>,
}

/// Parsed `config.json` of a (BitNet or LLaMA-layout) causal LM.
///
/// Defaults where a key is absent, checked against transformers' `BitNetConfig`/`LlamaConfig`:
/// - `num_key_value_heads`: `num_attention_heads` (both classes' backward-compatibility rule).
/// - `rope_theta`: 500000 when `model_type == "bitnet"` (`BitNetConfig` default), else 10000
///   (`LlamaConfig` default). A transformers-v5 style `rope_parameters.rope_theta` is honoured.
/// - `tie_word_embeddings`: **false**, the default of both `BitNetConfig` and `LlamaConfig`
///   (only the generic `PretrainedConfig` defaults to true). 2B4T's config.json sets it to true
///   explicitly; a checkpoint that omits it and has no `lm_head.weight` is inconsistent and the
///   model loader should say so.
#[derive(Debug, Clone)]
pub struct HfConfig {
    /// `architectures`, e.g. `["BitNetForCausalLM"]`; empty when absent.
    pub architectures: Vec<String>,
    /// `model_type`, e.g. `bitnet` or `llama`.
    pub model_type: String,
    /// Model width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Trained context length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (see the type docs for its default).
    pub rope_theta: f64,
    /// FFN activation name (`relu2` for 2B4T, `silu` for LLaMA-layout BitNets).
    pub hidden_act: String,
    /// Whether the output head reuses the embedding (see the type docs for its default).
    pub tie_word_embeddings: bool,
    /// Explicit per-head dimension, when the config gives one.
    pub head_dim: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s); `eos_token_id` may be a number or a list.
    pub eos_token_ids: Vec<u32>,
    /// Padding token (negative values, used by some old configs for "none", read as `None`).
    pub pad_token_id: Option<u32>,
    /// `rope_scaling` kept raw: the engine decides which kinds it supports and errors otherwise.
    pub rope_scaling: Option<Value>,
    /// `torch_dtype` (or v5 `dtype`) as written, e.g. `bfloat16`; informational only.
    pub torch_dtype: Option<String>,
    /// The BitNet quantization settings, when present.
    pub quantization_config: Option<QuantizationConfig>,
    /// The whole file, for keys this struct does not model.
    pub raw: Value,
}

/// Token id fields: a number, `null`, or (for `eos_token_id`) a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

fn token_id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let v: Option<TokenIds> = Option::deserialize(d)?;
    Ok(match v {
        None => Vec::new(),
        Some(TokenIds::One(id)) => u32::try_from(id).ok().into_iter().collect(),
        Some(TokenIds::Many(ids)) => ids
            .into_iter()
            .filter_map(|i| u32::try_from(i).ok())
            .collect(),
    })
}

fn token_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v: Option<TokenIds> = Option::deserialize(d)?;
    Ok(match v {
        Some(TokenIds::One(id)) => u32::try_from(id).ok(),
        // A list where one id is expected: take the first, as tokenizers do for bos.
        Some(TokenIds::Many(ids)) => ids.first().and_then(|&i| u32::try_from(i).ok()),
        None => None,
    })
}

fn non_null_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(if v.is_null() { None } else { Some(v) })
}

#[derive(Deserialize)]
struct RawQuant {
    quant_method: String,
    #[serde(default)]
    linear_class: Option<String>,
    #[serde(default)]
    quantization_mode: Option<String>,
    #[serde(default)]
    use_rms_norm: Option<bool>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    modules_to_not_convert: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default, deserialize_with = "token_id")]
    bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id_list")]
    eos_token_id: Vec<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pad_token_id: Option<u32>,
    #[serde(default, deserialize_with = "non_null_value")]
    rope_scaling: Option<Value>,
    #[serde(default)]
    torch_dtype: Option<String>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    quantization_config: Option<RawQuant>,
}

impl HfConfig {
    /// Reads and validates `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self, HfError> {
        let text = std::fs::read_to_string(path).map_err(|e| HfError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config text; `path` only labels errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, HfError> {
        let parse_err = |source| HfError::ConfigParse {
            path: path.to_path_buf(),
            source,
        };
        let raw: Value = serde_json::from_str(text).map_err(parse_err)?;
        let bad = |message: String| HfError::Config {
            path: path.to_path_buf(),
            message,
        };
        // serde alone names a key only when it is missing; the path tracker also names the key
        // whose value has the wrong type ("hidden_size: invalid type: string ...").
        let c: RawConfig = serde_path_to_error::deserialize(&raw).map_err(|e| {
            let key = e.path().to_string();
            if key == "." {
                bad(format!("invalid config: {}", e.inner()))
            } else {
                bad(format!("invalid config: key {key}: {}", e.inner()))
            }
        })?;

        let quantization_config = match c.quantization_config {
            None => None,
            Some(q) => {
                let linear_class = match q.linear_class.as_deref() {
                    None | Some("bitlinear") => LinearClass::BitLinear,
                    Some("autobitlinear") => LinearClass::AutoBitLinear,
                    Some(other) => {
                        return Err(bad(format!(
                            "quantization_config.linear_class {other:?} is neither \"bitlinear\" nor \"autobitlinear\""
                        )));
                    }
                };
                let quantization_mode = match q.quantization_mode.as_deref() {
                    None | Some("offline") => QuantizationMode::Offline,
                    Some("online") => QuantizationMode::Online,
                    Some(other) => {
                        return Err(bad(format!(
                            "quantization_config.quantization_mode {other:?} is neither \"online\" nor \"offline\""
                        )));
                    }
                };
                Some(QuantizationConfig {
                    quant_method: q.quant_method,
                    linear_class,
                    quantization_mode,
                    use_rms_norm: q.use_rms_norm.unwrap_or(false),
                    rms_norm_eps: q.rms_norm_eps,
                    modules_to_not_convert: q.modules_to_not_convert,
                })
            }
        };

        let rope_theta = match c.rope_theta {
            Some(t) => t,
            None => c
                .rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(if c.model_type == "bitnet" {
                    500_000.0
                } else {
                    10_000.0
                }),
        };

        let cfg = HfConfig {
            architectures: c.architectures.unwrap_or_default(),
            model_type: c.model_type,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta,
            hidden_act: c.hidden_act,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            head_dim: c.head_dim,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_id,
            pad_token_id: c.pad_token_id,
            rope_scaling: c.rope_scaling,
            torch_dtype: c.torch_dtype.or(c.dtype),
            quantization_config,
            raw,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Rejects values that would make later shape arithmetic divide by zero or lie.
    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("{key} must be positive"));
            }
        }
        if self.head_dim == Some(0) {
            return Err("head_dim must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {} and no head_dim is given",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta {} must be positive", self.rope_theta));
        }
        Ok(())
    }

    /// Per-head dimension: `head_dim` if given, else `hidden_size / num_attention_heads`
    /// (validated to divide exactly).
    pub fn resolved_head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// True when the config asks for transformers' BitNet quantizer. Without it transformers runs
    /// the same weights as a float model; an engine must never do that silently.
    pub fn is_bitnet_quantized(&self) -> bool {
        self.quantization_config
            .as_ref()
            .is_some_and(|q| q.quant_method == "bitnet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_B: &str = r#"{
      "architectures": ["BitNetForCausalLM"],
      "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "relu2",
      "hidden_size": 2560, "intermediate_size": 6912, "max_position_embeddings": 4096,
      "model_type": "bitnet", "rms_norm_eps": 1e-05, "num_attention_heads": 20,
      "num_hidden_layers": 30, "num_key_value_heads": 5, "rope_theta": 500000.0,
      "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true,
      "vocab_size": 128256,
      "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                              "quantization_mode": "offline"}
    }"#;

    fn parse(s: &str) -> Result<HfConfig, HfError> {
        HfConfig::from_json_str(s, Path::new("config.json"))
    }

    #[test]
    fn parses_2b4t() {
        let c = parse(TWO_B).unwrap();
        assert_eq!(c.model_type, "bitnet");
        assert_eq!(c.hidden_size, 2560);
        assert_eq!(c.num_key_value_heads, 5);
        assert_eq!(c.resolved_head_dim(), 128);
        assert_eq!(c.rope_theta, 500_000.0);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![128001]);
        assert_eq!(c.bos_token_id, Some(128000));
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        let q = c.quantization_config.as_ref().unwrap();
        assert_eq!(q.linear_class, LinearClass::AutoBitLinear);
        assert_eq!(q.quantization_mode, QuantizationMode::Offline);
        assert!(c.is_bitnet_quantized());
        assert_eq!(c.raw["use_cache"], Value::Bool(true));
    }

    fn with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut v: Value = serde_json::from_str(TWO_B).unwrap();
        edit(v.as_object_mut().unwrap());
        v.to_string()
    }

    #[test]
    fn defaults_follow_transformers() {
        let s = with(|m| {
            for k in [
                "num_key_value_heads",
                "rope_theta",
                "tie_word_embeddings",
                "quantization_config",
            ] {
                m.remove(k);
            }
        });
        let c = parse(&s).unwrap();
        assert_eq!(c.num_key_value_heads, 20);
        assert_eq!(c.rope_theta, 500_000.0, "BitNetConfig default");
        assert!(!c.tie_word_embeddings, "BitNetConfig/LlamaConfig default");
        assert!(c.quantization_config.is_none());
        assert!(!c.is_bitnet_quantized());

        let s = with(|m| {
            m.remove("rope_theta");
            m.insert("model_type".into(), "llama".into());
        });
        assert_eq!(
            parse(&s).unwrap().rope_theta,
            10_000.0,
            "LlamaConfig default"
        );

        let s = with(|m| {
            m.remove("rope_theta");
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_type": "default", "rope_theta": 1234.0}),
            );
        });
        assert_eq!(parse(&s).unwrap().rope_theta, 1234.0);
    }

    #[test]
    fn quant_defaults_are_bitlinear_offline() {
        let s = with(|m| {
            m.insert(
                "quantization_config".into(),
                serde_json::json!({"quant_method": "bitnet"}),
            );
        });
        let q = parse(&s).unwrap().quantization_config.unwrap();
        assert_eq!(q.linear_class, LinearClass::BitLinear);
        assert_eq!(q.quantization_mode, QuantizationMode::Offline);
        assert!(!q.use_rms_norm);
    }

    #[test]
    fn bad_quant_values_are_errors() {
        let s = with(|m| {
            m.insert(
                "quantization_config".into(),
                serde_json::json!({"quant_method": "bitnet", "linear_class": "fancy"}),
            );
        });
        let e = parse(&s).unwrap_err().to_string();
        assert!(e.contains("fancy"), "{e}");
        let s = with(|m| {
            m.insert(
                "quantization_config".into(),
                serde_json::json!({"quant_method": "bitnet", "quantization_mode": "later"}),
            );
        });
        assert!(parse(&s).unwrap_err().to_string().contains("later"));
        let s = with(|m| {
            m.insert(
                "quantization_config".into(),
                serde_json::json!({"linear_class": "bitlinear"}),
            );
        });
        assert!(parse(&s).unwrap_err().to_string().contains("quant_method"));
    }

    #[test]
    fn token_id_forms() {
        let s = with(|m| {
            m.insert("eos_token_id".into(), serde_json::json!([128001, 128009]));
            m.insert("pad_token_id".into(), serde_json::json!(-1));
            m.insert("bos_token_id".into(), Value::Null);
            m.insert("rope_scaling".into(), Value::Null);
        });
        let c = parse(&s).unwrap();
        assert_eq!(c.eos_token_ids, vec![128001, 128009]);
        assert_eq!(c.pad_token_id, None);
        assert_eq!(c.bos_token_id, None);
        assert!(c.rope_scaling.is_none());

        let s = with(|m| {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"type": "linear", "factor": 2.0}),
            );
        });
        assert_eq!(parse(&s).unwrap().rope_scaling.unwrap()["type"], "linear");
    }

    #[test]
    fn missing_required_key_is_named() {
        for key in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
            "max_position_embeddings",
            "rms_norm_eps",
            "hidden_act",
            "model_type",
        ] {
            let s = with(|m| {
                m.remove(key);
            });
            let e = parse(&s).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("config.json"), "{key}: {e}");
        }
    }

    #[test]
    fn inconsistent_values_are_errors() {
        let s = with(|m| {
            m.insert("num_key_value_heads".into(), 3.into());
        });
        assert!(
            parse(&s)
                .unwrap_err()
                .to_string()
                .contains("num_key_value_heads")
        );
        let s = with(|m| {
            m.insert("hidden_size".into(), 0.into());
        });
        assert!(parse(&s).unwrap_err().to_string().contains("hidden_size"));
        let s = with(|m| {
            m.insert("hidden_size".into(), (-5).into());
        });
        assert!(parse(&s).unwrap_err().to_string().contains("hidden_size"));
        assert!(parse("not json").is_err());
        assert!(parse("[]").is_err());
    }
}

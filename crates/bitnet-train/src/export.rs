//! Export of a trained model to the formats the engine runs: GGUF (`bitnet-b1.58`, I2_S or
//! TQ2_0 linears, F16 embedding, F32 norms, tokenizer metadata, no chat template) and a
//! Hugging Face directory (`config.json` with an offline `autobitlinear` bitnet quantization
//! config, packed uint8 weights with bf16 `weight_scale`, tokenizer files).
//!
//! The ternary codes and scales written are exactly the training graph's
//! ([`crate::quant::ternarize`]); the scale is bf16- and f16-exact by construction. The
//! embedding is stored as f16 in both formats: call
//! [`BitNetModel::round_embedding_to_f16`] first when the training graph must reproduce the
//! exported model's logits bit for bit.

use std::collections::HashMap;
use std::path::Path;

use bitnet_gguf::{
    Array, GgufWriter, TensorType, encode_f16, encode_f32, encode_i2_s, encode_tq2_0,
};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::error::{Result, TrainError};
use crate::model::{BitNetModel, EMBED, FINAL_NORM, LINEARS, NORMS, linear_shape};
use crate::quant::ternarize;
use crate::tokenizer::TrainTokenizer;

/// The ternary encoding of a GGUF export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTernary {
    /// bitnet.cpp's I2_S (type 36, f32 per-tensor scale).
    I2S,
    /// ggml's TQ2_0 (type 35, 2-bit codes in 256-blocks with an f16 scale).
    TQ2_0,
}

fn check_exportable(model: &BitNetModel) -> Result<()> {
    if model.is_float() {
        return Err(TrainError::Options(
            "the float baseline has no ternary weights; only BitNet models can be exported".into(),
        ));
    }
    Ok(())
}

/// Writes a GGUF file of `model` with `tok`'s vocabulary.
pub fn export_gguf(
    model: &BitNetModel,
    tok: &TrainTokenizer,
    kind: GgufTernary,
    name: &str,
    path: &Path,
) -> Result<u64> {
    check_exportable(model)?;
    let s = model.shape();
    if tok.vocab_size() != s.vocab_size {
        return Err(TrainError::Options(format!(
            "tokenizer has {} tokens, model {}",
            tok.vocab_size(),
            s.vocab_size
        )));
    }
    let arch = "bitnet-b1.58";
    let mut w = GgufWriter::new();
    let k = |key: &str| format!("{arch}.{key}");
    w.add_metadata("general.architecture", arch)?;
    w.add_metadata("general.name", name)?;
    w.add_metadata(
        "general.file_type",
        match kind {
            GgufTernary::I2S => 40u32,
            GgufTernary::TQ2_0 => 37u32,
        },
    )?;
    w.add_metadata(k("vocab_size"), s.vocab_size as u32)?;
    w.add_metadata(k("context_length"), s.context_length as u32)?;
    w.add_metadata(k("embedding_length"), s.hidden_size as u32)?;
    w.add_metadata(k("block_count"), s.n_layers as u32)?;
    w.add_metadata(k("feed_forward_length"), s.intermediate_size as u32)?;
    w.add_metadata(k("attention.head_count"), s.n_heads as u32)?;
    w.add_metadata(k("attention.head_count_kv"), s.n_kv_heads as u32)?;
    w.add_metadata(k("rope.freq_base"), s.rope_theta)?;
    w.add_metadata(k("attention.layer_norm_rms_epsilon"), s.rms_norm_eps)?;
    w.add_metadata(k("rope.dimension_count"), s.head_dim() as u32)?;
    w.add_metadata("tokenizer.ggml.model", "gpt2")?;
    w.add_metadata("tokenizer.ggml.pre", "llama-bpe")?;
    w.add_metadata("tokenizer.ggml.tokens", Array::from(tok.tokens.clone()))?;
    let n_special = crate::tokenizer::SPECIAL_TOKENS.len();
    let types: Vec<i32> = (0..tok.vocab_size())
        .map(|i| {
            if i + n_special >= tok.vocab_size() {
                3
            } else {
                1
            }
        })
        .collect();
    w.add_metadata("tokenizer.ggml.token_type", Array::from(types))?;
    w.add_metadata("tokenizer.ggml.merges", Array::from(tok.merges.clone()))?;
    w.add_metadata("tokenizer.ggml.bos_token_id", tok.bos)?;
    w.add_metadata("tokenizer.ggml.eos_token_id", tok.eos)?;
    w.add_metadata("tokenizer.ggml.eot_token_id", tok.eot)?;
    w.add_metadata("tokenizer.ggml.add_bos_token", true)?;

    let (v, h) = (s.vocab_size as u64, s.hidden_size as u64);
    w.add_tensor(
        "token_embd.weight",
        vec![h, v],
        TensorType::F16.id(),
        encode_f16(&model.values(EMBED)?)?,
    )?;
    for l in 0..s.n_layers {
        for (hf, gg) in NORMS {
            let vals = model.values(&format!("model.layers.{l}.{hf}.weight"))?;
            w.add_tensor(
                format!("blk.{l}.{gg}.weight"),
                vec![vals.len() as u64],
                TensorType::F32.id(),
                encode_f32(&vals),
            )?;
        }
        for (hf, gg) in LINEARS {
            let (out, inp) = linear_shape(s, hf);
            let t = ternarize(&model.values(&format!("model.layers.{l}.{hf}.weight"))?);
            let (ty, bytes) = match kind {
                GgufTernary::I2S => (TensorType::I2_S, encode_i2_s(&t.codes, t.scale)?),
                GgufTernary::TQ2_0 => (TensorType::TQ2_0, encode_tq2_0(&t.codes, t.scale)?),
            };
            w.add_tensor(
                format!("blk.{l}.{gg}.weight"),
                vec![inp as u64, out as u64],
                ty.id(),
                bytes,
            )?;
        }
    }
    let norm = model.values(FINAL_NORM)?;
    w.add_tensor(
        "output_norm.weight",
        vec![h],
        TensorType::F32.id(),
        encode_f32(&norm),
    )?;
    Ok(w.write_to(path)?)
}

fn hf_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Hf(e.to_string())
}

/// Writes a Hugging Face `BitNetForCausalLM` directory (`config.json`, `model.safetensors`,
/// `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`).
pub fn export_hf(model: &BitNetModel, tok: &TrainTokenizer, dir: &Path) -> Result<()> {
    check_exportable(model)?;
    let s = model.shape();
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f16 = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect()
    };
    let f32b = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    data.push((
        EMBED.into(),
        Dtype::F16,
        vec![s.vocab_size, s.hidden_size],
        f16(&model.values(EMBED)?),
    ));
    for l in 0..s.n_layers {
        for (hf, _) in NORMS {
            let name = format!("model.layers.{l}.{hf}.weight");
            let v = model.values(&name)?;
            data.push((name, Dtype::F32, vec![v.len()], f32b(&v)));
        }
        for (hf, _) in LINEARS {
            let (out, inp) = linear_shape(s, hf);
            let name = format!("model.layers.{l}.{hf}");
            let t = ternarize(&model.values(&format!("{name}.weight"))?);
            let packed = bitnet_hf::pack_ternary(&t.codes, out, inp).map_err(hf_err)?;
            data.push((
                format!("{name}.weight"),
                Dtype::U8,
                vec![out / 4, inp],
                packed,
            ));
            let scale = half::bf16::from_f32(t.scale);
            data.push((
                format!("{name}.weight_scale"),
                Dtype::BF16,
                vec![1],
                scale.to_le_bytes().to_vec(),
            ));
        }
    }
    let norm = model.values(FINAL_NORM)?;
    data.push((FINAL_NORM.into(), Dtype::F32, vec![norm.len()], f32b(&norm)));
    let views = data
        .iter()
        .map(|(n, d, shape, bytes)| {
            Ok((
                n.clone(),
                TensorView::new(*d, shape.clone(), bytes).map_err(hf_err)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let st = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &st).map_err(hf_err)?;

    let config = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.n_kv_heads,
        "head_dim": s.head_dim(),
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.context_length,
        "rms_norm_eps": s.rms_norm_eps,
        "rope_theta": s.rope_theta,
        "rope_scaling": null,
        "hidden_act": "relu2",
        "tie_word_embeddings": true,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": tok.bos,
        "eos_token_id": [tok.eos, tok.eot],
        "torch_dtype": "float16",
        "use_cache": true,
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "offline"
        }
    });
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(TrainError::io(p))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&config).map_err(hf_err)? + "\n",
    )?;
    write(
        "generation_config.json",
        serde_json::to_string_pretty(
            &json!({"bos_token_id": tok.bos, "eos_token_id": [tok.eos, tok.eot]}),
        )
        .map_err(hf_err)?
            + "\n",
    )?;
    write("tokenizer.json", tok.json().to_string())?;
    write("tokenizer_config.json", tok.config_json(s.context_length))?;
    Ok(())
}

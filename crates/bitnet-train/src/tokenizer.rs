//! The byte-level BPE tokenizer of a trained model: trained with the `tokenizers` crate's
//! `BpeTrainer` behind the LLaMA-3 pre-tokenizer (split regex, then ByteLevel), or loaded from
//! an existing `tokenizer.json`. Special tokens `<|begin_of_text|>`, `<|end_of_text|>` and
//! `<|eot_id|>` follow the BPE tokens. It is written as a LLaMA-3-shaped `tokenizer.json`
//! (BOS added by a template post-processor) and as GGUF `tokenizer.ggml.*` metadata.

use std::path::Path;
use std::str::FromStr;

use serde_json::{Value, json};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use crate::error::{Result, TrainError};

/// The LLaMA-3 pre-tokenizer split pattern (verbatim from Meta-Llama-3's tokenizer.json).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Special tokens, in id order after the BPE vocabulary.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"];

/// A tokenizer with the vocabulary views the exporters need.
pub struct TrainTokenizer {
    tokenizer: Tokenizer,
    json: String,
    /// Token strings by id (byte-level alphabet), special tokens included.
    pub tokens: Vec<String>,
    /// Merges as `"a b"` strings, in rank order.
    pub merges: Vec<String>,
    /// `<|begin_of_text|>`.
    pub bos: u32,
    /// `<|end_of_text|>`.
    pub eos: u32,
    /// `<|eot_id|>`.
    pub eot: u32,
}

fn tok_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Tokenizer(e.to_string())
}

impl TrainTokenizer {
    /// Trains a byte-level BPE of `vocab_size` tokens in total (special tokens included) on
    /// `text`.
    pub fn train(text: &str, vocab_size: usize) -> Result<Self> {
        let n_bpe = vocab_size
            .checked_sub(SPECIAL_TOKENS.len())
            .filter(|&n| n >= 256)
            .ok_or_else(|| {
                TrainError::Options(format!(
                    "vocabulary {vocab_size} is smaller than the 256 bytes + 3 special tokens"
                ))
            })?;
        let split = Split::new(
            SplitPattern::Regex(LLAMA3_PATTERN.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ]);
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(pre));
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(n_bpe)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        tok.train(&mut trainer, chunks(text).into_iter())
            .map_err(tok_err)?;
        let trained: Value =
            serde_json::from_str(&tok.to_string(false).map_err(tok_err)?).map_err(tok_err)?;
        let vocab = trained["model"]["vocab"]
            .as_object()
            .ok_or_else(|| tok_err("trained model has no vocab"))?;
        let mut tokens = vec![String::new(); vocab.len()];
        for (piece, id) in vocab {
            let id = id
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < tokens.len());
            let slot = id
                .and_then(|i| tokens.get_mut(i))
                .ok_or_else(|| tok_err("vocab ids are not 0..n"))?;
            *slot = piece.clone();
        }
        let merges = trained["model"]["merges"]
            .as_array()
            .ok_or_else(|| tok_err("trained model has no merges"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(p) => match (
                    p.first().and_then(Value::as_str),
                    p.get(1).and_then(Value::as_str),
                ) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(tok_err("malformed merge")),
                },
                _ => Err(tok_err("malformed merge")),
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_parts(tokens, merges)
    }

    /// Builds the LLaMA-3-shaped tokenizer from a BPE vocabulary (ids `0..n`) and its merges;
    /// the special tokens get ids `n, n+1, n+2`.
    pub fn from_parts(mut tokens: Vec<String>, merges: Vec<String>) -> Result<Self> {
        let n = tokens.len() as u32;
        let (bos, eos, eot) = (n, n + 1, n + 2);
        let vocab: serde_json::Map<String, Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let added: Vec<Value> = SPECIAL_TOKENS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"id": n + i as u32, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let bos_s = SPECIAL_TOKENS[0];
        let tj = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]},
            "post_processor": {"type": "Sequence", "processors": [
                {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": bos_s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": bos_s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": bos_s, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {bos_s: {"id": bos_s, "ids": [bos], "tokens": [bos_s]}}}
            ]},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": true, "vocab": vocab, "merges": merges}
        });
        let json = serde_json::to_string_pretty(&tj).map_err(tok_err)? + "\n";
        let tokenizer = Tokenizer::from_str(&json).map_err(tok_err)?;
        tokens.extend(SPECIAL_TOKENS.iter().map(|s| s.to_string()));
        Ok(TrainTokenizer {
            tokenizer,
            json,
            tokens,
            merges,
            bos,
            eos,
            eot,
        })
    }

    /// Loads a `tokenizer.json` written by [`TrainTokenizer::save`] (or any byte-level BPE
    /// whose special tokens are exactly [`SPECIAL_TOKENS`] after the BPE ids).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        let v: Value = serde_json::from_str(&text).map_err(tok_err)?;
        let vocab = v["model"]["vocab"]
            .as_object()
            .ok_or_else(|| tok_err("no model.vocab"))?;
        let mut tokens = vec![String::new(); vocab.len()];
        for (piece, id) in vocab {
            let slot = id
                .as_u64()
                .and_then(|i| tokens.get_mut(i as usize))
                .ok_or_else(|| tok_err(format!("{}: vocab ids are not 0..n", path.display())))?;
            *slot = piece.clone();
        }
        let merges = v["model"]["merges"]
            .as_array()
            .ok_or_else(|| tok_err("no model.merges"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => Some(s.clone()),
                Value::Array(p) => {
                    Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| tok_err("malformed merges"))?;
        Self::from_parts(tokens, merges)
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.json).map_err(TrainError::io(path))
    }

    /// The `tokenizer.json` text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Encodes text without special tokens (the data loader adds BOS per window).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3);
        for c in chunks(text) {
            out.extend_from_slice(self.tokenizer.encode(c, false).map_err(tok_err)?.get_ids());
        }
        Ok(out)
    }

    /// `tokenizer_config.json` for the Hugging Face export (no chat template: the model is
    /// chat-free).
    pub fn config_json(&self, max_len: usize) -> String {
        let added: serde_json::Map<String, Value> = SPECIAL_TOKENS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    (self.bos as usize + i).to_string(),
                    json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                           "single_word": false, "special": true}),
                )
            })
            .collect();
        let v = json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "added_tokens_decoder": added,
            "bos_token": SPECIAL_TOKENS[0],
            "clean_up_tokenization_spaces": false,
            "eos_token": SPECIAL_TOKENS[1],
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": max_len,
            "tokenizer_class": "PreTrainedTokenizerFast"
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }
}

/// Pieces of about 64 KiB, cut right after a newline that is followed by a non-whitespace
/// ASCII character. No LLaMA-3 pre-tokenizer piece spans such a point (newline runs end there,
/// and a word piece cannot start with a newline), so encoding piece by piece equals encoding the
/// whole text while keeping the regex and BPE working on bounded inputs.
fn chunks(text: &str) -> Vec<&str> {
    const TARGET: usize = 1 << 16;
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = start + TARGET;
    while i < bytes.len() {
        // Find a '\n' followed by a non-whitespace ASCII byte, at or after i.
        match bytes[i..]
            .windows(2)
            .position(|w| w[0] == b'\n' && !w[1].is_ascii_whitespace() && w[1].is_ascii())
        {
            Some(p) => {
                let cut = i + p + 1;
                out.push(&text[start..cut]);
                start = cut;
                i = start + TARGET;
            }
            None => break,
        }
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_and_round_trips_with_special_ids_after_the_bpe() {
        let text = "the cat sat on the mat.\nthe dog sat on the log.\n".repeat(50);
        let t = TrainTokenizer::train(&text, 300).unwrap();
        // The trainer stops early when no pair occurs twice any more.
        let n = t.vocab_size() as u32;
        assert!((260..=300).contains(&n), "{n}");
        assert_eq!((t.bos, t.eos, t.eot), (n - 3, n - 2, n - 1));
        assert_eq!(t.tokens[n as usize - 3], "<|begin_of_text|>");
        let ids = t.encode("the cat sat").unwrap();
        assert!(ids.len() < 11, "merges were learned: {ids:?}");
        let back =
            TrainTokenizer::from_parts(t.tokens[..n as usize - 3].to_vec(), t.merges.clone())
                .unwrap();
        assert_eq!(back.encode("the cat sat").unwrap(), ids);
    }

    #[test]
    fn chunking_does_not_change_the_encoding() {
        let text = "ROMEO:\nI  am here.\n\nJULIET:\nAnd I.\n".repeat(4000);
        assert!(chunks(&text).len() > 1);
        let t = TrainTokenizer::train(&text[..5000], 400).unwrap();
        let whole = t
            .tokenizer
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(t.encode(&text).unwrap(), whole);
    }
}

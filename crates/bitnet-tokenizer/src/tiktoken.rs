//! tiktoken vocabularies (Meta's LLaMA-3 `tokenizer.model`: one `base64(token-bytes) rank` per
//! line): parsing, Meta's special-token lists, and conversion to a byte-level BPE (the GGUF
//! token + merge form) with merges derived from ranks exactly as transformers' TikTokenConverter
//! does.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use base64::Engine;

use crate::byte_level;
use crate::error::{Result, TokenizerError};
use crate::gguf_vocab::{ByteLevelSpec, GgufVocab, PreTokenizerType};
use crate::{TokenKind, Tokenizer};

/// Number of special tokens Meta reserves after the 128000 LLaMA-3 ranks.
pub const LLAMA3_NUM_SPECIAL_TOKENS: usize = 256;

/// Meta-Llama-3's special tokens (ids 128000..128255 for the 128000-rank file): BOS
/// `<|begin_of_text|>` 128000, EOS `<|end_of_text|>` 128001, `<|reserved_special_token_0..3|>`
/// 128002..128005, `<|start_header_id|>` 128006, `<|end_header_id|>` 128007,
/// `<|reserved_special_token_4|>` 128008, `<|eot_id|>` 128009, then
/// `<|reserved_special_token_5..250|>`. These are the names in Meta-Llama-3's tokenizer.json.
pub fn llama3_special_tokens() -> Vec<String> {
    let named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
    ];
    let mut out: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    let reserved = LLAMA3_NUM_SPECIAL_TOKENS - named.len();
    out.extend((5..5 + reserved).map(|i| format!("<|reserved_special_token_{i}|>")));
    out
}

/// The special tokens of Llama 3.1 and later (the list in Meta's `llama-models` package):
/// like [`llama3_special_tokens`] but with `<|finetune_right_pad_id|>` 128004, `<|step_id|>`
/// 128005, `<|eom_id|>` 128008, `<|python_tag|>` 128010, `<|image|>` 128011 and
/// `<|reserved_special_token_2..245|>` after them.
pub fn llama31_special_tokens() -> Vec<String> {
    let named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|step_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
        "<|image|>",
    ];
    let mut out: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    let reserved = LLAMA3_NUM_SPECIAL_TOKENS - named.len();
    out.extend((2..2 + reserved).map(|i| format!("<|reserved_special_token_{i}|>")));
    out
}

/// Reads a tiktoken file; element `r` of the result is the token with rank `r`. Ranks must be
/// exactly `0..n` (each once) and tokens distinct, as in every published tiktoken file.
pub fn load_tiktoken_ranks(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_tiktoken(&text, path)
}

fn parse_tiktoken(text: &str, path: &Path) -> Result<Vec<Vec<u8>>> {
    let err = |line: usize, reason: String| TokenizerError::Tiktoken {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut entries: Vec<(u32, Vec<u8>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let mut fields = line.split_whitespace();
        let Some(token) = fields.next() else {
            continue;
        };
        let rank = fields
            .next()
            .ok_or_else(|| err(lineno, "expected 'base64-token rank'".into()))?;
        if fields.next().is_some() {
            return Err(err(lineno, "more than two fields".into()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|e| err(lineno, format!("token '{token}' is not valid base64: {e}")))?;
        if bytes.is_empty() {
            return Err(err(lineno, "empty token".into()));
        }
        let rank: u32 = rank.parse().map_err(|_| {
            err(
                lineno,
                format!("rank '{rank}' is not a non-negative integer"),
            )
        })?;
        entries.push((rank, bytes));
    }
    if entries.is_empty() {
        return Err(TokenizerError::InvalidFile {
            path: path.to_path_buf(),
            reason: "no tokens".into(),
        });
    }
    let n = entries.len();
    let mut by_rank: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(n);
    for (idx, (rank, bytes)) in entries.into_iter().enumerate() {
        let slot = by_rank.get_mut(rank as usize).ok_or_else(|| {
            err(
                idx + 1,
                format!(
                    "rank {rank} is out of range: the file has {n} tokens, ranks must be 0..{n}"
                ),
            )
        })?;
        if slot.is_some() {
            return Err(TokenizerError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("rank {rank} appears more than once"),
            });
        }
        if !seen.insert(bytes.clone()) {
            return Err(TokenizerError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("token {:?} (rank {rank}) appears more than once", bytes),
            });
        }
        *slot = Some(bytes);
    }
    // Every rank was filled: n distinct ranks all < n.
    Ok(by_rank.into_iter().flatten().collect())
}

/// Derives BPE merges from tiktoken ranks the way transformers' `TikTokenConverter` does: for
/// each token of 2+ bytes, every split into two parts that are both tokens is a merge; merges
/// are ordered by the token's rank, and within a token by the parts' ranks. Returned in GPT-2's
/// byte-level alphabet.
pub(crate) fn derive_merges(ranks: &[Vec<u8>]) -> Vec<(String, String)> {
    let index: HashMap<&[u8], u32> = ranks
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    let mut merges = Vec::with_capacity(ranks.len() * 2);
    let mut local: Vec<(u32, u32, usize)> = Vec::new();
    for token in ranks {
        if token.len() < 2 {
            continue;
        }
        local.clear();
        for split in 1..token.len() {
            let (l, r) = token.split_at(split);
            if let (Some(&rl), Some(&rr)) = (index.get(l), index.get(r)) {
                local.push((rl, rr, split));
            }
        }
        local.sort_unstable();
        for &(_, _, split) in &local {
            let (l, r) = token.split_at(split);
            merges.push((byte_level::encode(l), byte_level::encode(r)));
        }
    }
    merges
}

fn checked_specials(ranks: &[Vec<u8>], special_tokens: &[String]) -> Result<()> {
    let base: HashSet<&[u8]> = ranks.iter().map(|t| t.as_slice()).collect();
    let mut seen = HashSet::new();
    for s in special_tokens {
        if s.is_empty() {
            return Err(TokenizerError::InvalidVocab("empty special token".into()));
        }
        if !seen.insert(s.as_str()) {
            return Err(TokenizerError::InvalidVocab(format!(
                "special token '{s}' is listed twice"
            )));
        }
        // A special equal to a base token's alphabet form would make two ids share one string.
        if byte_level::decode(s).is_some_and(|b| base.contains(b.as_slice())) {
            return Err(TokenizerError::InvalidVocab(format!(
                "special token '{s}' collides with a regular token"
            )));
        }
    }
    Ok(())
}

fn special_id(special_tokens: &[String], base: usize, name: &str) -> Option<u32> {
    special_tokens
        .iter()
        .position(|s| s == name)
        .and_then(|i| u32::try_from(base + i).ok())
}

fn spec_from_ranks(ranks: Vec<Vec<u8>>, special_tokens: &[String]) -> Result<ByteLevelSpec> {
    checked_specials(&ranks, special_tokens)?;
    let n = ranks.len();
    let merges = derive_merges(&ranks);
    let mut tokens: Vec<String> = ranks.iter().map(|t| byte_level::encode(t)).collect();
    tokens.extend(special_tokens.iter().cloned());
    let mut kinds = vec![TokenKind::Normal; n];
    kinds.extend(std::iter::repeat_n(
        TokenKind::Control,
        special_tokens.len(),
    ));
    Ok(ByteLevelSpec {
        tokens,
        kinds,
        merges,
        pre: PreTokenizerType::Llama3,
        bos: special_id(special_tokens, n, "<|begin_of_text|>"),
        eos: special_id(special_tokens, n, "<|end_of_text|>"),
        eot: special_id(special_tokens, n, "<|eot_id|>"),
        add_bos: Some(true),
        add_eos: Some(false),
        chat_template: None,
    })
}

/// Loads a LLaMA-3 tiktoken file and returns it as the GGUF metadata llama.cpp's converter
/// would write (`gpt2` model, `llama-bpe` pre-tokenizer, alphabet tokens, `"a b"` merges,
/// control token types for the specials appended after the ranks).
pub fn tiktoken_to_gguf_vocab(path: &Path, special_tokens: &[String]) -> Result<GgufVocab> {
    let spec = spec_from_ranks(load_tiktoken_ranks(path)?, special_tokens)?;
    let token_types = spec
        .kinds
        .iter()
        .map(|k| if *k == TokenKind::Control { 3 } else { 1 })
        .collect();
    Ok(GgufVocab {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        tokens: spec.tokens,
        token_types: Some(token_types),
        merges: spec
            .merges
            .into_iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect(),
        bos: spec.bos,
        eos: spec.eos,
        eot: spec.eot,
        add_bos: spec.add_bos,
        add_eos: spec.add_eos,
        chat_template: None,
    })
}

impl Tokenizer {
    /// Loads Meta's LLaMA-3 `tokenizer.model` (tiktoken format) with the LLaMA-3 split regex;
    /// `special_tokens` get ids `ranks.len() + index` (use [`llama3_special_tokens`] or
    /// [`llama31_special_tokens`]). BOS is added by default, as Meta's and HF's tokenizers do.
    pub fn from_tiktoken(path: &Path, special_tokens: &[String]) -> Result<Tokenizer> {
        let spec = spec_from_ranks(load_tiktoken_ranks(path)?, special_tokens)?;
        crate::gguf_vocab::build_byte_level(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_token_lists_match_meta() {
        let l3 = llama3_special_tokens();
        assert_eq!(l3.len(), 256);
        assert_eq!(l3[0], "<|begin_of_text|>");
        assert_eq!(l3[6], "<|start_header_id|>");
        assert_eq!(l3[7], "<|end_header_id|>");
        assert_eq!(l3[9], "<|eot_id|>");
        assert_eq!(l3[255], "<|reserved_special_token_250|>");
        let l31 = llama31_special_tokens();
        assert_eq!(l31.len(), 256);
        assert_eq!(l31[8], "<|eom_id|>");
        assert_eq!(l31[9], "<|eot_id|>");
        assert_eq!(l31[255], "<|reserved_special_token_245|>");
    }

    #[test]
    fn parse_rejects_bad_files() {
        let p = Path::new("t.model");
        assert_eq!(
            parse_tiktoken("YQ== 1\nYg== 0\n\n", p).ok(),
            Some(vec![b"b".to_vec(), b"a".to_vec()])
        );
        let e = |s: &str| {
            parse_tiktoken(s, p)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e("YQ== 0\nYg==\n").contains("t.model:2"));
        assert!(e("YQ== 0\n!!! 1\n").contains("base64"));
        assert!(e("YQ== 0\nYg== 5\n").contains("out of range"));
        assert!(e("YQ== 0\nYg== 0\n").contains("more than once"));
        assert!(e("YQ== 0\nYQ== 1\n").contains("more than once"));
        assert!(e("YQ== -1\n").contains("non-negative"));
        assert!(e("").contains("no tokens"));
    }

    #[test]
    fn merges_follow_tiktoken_converter_order() {
        // ranks: a b c ab bc abc
        let ranks: Vec<Vec<u8>> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let m = derive_merges(&ranks);
        let want: Vec<(String, String)> = [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        // "abc": splits (a,bc) ranks (0,4) and (ab,c) ranks (3,2): ordered by left rank first.
        assert_eq!(m, want);
    }
}

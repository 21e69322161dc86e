//! GGUF-style vocabularies: the plain [`GgufVocab`] struct the model loader fills from GGUF
//! `tokenizer.*` metadata, the `tokenizer.ggml.pre` -> split-regex table (llama.cpp's names), and
//! the construction of a byte-level BPE [`Tokenizer`] from token + merge lists (shared with the
//! tiktoken loader).

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Result, TokenizerError};
use crate::{PieceDecoding, SpecialsMode, TokenKind, Tokenizer, byte_level};

/// LLaMA-3's split regex (Meta's `pat_str`, also in Meta-Llama-3's tokenizer.json). The
/// `\s+(?!\S)` lookahead is why the `tokenizers` fancy-regex backend is required.
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split regex (the one `tokenizers`' ByteLevel pre-tokenizer applies with `use_regex`).
pub const GPT2_SPLIT_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values that llama.cpp maps to its LLaMA-3 pre-tokenizer (with
/// `ignore_merges` and BOS added by default).
pub const LLAMA3_PRE_NAMES: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
];

/// `tokenizer.ggml.pre` values that llama.cpp maps to its plain GPT-2 pre-tokenizer (no
/// `ignore_merges`, no BOS by default) and that need nothing else (no normalizer, no SEP).
pub const GPT2_PRE_NAMES: &[&str] = &["gpt-2", "phi-2"];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNDEFINED: i32 = 0;
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_UNUSED: i32 = 5;
const TOKEN_TYPE_BYTE: i32 = 6;

/// Token texts llama.cpp recognises as end-of-turn when `tokenizer.ggml.eot_token_id` is absent.
pub(crate) const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// Control-token texts that end generation (llama.cpp's end-of-generation list, restricted to
/// tokens whose meaning is unambiguous).
pub(crate) const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// The tokenizer part of a GGUF file's metadata, as plain data. The model loader (which parses
/// the GGUF container) fills it; this crate only interprets it, so the tokenizer has no GGUF
/// dependency and can be built from other sources (see [`crate::tiktoken`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: the tokenizer family (`gpt2` = byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer (split regex) name, e.g. `llama-bpe`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary, index = token id. Normal tokens are in GPT-2's
    /// byte-level alphabet; control and user-defined tokens are their literal text.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: llama.cpp token types (1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte), one per token.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: BPE merges as `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// The pre-tokenizers this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerType {
    /// LLaMA-3 regex, `ignore_merges`, BOS by default.
    Llama3,
    /// GPT-2 regex.
    Gpt2,
}

impl PreTokenizerType {
    pub(crate) fn from_name(pre: Option<&str>) -> Result<Self> {
        let supported = || {
            LLAMA3_PRE_NAMES
                .iter()
                .chain(GPT2_PRE_NAMES)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        };
        match pre {
            None => Err(TokenizerError::MissingPre {
                supported: supported(),
            }),
            Some(p) if LLAMA3_PRE_NAMES.contains(&p) => Ok(Self::Llama3),
            Some(p) if GPT2_PRE_NAMES.contains(&p) => Ok(Self::Gpt2),
            Some(p) => Err(TokenizerError::UnknownPre {
                pre: p.to_string(),
                supported: supported(),
            }),
        }
    }

    fn regex(self) -> &'static str {
        match self {
            Self::Llama3 => LLAMA3_SPLIT_REGEX,
            Self::Gpt2 => GPT2_SPLIT_REGEX,
        }
    }

    fn ignore_merges(self) -> bool {
        matches!(self, Self::Llama3)
    }

    fn add_bos_default(self) -> bool {
        matches!(self, Self::Llama3)
    }
}

/// Everything needed to build a byte-level BPE tokenizer; produced from a [`GgufVocab`] or a
/// tiktoken file.
pub(crate) struct ByteLevelSpec {
    /// Id -> token text (alphabet form for BPE tokens, literal text for control/user tokens).
    pub tokens: Vec<String>,
    pub kinds: Vec<TokenKind>,
    /// Merges as (left, right) in priority order.
    pub merges: Vec<(String, String)>,
    pub pre: PreTokenizerType,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
}

fn kind_from_type(t: i32, id: usize) -> Result<TokenKind> {
    match t {
        TOKEN_TYPE_UNDEFINED | TOKEN_TYPE_NORMAL => Ok(TokenKind::Normal),
        TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL => Ok(TokenKind::Control),
        TOKEN_TYPE_USER_DEFINED => Ok(TokenKind::UserDefined),
        TOKEN_TYPE_UNUSED | TOKEN_TYPE_BYTE => Ok(TokenKind::Unused),
        other => Err(TokenizerError::InvalidVocab(format!(
            "token {id} has token_type {other}; valid types are 0..=6"
        ))),
    }
}

/// Splits a llama.cpp merge line `"left right"` at the first space after the first byte (a
/// left part may itself be a space in non-byte-level vocabularies).
fn split_merge(index: usize, merge: &str) -> Result<(String, String)> {
    let bad = |reason: &str| TokenizerError::InvalidMerge {
        index,
        merge: merge.to_string(),
        reason: reason.to_string(),
    };
    let mut chars = merge.chars();
    let first = chars.next().ok_or_else(|| bad("empty merge"))?;
    let (left_rest, right) = chars
        .as_str()
        .split_once(' ')
        .ok_or_else(|| bad("expected two tokens separated by a space"))?;
    let left = format!("{first}{left_rest}");
    if right.is_empty() {
        return Err(bad("right token is empty"));
    }
    Ok((left, right.to_string()))
}

impl GgufVocab {
    /// Converts the metadata into a buildable spec, validating everything that comes from the
    /// file.
    pub(crate) fn to_spec(&self) -> Result<ByteLevelSpec> {
        match self.model.as_str() {
            "gpt2" => {}
            "llama" => {
                return Err(TokenizerError::UnsupportedModel {
                    model: self.model.clone(),
                    reason: "SentencePiece vocabularies are not implemented; only byte-level BPE \
                             (tokenizer.ggml.model = gpt2) is supported"
                        .into(),
                });
            }
            other => {
                return Err(TokenizerError::UnsupportedModel {
                    model: other.to_string(),
                    reason: "only byte-level BPE (tokenizer.ggml.model = gpt2) is supported".into(),
                });
            }
        }
        let pre = PreTokenizerType::from_name(self.pre.as_deref())?;
        if self.tokens.is_empty() {
            return Err(TokenizerError::InvalidVocab(
                "tokenizer.ggml.tokens is empty".into(),
            ));
        }
        let kinds = match &self.token_types {
            None => vec![TokenKind::Normal; self.tokens.len()],
            Some(types) => {
                if types.len() != self.tokens.len() {
                    return Err(TokenizerError::InvalidVocab(format!(
                        "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                        types.len(),
                        self.tokens.len()
                    )));
                }
                types
                    .iter()
                    .enumerate()
                    .map(|(id, &t)| kind_from_type(t, id))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        if self.merges.is_empty() {
            return Err(TokenizerError::InvalidVocab(
                "tokenizer.ggml.merges is missing or empty; a gpt2 (byte-level BPE) vocabulary \
                 needs its merge list"
                    .into(),
            ));
        }
        let merges = self
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| split_merge(i, m))
            .collect::<Result<Vec<_>>>()?;
        Ok(ByteLevelSpec {
            tokens: self.tokens.clone(),
            kinds,
            merges,
            pre,
            bos: self.bos,
            eos: self.eos,
            eot: self.eot,
            add_bos: self.add_bos,
            add_eos: self.add_eos,
            chat_template: self.chat_template.clone(),
        })
    }
}

fn check_id(what: &str, id: Option<u32>, n: usize) -> Result<()> {
    match id {
        Some(id) if id as usize >= n => Err(TokenizerError::InvalidVocab(format!(
            "{what} token id {id} is out of range (vocabulary has {n} tokens)"
        ))),
        _ => Ok(()),
    }
}

/// Builds the byte-level BPE tokenizer: BPE(vocab, merges, ignore_merges per pre-tokenizer),
/// pre-tokenizer Sequence[Split(regex, Isolated), ByteLevel(no prefix space, no regex)],
/// ByteLevel decoder; control tokens become special added tokens (parsed in text only when
/// asked), user-defined tokens non-special added tokens (always parsed, as llama.cpp does).
pub(crate) fn build_byte_level(spec: ByteLevelSpec) -> Result<Tokenizer> {
    let n = spec.tokens.len();
    if n > u32::MAX as usize {
        return Err(TokenizerError::InvalidVocab(format!(
            "{n} tokens do not fit 32-bit ids"
        )));
    }
    if spec.kinds.len() != n {
        return Err(TokenizerError::InvalidVocab(format!(
            "{} token kinds for {n} tokens",
            spec.kinds.len()
        )));
    }
    check_id("BOS", spec.bos, n)?;
    check_id("EOS", spec.eos, n)?;
    check_id("EOT", spec.eot, n)?;

    // Later duplicates win, as in llama.cpp's token_to_id map.
    let vocab: Vocab = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();

    // Every byte must have a token, or the BPE would silently drop unknown bytes.
    for b in 0..=255u8 {
        let c = byte_level::byte_to_char(b).to_string();
        if !vocab.contains_key(&c) {
            return Err(TokenizerError::InvalidVocab(format!(
                "byte-level vocabulary has no token for byte 0x{b:02X} ('{c}')"
            )));
        }
    }

    // Validate merges here: `tokenizers` indexes a buffer by the merged length and would panic
    // on a merge whose result is not a token.
    for (i, (a, b)) in spec.merges.iter().enumerate() {
        let bad = |reason: String| TokenizerError::InvalidMerge {
            index: i,
            merge: format!("{a} {b}"),
            reason,
        };
        if !vocab.contains_key(a) {
            return Err(bad(format!("left token '{a}' is not in the vocabulary")));
        }
        if !vocab.contains_key(b) {
            return Err(bad(format!("right token '{b}' is not in the vocabulary")));
        }
        let merged = format!("{a}{b}");
        if !vocab.contains_key(&merged) {
            return Err(bad(format!(
                "merged token '{merged}' is not in the vocabulary"
            )));
        }
    }

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, spec.merges)
        .ignore_merges(spec.pre.ignore_merges())
        .build()
        .map_err(|e| TokenizerError::backend("building the BPE model", e))?;

    let split = Split::new(
        SplitPattern::Regex(spec.pre.regex().to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| TokenizerError::backend("compiling the split regex", e))?;
    let byte_level = ByteLevel::new(false, true, false);
    let pre_tokenizer = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(byte_level),
    ]);

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tokenizer)));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));

    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, kind) in spec.tokens.iter().zip(&spec.kinds) {
        match kind {
            TokenKind::Control => {
                special.push(AddedToken::from(token.clone(), true).normalized(false))
            }
            TokenKind::UserDefined => {
                user.push(AddedToken::from(token.clone(), false).normalized(false))
            }
            TokenKind::Normal | TokenKind::Unused => {}
        }
    }
    inner
        .add_special_tokens(special)
        .map_err(|e| TokenizerError::backend("adding control tokens", e))?;
    inner
        .add_tokens(user)
        .map_err(|e| TokenizerError::backend("adding user-defined tokens", e))?;

    let eot = spec.eot.or_else(|| {
        EOT_NAMES.iter().find_map(|name| {
            spec.tokens
                .iter()
                .zip(&spec.kinds)
                .position(|(t, k)| *k == TokenKind::Control && t == name)
                .map(|i| i as u32)
        })
    });
    let mut eog: Vec<u32> = spec.eos.into_iter().chain(eot).collect();
    for (i, (t, k)) in spec.tokens.iter().zip(&spec.kinds).enumerate() {
        if *k == TokenKind::Control && EOG_NAMES.contains(&t.as_str()) {
            eog.push(i as u32);
        }
    }
    eog.sort_unstable();
    eog.dedup();

    let add_bos = spec.add_bos.unwrap_or(spec.pre.add_bos_default()) && spec.bos.is_some();
    let add_eos = spec.add_eos.unwrap_or(false) && spec.eos.is_some();
    Ok(Tokenizer {
        inner,
        plain: std::sync::OnceLock::new(),
        pieces: spec.tokens.into_iter().map(Some).collect(),
        kinds: spec.kinds,
        decoding: PieceDecoding::ByteLevel,
        specials: SpecialsMode::Manual { add_bos, add_eos },
        bos: spec.bos,
        eos: spec.eos,
        eot,
        eog,
        chat_template: spec.chat_template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_split_like_llama_cpp() {
        assert_eq!(split_merge(0, "Ġ t").ok(), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge(0, "  x").ok(), Some((" ".into(), "x".into())));
        assert_eq!(
            split_merge(0, "ab cd").ok(),
            Some(("ab".into(), "cd".into()))
        );
        assert!(split_merge(3, "abc").is_err());
        assert!(split_merge(3, "").is_err());
        assert!(split_merge(3, "a ").is_err());
        let err = split_merge(7, "nospace").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("#7") && e.contains("nospace")));
    }

    #[test]
    fn pre_names() {
        assert_eq!(
            PreTokenizerType::from_name(Some("llama-bpe")).ok(),
            Some(PreTokenizerType::Llama3)
        );
        assert_eq!(
            PreTokenizerType::from_name(Some("gpt-2")).ok(),
            Some(PreTokenizerType::Gpt2)
        );
        let e = PreTokenizerType::from_name(Some("qwen2"))
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("'qwen2'") && e.contains("llama-bpe")));
        let e = PreTokenizerType::from_name(None)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("tokenizer.ggml.pre")));
    }
}

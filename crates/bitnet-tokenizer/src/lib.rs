//! Tokenizers from GGUF vocabularies or tokenizer.json, chat templates, streaming detokenization.
//!
//! One [`Tokenizer`] type, built from any of the sources a BitNet model ships with:
//! - GGUF metadata ([`GgufVocab`], filled by the model loader): byte-level BPE (`gpt2`) with a
//!   known `tokenizer.ggml.pre` (LLaMA-3 family or GPT-2); anything else is refused, never
//!   guessed;
//! - Hugging Face `tokenizer.json` + `tokenizer_config.json` ([`Tokenizer::from_files`]);
//! - Meta's LLaMA-3 tiktoken `tokenizer.model` ([`Tokenizer::from_tiktoken`]).
//!
//! Encoding matches HF `tokenizers` / llama.cpp id for id (the LLaMA-3 conformance test checks
//! it), [`StreamDecoder`] turns generated ids into text without ever splitting a UTF-8
//! character, and [`chat::ChatTemplate`] renders HF Jinja chat templates.
#![deny(missing_docs)]

mod byte_level;
pub mod chat;
mod error;
pub mod gguf_vocab;
mod hf;
pub mod stream;
pub mod tiktoken;

use std::sync::OnceLock;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::{Result, TokenizerError};
pub use gguf_vocab::GgufVocab;
pub use stream::StreamDecoder;
pub use tiktoken::{llama3_special_tokens, llama31_special_tokens, tiktoken_to_gguf_vocab};

/// What a vocabulary entry is, which decides how it is parsed in text and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Ordinary BPE token (alphabet-encoded for byte-level vocabularies).
    Normal,
    /// Control / special token: parsed in text only on request, skipped by `skip_special`,
    /// decoded as its literal text.
    Control,
    /// User-defined (non-special added) token: always parsed, never skipped, literal text.
    UserDefined,
    /// Unused / unknown-type vocabulary entry: decoded like a normal token, skipped like a
    /// control token.
    Unused,
}

/// How a normal token's text maps to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceDecoding {
    /// GPT-2 byte-level alphabet.
    ByteLevel,
    /// SentencePiece-style: `▁` is a space, `<0xNN>` is a raw byte.
    SentencePiece {
        /// The decoder drops the space SentencePiece prepends to the first word.
        strip_leading_space: bool,
    },
    /// The token text is the text.
    Raw,
}

/// How `encode(.., add_special = true, ..)` adds BOS/EOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpecialsMode {
    /// This crate adds them (GGUF, tiktoken, and HF configs that override the post-processor).
    Manual { add_bos: bool, add_eos: bool },
    /// tokenizer.json's own post-processor adds them (`adds_bos`: it puts BOS first).
    PostProcessor { adds_bos: bool },
}

/// A text <-> token-id converter with its special tokens and chat template. Immutable after
/// construction, `Send + Sync`, so one instance can serve concurrent requests.
pub struct Tokenizer {
    pub(crate) inner: tokenizers::Tokenizer,
    /// `inner` with special-token parsing off, built on first use of `parse_special = false`
    /// (a clone doubles the vocabulary's memory, so only when needed).
    pub(crate) plain: OnceLock<tokenizers::Tokenizer>,
    /// Id -> token text; `None` for ids a tokenizer.json leaves unassigned.
    pub(crate) pieces: Vec<Option<String>>,
    pub(crate) kinds: Vec<TokenKind>,
    pub(crate) decoding: PieceDecoding,
    pub(crate) specials: SpecialsMode,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) eot: Option<u32>,
    /// Sorted end-of-generation ids.
    pub(crate) eog: Vec<u32>,
    pub(crate) chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("decoding", &self.decoding)
            .field("specials", &self.specials)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("eog", &self.eog)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes. Only byte-level BPE (`gpt2`) with a
    /// `tokenizer.ggml.pre` this crate knows is accepted; a missing or unknown `pre`, a
    /// SentencePiece (`llama`) model, missing merges or inconsistent lists are errors.
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Tokenizer> {
        gguf_vocab::build_byte_level(vocab.to_spec()?)
    }

    /// The vocabulary as GGUF lists (`tokenizer.ggml.*`), for converters. Only byte-level BPE
    /// vocabularies with a pre-tokenizer GGUF can name (LLaMA-3's or GPT-2's split) convert;
    /// anything else is an error rather than a file that tokenizes differently.
    pub fn to_gguf_vocab(&self) -> Result<GgufVocab> {
        let unsupported = |reason: String| {
            TokenizerError::InvalidVocab(format!("cannot convert to GGUF: {reason}"))
        };
        if self.decoding != PieceDecoding::ByteLevel {
            return Err(unsupported(
                "only byte-level BPE vocabularies convert".into(),
            ));
        }
        let json: serde_json::Value = self
            .inner
            .to_string(false)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .ok_or_else(|| unsupported("the tokenizer does not serialize".into()))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(unsupported(format!(
                "model type {} is not BPE",
                model["type"]
            )));
        }
        let pre = json["pre_tokenizer"].to_string();
        let pre = if pre
            .contains(&serde_json::Value::from(gguf_vocab::LLAMA3_SPLIT_REGEX).to_string()[1..])
        {
            "llama-bpe"
        } else if pre
            .contains(&serde_json::Value::from(gguf_vocab::GPT2_SPLIT_REGEX).to_string()[1..])
        {
            "gpt-2"
        } else {
            return Err(unsupported(
                "its pre-tokenizer is neither LLaMA-3's nor GPT-2's split".into(),
            ));
        };
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| unsupported("no merges".into()))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(p) => {
                    Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                }
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| unsupported("a merge is neither \"a b\" nor [a, b]".into()))?;
        let tokens = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.clone()
                    .ok_or_else(|| unsupported(format!("id {i} has no token")))
            })
            .collect::<Result<Vec<String>>>()?;
        let token_types = self
            .kinds
            .iter()
            .map(|k| match k {
                TokenKind::Normal => 1,
                TokenKind::Control => 3,
                TokenKind::UserDefined => 4,
                TokenKind::Unused => 5,
            })
            .collect();
        Ok(GgufVocab {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types: Some(token_types),
            merges,
            bos: self.bos,
            eos: self.eos,
            eot: self.eot,
            add_bos: Some(self.add_bos_default()),
            add_eos: Some(matches!(
                self.specials,
                SpecialsMode::Manual { add_eos: true, .. }
            )),
            chat_template: self.chat_template.clone(),
        })
    }

    /// Encodes `text`.
    ///
    /// `add_special` adds the special tokens the tokenizer is configured to add, exactly as HF
    /// `tokenizer(text, add_special_tokens=...)` and llama.cpp's `add_special` do: BOS when the
    /// vocabulary adds one (see [`Tokenizer::add_bos_default`]), EOS only for vocabularies
    /// configured with `add_eos`. A BOS that tokenizer.json's post-processor adds is never
    /// added twice.
    ///
    /// `parse_special`: control/special tokens written in `text` (e.g. `<|eot_id|>`) become
    /// their ids; when false they are tokenized as plain text (HF `split_special_tokens`,
    /// llama.cpp `parse_special = false`). User-defined tokens are always parsed.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let tk = if parse_special {
            &self.inner
        } else {
            self.plain.get_or_init(|| {
                let mut t = self.inner.clone();
                t.set_encode_special_tokens(true);
                t
            })
        };
        let use_post_processor =
            add_special && matches!(self.specials, SpecialsMode::PostProcessor { .. });
        let encoding = tk
            .encode_fast(text, use_post_processor)
            .map_err(|e| TokenizerError::backend("encoding text", e))?;
        let mut ids = encoding.get_ids().to_vec();
        if add_special && let SpecialsMode::Manual { add_bos, add_eos } = self.specials {
            if let (true, Some(bos)) = (add_bos, self.bos) {
                ids.insert(0, bos);
            }
            if let (true, Some(eos)) = (add_eos, self.eos) {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Encodes a rendered chat prompt: special tokens in it are parsed, and BOS is prepended
    /// when the tokenizer adds one by default and the template did not already write it (HF
    /// templates differ on whether they emit `bos_token`). Never adds EOS.
    pub fn encode_chat_prompt(&self, rendered: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(rendered, false, true)?;
        if let (true, Some(bos)) = (self.add_bos_default(), self.bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Decodes ids to text. Byte sequences that are not valid UTF-8 become U+FFFD (as HF and
    /// llama.cpp do); `skip_special` drops control tokens (BOS, EOT, ...). Ids outside the
    /// vocabulary are an error rather than silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        match self.decoding {
            PieceDecoding::ByteLevel => {
                let mut bytes = Vec::new();
                for &id in ids {
                    if skip_special && self.is_special(id) {
                        continue;
                    }
                    if let Some(b) = self.token_bytes(id) {
                        bytes.extend_from_slice(&b);
                    }
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            PieceDecoding::SentencePiece { .. } | PieceDecoding::Raw => self
                .inner
                .decode(ids, skip_special)
                .map_err(|e| TokenizerError::backend("decoding ids", e)),
        }
    }

    /// A decoder for generated ids that yields text as soon as it forms whole characters.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special)
    }

    fn check_id(&self, id: u32) -> Result<()> {
        match self.pieces.get(id as usize) {
            Some(Some(_)) => Ok(()),
            _ => Err(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.vocab_size(),
            }),
        }
    }

    /// The token's text as the vocabulary stores it (byte-level alphabet for BPE tokens, e.g.
    /// `Ġworld`; literal text for special tokens).
    pub fn token_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize)?.as_deref()
    }

    /// The raw bytes a token stands for (e.g. `b" world"`, or part of a UTF-8 character);
    /// special tokens give their literal text.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let piece = self.token_piece(id)?;
        let kind = *self.kinds.get(id as usize)?;
        if matches!(kind, TokenKind::Control | TokenKind::UserDefined) {
            return Some(piece.as_bytes().to_vec());
        }
        Some(match self.decoding {
            PieceDecoding::ByteLevel => {
                // Like HF's ByteLevel decoder: a token with a char outside the alphabet is
                // taken literally.
                byte_level::decode(piece).unwrap_or_else(|| piece.as_bytes().to_vec())
            }
            PieceDecoding::SentencePiece { .. } => sentencepiece_bytes(piece),
            PieceDecoding::Raw => piece.as_bytes().to_vec(),
        })
    }

    /// The id of the token whose stored text is `piece` (e.g. `"<|eot_id|>"`).
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Number of ids the vocabulary defines (the model's embedding rows should match).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Beginning-of-sequence id, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn id (given, or found by name such as `<|eot_id|>`).
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Whether generation should stop at `id`: EOS, EOT, or another end-of-generation control
    /// token (`<|eom_id|>`, `<|end_of_text|>`, `<|im_end|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` is a control/special token (what `skip_special` removes).
    pub fn is_special(&self, id: u32) -> bool {
        matches!(
            self.kinds.get(id as usize),
            Some(TokenKind::Control | TokenKind::Unused)
        )
    }

    /// Whether `encode(text, true, ..)` starts with BOS: the vocabulary's default (GGUF
    /// `add_bos_token`, llama.cpp's per-pre default, HF config / post-processor).
    pub fn add_bos_default(&self) -> bool {
        match self.specials {
            SpecialsMode::Manual { add_bos, .. } => add_bos && self.bos.is_some(),
            SpecialsMode::PostProcessor { adds_bos } => adds_bos,
        }
    }

    /// The Jinja chat template the vocabulary ships (GGUF `tokenizer.chat_template`,
    /// tokenizer_config.json `chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// SentencePiece token text -> bytes: `<0xNN>` byte-fallback tokens are that byte, `▁` a space.
fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    if let Some(hex) = piece
        .strip_prefix("<0x")
        .and_then(|s| s.strip_suffix('>'))
        .filter(|h| h.len() == 2)
        && let Ok(b) = u8::from_str_radix(hex, 16)
    {
        return vec![b];
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests;

//! Hugging Face tokenizer files: `tokenizer.json` (any model `tokenizers` supports) plus the
//! BOS/EOS/add_*_token/chat_template settings of `tokenizer_config.json`, with transformers'
//! rules for when the config overrides tokenizer.json's post-processor.

use std::path::Path;

use serde_json::Value;

use crate::error::{Result, TokenizerError};
use crate::gguf_vocab::{EOG_NAMES, EOT_NAMES};
use crate::{PieceDecoding, SpecialsMode, TokenKind, Tokenizer};

/// End-of-sequence names tried when no config names the EOS token.
const EOS_NAMES: &[&str] = &["<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>"];

/// The settings this crate reads from tokenizer_config.json.
#[derive(Debug, Default)]
struct HfConfig {
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    chat_template: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json(bytes: &[u8], path: &Path) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, reason: String) -> TokenizerError {
    TokenizerError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// A token setting: a string, an AddedToken object `{"content": ...}`, or null/absent.
fn token_field(cfg: &Value, key: &str, path: &Path) -> Result<Option<String>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(invalid(
                path,
                format!("\"{key}\" is an object without a string \"content\""),
            )),
        },
        Some(_) => Err(invalid(
            path,
            format!("\"{key}\" must be a string or an object with \"content\""),
        )),
    }
}

fn bool_field(cfg: &Value, key: &str, path: &Path) -> Result<Option<bool>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(path, format!("\"{key}\" must be true or false"))),
    }
}

/// `chat_template` is a string, or a list of `{"name", "template"}` of which HF uses "default".
fn chat_template_field(cfg: &Value, path: &Path) -> Result<Option<String>> {
    match cfg.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            for entry in list {
                let name = entry.get("name").and_then(Value::as_str);
                let template = entry.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(invalid(
                            path,
                            "\"chat_template\" list entries need string \"name\" and \"template\""
                                .into(),
                        ));
                    }
                }
            }
            Ok(None)
        }
        Some(_) => Err(invalid(
            path,
            "\"chat_template\" must be a string or a list of named templates".into(),
        )),
    }
}

fn read_config(path: &Path) -> Result<(HfConfig, bool)> {
    let cfg = parse_json(&read(path)?, path)?;
    if !cfg.is_object() {
        return Err(invalid(path, "expected a JSON object".into()));
    }
    let mut config = HfConfig {
        bos_token: token_field(&cfg, "bos_token", path)?,
        eos_token: token_field(&cfg, "eos_token", path)?,
        add_bos_token: bool_field(&cfg, "add_bos_token", path)?,
        add_eos_token: bool_field(&cfg, "add_eos_token", path)?,
        chat_template: chat_template_field(&cfg, path)?,
    };
    // transformers 4.43+ may keep the template in a chat_template.jinja beside the config.
    if config.chat_template.is_none()
        && let Some(dir) = path.parent()
    {
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|source| TokenizerError::Io {
                path: jinja.clone(),
                source,
            })?;
            config.chat_template = Some(text);
        }
    }
    let explicit_add = cfg.get("add_bos_token").is_some() || cfg.get("add_eos_token").is_some();
    Ok((config, explicit_add))
}

/// Checks a BPE model's merges before `tokenizers` sees them: its builder indexes a buffer by
/// the merged length and would panic (or build invalid UTF-8) on merges whose parts or result
/// are not tokens.
fn validate_bpe(json: &Value, path: &Path) -> Result<()> {
    let Some(model) = json.get("model") else {
        return Ok(());
    };
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Ok(());
    }
    let (Some(vocab), Some(merges)) = (
        model.get("vocab").and_then(Value::as_object),
        model.get("merges").and_then(Value::as_array),
    ) else {
        return Ok(()); // shape errors are reported by `tokenizers`
    };
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut rank = 0usize;
    for m in merges {
        let (a, b, shown) = match m {
            Value::String(s) if s.starts_with("#version") => continue,
            Value::String(s) => {
                let parts: Vec<&str> = s.split(' ').collect();
                match parts.as_slice() {
                    [a, b] => (a.to_string(), b.to_string(), s.clone()),
                    _ => return Ok(()), // `tokenizers` reports BadMerges with the line
                }
            }
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => (a.clone(), b.clone(), format!("{a} {b}")),
                _ => return Ok(()),
            },
            _ => return Ok(()),
        };
        let bad = |reason: String| TokenizerError::InvalidMerge {
            index: rank,
            merge: shown.clone(),
            reason: format!("{reason} (in {})", path.display()),
        };
        if !vocab.contains_key(&a) {
            return Err(bad(format!("left token '{a}' is not in the vocabulary")));
        }
        if !vocab.contains_key(&b) {
            return Err(bad(format!("right token '{b}' is not in the vocabulary")));
        }
        let tail = b.strip_prefix(prefix).ok_or_else(|| {
            bad(format!(
                "right token '{b}' lacks the continuing-subword prefix '{prefix}'"
            ))
        })?;
        let merged = format!("{a}{tail}");
        if !vocab.contains_key(&merged) {
            return Err(bad(format!(
                "merged token '{merged}' is not in the vocabulary"
            )));
        }
        rank += 1;
    }
    Ok(())
}

/// The first of `names` that is a special (control) token of the tokenizer.
fn special_named(
    inner: &tokenizers::Tokenizer,
    kinds: &[TokenKind],
    names: &[&str],
) -> Option<u32> {
    names.iter().find_map(|n| {
        let id = inner.token_to_id(n)?;
        (kinds.get(id as usize) == Some(&TokenKind::Control)).then_some(id)
    })
}

fn detect_decoding(json: &Value) -> PieceDecoding {
    fn typ(v: &Value) -> Option<&str> {
        v.get("type").and_then(Value::as_str)
    }
    fn metaspace_prepends(v: &Value) -> bool {
        let scheme = v.get("prepend_scheme").and_then(Value::as_str);
        let legacy = v.get("add_prefix_space").and_then(Value::as_bool);
        scheme.map(|s| s != "never").or(legacy).unwrap_or(true)
    }
    let decoder = json.get("decoder").unwrap_or(&Value::Null);
    match typ(decoder) {
        Some("ByteLevel") => return PieceDecoding::ByteLevel,
        Some("Metaspace") => {
            return PieceDecoding::SentencePiece {
                strip_leading_space: metaspace_prepends(decoder),
            };
        }
        Some("Sequence") => {
            let parts: &[Value] = decoder
                .get("decoders")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if parts.iter().any(|d| typ(d) == Some("ByteLevel")) {
                return PieceDecoding::ByteLevel;
            }
            let sentencepiece = parts.iter().any(|d| match typ(d) {
                Some("ByteFallback" | "Metaspace") => true,
                Some("Replace") => {
                    d.get("pattern")
                        .and_then(|p| p.get("String"))
                        .and_then(Value::as_str)
                        == Some("\u{2581}")
                }
                _ => false,
            });
            if sentencepiece {
                let strip = parts.iter().any(|d| match typ(d) {
                    Some("Strip") => d.get("start").and_then(Value::as_u64).unwrap_or(0) > 0,
                    Some("Metaspace") => metaspace_prepends(d),
                    _ => false,
                });
                return PieceDecoding::SentencePiece {
                    strip_leading_space: strip,
                };
            }
            return PieceDecoding::Raw;
        }
        _ => {}
    }
    // No decoder: a ByteLevel pre-tokenizer still means alphabet-encoded tokens.
    if json
        .get("pre_tokenizer")
        .is_some_and(|p| p.to_string().contains("\"ByteLevel\""))
    {
        PieceDecoding::ByteLevel
    } else {
        PieceDecoding::Raw
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`, with BOS/EOS, `add_bos_token`/`add_eos_token`
    /// and the chat template from `tokenizer_config.json` (tokens given as strings or as
    /// AddedToken objects; a `chat_template.jinja` beside the config is used when the config
    /// has no template).
    ///
    /// Special tokens follow transformers (v5): when the config sets `add_bos_token` or
    /// `add_eos_token`, or tokenizer.json has no post-processor, BOS/EOS are added per those
    /// flags (default off); otherwise tokenizer.json's post-processor decides. Either way
    /// `encode(text, true, true)` equals HF `tokenizer(text)["input_ids"]`.
    pub fn from_files(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self> {
        let bytes = read(tokenizer_json)?;
        let json = parse_json(&bytes, tokenizer_json)?;
        validate_bpe(&json, tokenizer_json)?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            TokenizerError::backend(format!("loading {}", tokenizer_json.display()), e)
        })?;
        // Padding/truncation settings in tokenizer.json are for batching; a prompt must never
        // be cut or padded silently.
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::backend("disabling truncation", e))?;
        inner.with_padding(None);

        let (config, explicit_add) = match tokenizer_config_json {
            Some(p) => read_config(p)?,
            None => (HfConfig::default(), false),
        };
        let config_path = tokenizer_config_json.unwrap_or(tokenizer_json);
        let lookup = |name: &Option<String>, what: &str| -> Result<Option<u32>> {
            match name {
                None => Ok(None),
                Some(n) => inner.token_to_id(n).map(Some).ok_or_else(|| {
                    invalid(
                        config_path,
                        format!(
                            "{what} '{n}' is not a token of {}",
                            tokenizer_json.display()
                        ),
                    )
                }),
            }
        };
        let mut bos = lookup(&config.bos_token, "bos_token")?;
        let mut eos = lookup(&config.eos_token, "eos_token")?;

        // Id -> piece table, refusing sparse id spaces (a huge id would size the table).
        let vocab = inner.get_vocab(true);
        let max_id = vocab.values().copied().max().unwrap_or(0) as usize;
        if vocab.is_empty() || max_id >= vocab.len().saturating_mul(2).saturating_add(1024) {
            return Err(invalid(
                tokenizer_json,
                format!(
                    "token ids are not dense: {} tokens but the largest id is {max_id}",
                    vocab.len()
                ),
            ));
        }
        let mut pieces: Vec<Option<String>> = vec![None; max_id + 1];
        for (piece, id) in vocab {
            if let Some(slot) = pieces.get_mut(id as usize) {
                *slot = Some(piece);
            }
        }
        let mut kinds = vec![TokenKind::Normal; pieces.len()];
        let added = inner.get_added_tokens_decoder();
        for (id, token) in &added {
            if let Some(k) = kinds.get_mut(*id as usize) {
                *k = if token.special {
                    TokenKind::Control
                } else {
                    TokenKind::UserDefined
                };
            }
            if let Some(slot) = pieces.get_mut(*id as usize) {
                *slot = Some(token.content.clone());
            }
        }

        let specials = if explicit_add || inner.get_post_processor().is_none() {
            inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
            SpecialsMode::Manual {
                add_bos: config.add_bos_token.unwrap_or(false) && bos.is_some(),
                add_eos: config.add_eos_token.unwrap_or(false) && eos.is_some(),
            }
        } else {
            let with = inner
                .encode_fast("", true)
                .map_err(|e| TokenizerError::backend("probing the post-processor", e))?;
            let first = with.get_ids().first().copied();
            if bos.is_none() {
                bos = first.filter(|&id| kinds.get(id as usize) == Some(&TokenKind::Control));
            }
            SpecialsMode::PostProcessor {
                adds_bos: first.is_some() && first == bos,
            }
        };
        if eos.is_none() {
            eos = special_named(&inner, &kinds, EOS_NAMES);
        }
        let eot = special_named(&inner, &kinds, EOT_NAMES);
        let mut eog: Vec<u32> = eos.into_iter().chain(eot).collect();
        for (id, token) in &added {
            if token.special && EOG_NAMES.contains(&token.content.as_str()) {
                eog.push(*id);
            }
        }
        eog.sort_unstable();
        eog.dedup();

        Ok(Tokenizer {
            inner,
            plain: std::sync::OnceLock::new(),
            pieces,
            kinds,
            decoding: detect_decoding(&json),
            specials,
            bos,
            eos,
            eot,
            eog,
            chat_template: config.chat_template,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_accept_strings_and_added_token_objects() {
        let p = Path::new("tokenizer_config.json");
        let cfg: Value = serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "pad_token": null,
            "add_bos_token": true,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
        });
        assert_eq!(
            token_field(&cfg, "bos_token", p).ok().flatten().as_deref(),
            Some("<s>")
        );
        assert_eq!(
            token_field(&cfg, "eos_token", p).ok().flatten().as_deref(),
            Some("</s>")
        );
        assert_eq!(token_field(&cfg, "pad_token", p).ok().flatten(), None);
        assert_eq!(
            bool_field(&cfg, "add_bos_token", p).ok().flatten(),
            Some(true)
        );
        assert_eq!(
            chat_template_field(&cfg, p).ok().flatten().as_deref(),
            Some("D")
        );
        let bad = serde_json::json!({"bos_token": 3, "add_bos_token": "yes"});
        assert!(token_field(&bad, "bos_token", p).is_err());
        assert!(bool_field(&bad, "add_bos_token", p).is_err());
    }

    #[test]
    fn decoding_detection() {
        let bl = serde_json::json!({"decoder": {"type": "ByteLevel"}});
        assert_eq!(detect_decoding(&bl), PieceDecoding::ByteLevel);
        let sp = serde_json::json!({"decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}});
        assert_eq!(
            detect_decoding(&sp),
            PieceDecoding::SentencePiece {
                strip_leading_space: true
            }
        );
        let none = serde_json::json!({"decoder": null, "pre_tokenizer": {"type": "ByteLevel"}});
        assert_eq!(detect_decoding(&none), PieceDecoding::ByteLevel);
        let wp = serde_json::json!({"decoder": {"type": "WordPiece"}});
        assert_eq!(detect_decoding(&wp), PieceDecoding::Raw);
    }
}

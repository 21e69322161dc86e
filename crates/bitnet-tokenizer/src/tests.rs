//! Unit tests of the tokenizer on small hand-built byte-level vocabularies.

use super::*;
use crate::byte_level::encode as bl;
use proptest::prelude::*;

const BOS: &str = "<|begin_of_text|>";
const EOS: &str = "<|end_of_text|>";
const EOT: &str = "<|eot_id|>";
const USER_TOKEN: &str = "<tool>";

/// 256 byte tokens, then merged tokens from `merges` (given as raw byte strings), then extra
/// whole-word tokens with no merge path, then BOS/EOS/EOT (control) and `<tool>` (user).
fn vocab_with(pre: &str, merges: &[(&[u8], &[u8])], extra: &[&[u8]]) -> GgufVocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bl(&[b])).collect();
    let mut merge_lines = Vec::new();
    for (a, b) in merges {
        let merged = bl(&[*a, *b].concat());
        if !tokens.contains(&merged) {
            tokens.push(merged);
        }
        merge_lines.push(format!("{} {}", bl(a), bl(b)));
    }
    for e in extra {
        tokens.push(bl(e));
    }
    let mut types = vec![1; tokens.len()];
    let n = tokens.len() as u32;
    tokens.extend([BOS, EOS, EOT, USER_TOKEN].map(String::from));
    types.extend([3, 3, 3, 4]);
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: merge_lines,
        bos: Some(n),
        eos: Some(n + 1),
        eot: None,
        add_bos: None,
        add_eos: None,
        chat_template: Some("{{ messages[0]['content'] }}".into()),
    }
}

const MERGES: &[(&[u8], &[u8])] = &[
    (b"H", b"e"),
    (b"He", b"l"),
    (b"Hel", b"l"),
    (b"Hell", b"o"),
    (b" ", b"w"),
    (b" w", b"o"),
    (b" wo", b"r"),
    (b" wor", b"l"),
    (b" worl", b"d"),
    (b"3", b"4"),
    (b"1", b"2"),
    (b"12", b"34"),
    // 😀 = F0 9F 98 80: tokens that end and start mid-character.
    (b"\xF0", b"\x9F"),
    (b"\x98", b"\x80"),
];

fn llama() -> Tokenizer {
    match Tokenizer::from_gguf_vocab(&vocab_with("llama-bpe", MERGES, &[b" xyz"])) {
        Ok(t) => t,
        Err(e) => panic!("test vocabulary must build: {e}"),
    }
}

fn id(t: &Tokenizer, raw: &[u8]) -> u32 {
    t.token_id(&bl(raw)).unwrap_or(u32::MAX)
}

fn err_text(r: Result<Tokenizer>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn encodes_with_merges_and_bos() {
    let t = llama();
    let ids = t.encode("Hello world", false, true).unwrap_or_default();
    assert_eq!(ids, vec![id(&t, b"Hello"), id(&t, b" world")]);
    let with_bos = t.encode("Hello world", true, true).unwrap_or_default();
    assert_eq!(with_bos.first().copied(), t.bos_id());
    assert_eq!(&with_bos[1..], &ids[..]);
    assert_eq!(
        t.decode(&with_bos, false).ok().as_deref(),
        Some("<|begin_of_text|>Hello world")
    );
    assert_eq!(
        t.decode(&with_bos, true).ok().as_deref(),
        Some("Hello world")
    );
    assert_eq!(t.token_piece(id(&t, b" world")), Some("Ġworld"));
    assert_eq!(
        t.token_bytes(id(&t, b" world")).as_deref(),
        Some(&b" world"[..])
    );
    assert_eq!(t.chat_template(), Some("{{ messages[0]['content'] }}"));
    assert!(t.add_bos_default());
}

#[test]
fn llama3_and_gpt2_pre_tokenizers_differ_as_specified() {
    let l = llama();
    let g = Tokenizer::from_gguf_vocab(&vocab_with("gpt-2", MERGES, &[b" xyz"]));
    let g = match g {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    };
    // LLaMA-3 splits digits in groups of three: "123" "4" -> 12 3 4; GPT-2 keeps "1234".
    assert_eq!(
        l.encode("1234", false, false).unwrap_or_default(),
        vec![id(&l, b"12"), id(&l, b"3"), id(&l, b"4")]
    );
    assert_eq!(
        g.encode("1234", false, false).unwrap_or_default(),
        vec![id(&g, b"1234")]
    );
    // ignore_merges (LLaMA-3 only): a whole word in the vocabulary is one token even without
    // a merge path to it.
    assert_eq!(
        l.encode(" xyz", false, false).unwrap_or_default(),
        vec![id(&l, b" xyz")]
    );
    assert_eq!(
        g.encode(" xyz", false, false).unwrap_or_default(),
        vec![id(&g, b" "), id(&g, b"x"), id(&g, b"y"), id(&g, b"z")]
    );
    // GPT-2 adds no BOS by default; LLaMA-3 does.
    assert!(!g.add_bos_default());
    assert_eq!(
        g.encode("Hello", true, true).unwrap_or_default(),
        vec![id(&g, b"Hello")]
    );
}

#[test]
fn special_tokens_parsed_or_not() {
    let t = llama();
    let eot = t.token_id(EOT).unwrap_or(u32::MAX);
    let text = "Hello<|eot_id|> world";
    let parsed = t.encode(text, false, true).unwrap_or_default();
    assert_eq!(parsed, vec![id(&t, b"Hello"), eot, id(&t, b" world")]);
    let plain = t.encode(text, false, false).unwrap_or_default();
    assert!(!plain.contains(&eot));
    assert!(plain.len() > 3);
    assert_eq!(t.decode(&plain, false).ok().as_deref(), Some(text));
    assert_eq!(t.decode(&plain, true).ok().as_deref(), Some(text));
    assert_eq!(t.decode(&parsed, true).ok().as_deref(), Some("Hello world"));
    // User-defined tokens are parsed either way and never skipped.
    let tool = t.token_id(USER_TOKEN).unwrap_or(u32::MAX);
    for parse in [true, false] {
        let ids = t.encode("a<tool>b", false, parse).unwrap_or_default();
        assert_eq!(ids, vec![id(&t, b"a"), tool, id(&t, b"b")]);
        assert_eq!(t.decode(&ids, true).ok().as_deref(), Some("a<tool>b"));
    }
    assert!(t.is_special(eot) && !t.is_special(tool));
}

#[test]
fn eos_eot_and_eog() {
    let t = llama();
    let eot = t.token_id(EOT);
    assert_eq!(
        t.eot_id(),
        eot,
        "EOT found by name when the vocabulary does not give it"
    );
    assert_eq!(t.eos_id(), t.token_id(EOS));
    for e in [eot, t.eos_id()].into_iter().flatten() {
        assert!(t.is_eog(e));
    }
    assert!(!t.is_eog(id(&t, b"a")));
    assert!(t.bos_id().is_some_and(|b| !t.is_eog(b)));
}

#[test]
fn add_bos_and_add_eos_flags() {
    let mut v = vocab_with("llama-bpe", MERGES, &[]);
    v.add_bos = Some(false);
    v.add_eos = Some(true);
    let t = match Tokenizer::from_gguf_vocab(&v) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert!(!t.add_bos_default());
    let ids = t.encode("Hello", true, true).unwrap_or_default();
    assert_eq!(ids, vec![id(&t, b"Hello"), t.eos_id().unwrap_or(0)]);
}

#[test]
fn chat_prompt_gets_exactly_one_bos() {
    let t = llama();
    let bos = t.bos_id().unwrap_or(0);
    let a = t
        .encode_chat_prompt("User: Hi<|eot_id|>Assistant: ")
        .unwrap_or_default();
    let b = t
        .encode_chat_prompt("<|begin_of_text|>User: Hi<|eot_id|>Assistant: ")
        .unwrap_or_default();
    assert_eq!(a, b);
    assert_eq!(a.iter().filter(|&&i| i == bos).count(), 1);
    assert_eq!(a.first(), Some(&bos));
}

#[test]
fn refuses_unknown_or_missing_pre_and_other_models() {
    let mut v = vocab_with("llama-bpe", MERGES, &[]);
    v.pre = Some("qwen2".into());
    let e = err_text(Tokenizer::from_gguf_vocab(&v));
    assert!(e.contains("unsupported tokenizer.ggml.pre 'qwen2'"), "{e}");
    v.pre = None;
    let e = err_text(Tokenizer::from_gguf_vocab(&v));
    assert!(
        e.contains("no tokenizer.ggml.pre") && e.contains("llama-bpe"),
        "{e}"
    );
    v.pre = Some("default".into());
    assert!(err_text(Tokenizer::from_gguf_vocab(&v)).contains("'default'"));
    let mut v = vocab_with("llama-bpe", MERGES, &[]);
    v.model = "llama".into();
    let e = err_text(Tokenizer::from_gguf_vocab(&v));
    assert!(
        e.contains("unsupported tokenizer model 'llama'") && e.contains("SentencePiece"),
        "{e}"
    );
}

#[test]
fn rejects_broken_vocabularies() {
    let base = vocab_with("llama-bpe", MERGES, &[]);

    let mut v = base.clone();
    v.merges.clear();
    let e = err_text(Tokenizer::from_gguf_vocab(&v));
    assert!(e.contains("tokenizer.ggml.merges is missing"), "{e}");

    let mut v = base.clone();
    v.merges.push("Hello Ġzzz".into());
    let e = err_text(Tokenizer::from_gguf_vocab(&v));
    assert!(e.contains("'Ġzzz' is not in the vocabulary"), "{e}");

    let mut v = base.clone();
    v.merges.push("H o".into()); // both parts exist, "Ho" does not
    let e = err_text(Tokenizer::from_gguf_vocab(&v));
    assert!(e.contains("merged token 'Ho'"), "{e}");

    let mut v = base.clone();
    v.merges.push("nospace".into());
    assert!(err_text(Tokenizer::from_gguf_vocab(&v)).contains("separated by a space"));

    let mut v = base.clone();
    v.token_types = Some(vec![1; 3]);
    assert!(err_text(Tokenizer::from_gguf_vocab(&v)).contains("token_type has 3 entries"));

    let mut v = base.clone();
    if let Some(t) = v.token_types.as_mut().and_then(|t| t.first_mut()) {
        *t = 9;
    }
    assert!(err_text(Tokenizer::from_gguf_vocab(&v)).contains("token_type 9"));

    let mut v = base.clone();
    v.bos = Some(1_000_000);
    assert!(err_text(Tokenizer::from_gguf_vocab(&v)).contains("BOS token id 1000000"));

    let mut v = base.clone();
    v.tokens[10] = "not-a-byte".into();
    let e = err_text(Tokenizer::from_gguf_vocab(&v));
    assert!(e.contains("no token for byte 0x0A"), "{e}");

    let mut v = base;
    v.tokens.clear();
    v.token_types = None;
    assert!(err_text(Tokenizer::from_gguf_vocab(&v)).contains("tokens is empty"));
}

#[test]
fn decode_rejects_unknown_ids() {
    let t = llama();
    let n = t.vocab_size() as u32;
    let e = t
        .decode(&[0, n], false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains(&format!("token id {n} is out of range")), "{e}");
    assert!(t.stream_decoder(false).push(n).is_err());
    assert_eq!(t.token_piece(n), None);
    assert_eq!(t.token_bytes(n), None);
}

#[test]
fn stream_decoder_never_splits_emoji_or_cjk() {
    let t = llama();
    let text = "Hi 😀你好!";
    let ids = t.encode(text, true, true).unwrap_or_default();
    // The emoji is two tokens (F0 9F | 98 80), each CJK char three byte tokens.
    assert!(ids.contains(&id(&t, b"\xF0\x9F")) && ids.contains(&id(&t, b"\x98\x80")));
    let mut dec = t.stream_decoder(true);
    let mut pieces = Vec::new();
    for &i in &ids {
        if let Ok(Some(p)) = dec.push(i) {
            pieces.push(p);
        }
    }
    assert!(!dec.has_pending());
    assert_eq!(dec.finish(), None);
    assert_eq!(pieces, vec!["H", "i", " ", "😀", "你", "好", "!"]);

    // Keeping special tokens: BOS text comes first.
    let mut dec = t.stream_decoder(false);
    let first = ids.first().and_then(|&i| dec.push(i).ok().flatten());
    assert_eq!(first.as_deref(), Some(BOS));

    // A sequence cut mid-character: finish() reports the leftover as U+FFFD.
    let mut dec = t.stream_decoder(true);
    assert_eq!(dec.push(id(&t, b"\xF0\x9F")).ok().flatten(), None);
    assert!(dec.has_pending());
    assert_eq!(dec.finish().as_deref(), Some("\u{FFFD}"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random text (ASCII, accents, CJK, emoji, whitespace) -> tokens -> streamed one by one:
    /// every piece is whole characters and the pieces concatenate to the text; decode agrees.
    #[test]
    fn streaming_round_trips_random_text(text in "[a-zA-Z0-9 \\t\\n.,'éüñ€你好世界😀🎉👍🏽\u{200d}]{0,40}") {
        let t = llama();
        let ids = t.encode(&text, false, false).unwrap_or_default();
        let mut dec = t.stream_decoder(false);
        let mut out = String::new();
        for &i in &ids {
            if let Some(p) = dec.push(i).ok().flatten() {
                prop_assert!(!p.contains(char::REPLACEMENT_CHARACTER), "replacement char in {:?}", p);
                out.push_str(&p);
            }
        }
        prop_assert_eq!(dec.finish(), None);
        prop_assert_eq!(&out, &text);
        prop_assert_eq!(t.decode(&ids, false).ok(), Some(text.clone()));
    }
}

mod from_files {
    use super::*;
    use std::path::PathBuf;
    use tokenizers::processors::template::TemplateProcessing;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            panic!("writing {}: {e}", p.display());
        }
        p
    }

    /// The llama() tokenizer saved as tokenizer.json, with or without a BOS template.
    fn tokenizer_json(with_bos_template: bool) -> String {
        let t = llama();
        let mut inner = t.inner.clone();
        if with_bos_template {
            let bos = t.bos_id().unwrap_or(0);
            let tp = TemplateProcessing::builder()
                .try_single(format!("{BOS} $A"))
                .and_then(|b| {
                    b.special_tokens(vec![(BOS.to_string(), bos)])
                        .build()
                        .map_err(|e| e.to_string())
                });
            match tp {
                Ok(tp) => {
                    inner.with_post_processor(Some(tp));
                }
                Err(e) => panic!("{e}"),
            }
        }
        inner.to_string(false).unwrap_or_default()
    }

    fn load(json: &str, config: Option<&str>) -> (Result<Tokenizer>, tempfile::TempDir) {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let tj = write(dir.path(), "tokenizer.json", json);
        let cfg = config.map(|c| write(dir.path(), "tokenizer_config.json", c));
        (Tokenizer::from_files(&tj, cfg.as_deref()), dir)
    }

    fn ok(r: Result<Tokenizer>) -> Tokenizer {
        match r {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn post_processor_bos_is_used_once() {
        let (t, _d) = load(
            &tokenizer_json(true),
            Some(
                r#"{"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|end_of_text|>", "chat_template": "X"}"#,
            ),
        );
        let t = ok(t);
        let g = llama();
        assert!(t.add_bos_default());
        assert_eq!(
            t.encode("Hello world", true, true).ok(),
            g.encode("Hello world", true, true).ok()
        );
        assert_eq!(
            t.encode("Hello world", false, true).ok(),
            g.encode("Hello world", false, true).ok()
        );
        assert_eq!(
            t.encode("a<|eot_id|>", false, false).ok(),
            g.encode("a<|eot_id|>", false, false).ok()
        );
        assert_eq!(t.chat_template(), Some("X"));
        assert_eq!(t.eos_id(), g.eos_id());
        assert_eq!(t.eot_id(), g.eot_id());
        assert_eq!(t.vocab_size(), g.vocab_size());
        let ids = t.encode("Hi 😀", true, true).unwrap_or_default();
        assert_eq!(t.decode(&ids, true).ok().as_deref(), Some("Hi 😀"));
        assert_eq!(
            t.token_bytes(id(&g, b" world")).as_deref(),
            Some(&b" world"[..])
        );
    }

    #[test]
    fn post_processor_bos_without_config() {
        let t = ok(load(&tokenizer_json(true), None).0);
        assert_eq!(
            t.bos_id(),
            llama().bos_id(),
            "BOS inferred from the post-processor"
        );
        assert!(t.add_bos_default());
        assert_eq!(t.eos_id(), llama().eos_id(), "EOS found by name");
    }

    #[test]
    fn config_add_bos_token_overrides_post_processor() {
        let cfg = r#"{"bos_token": "<|begin_of_text|>", "add_bos_token": false}"#;
        let t = ok(load(&tokenizer_json(true), Some(cfg)).0);
        assert!(!t.add_bos_default());
        assert_eq!(
            t.encode("Hello", true, true).ok(),
            Some(vec![id(&llama(), b"Hello")])
        );

        let cfg = r#"{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": true, "add_eos_token": true}"#;
        let t = ok(load(&tokenizer_json(false), Some(cfg)).0);
        let g = llama();
        assert_eq!(
            t.encode("Hello", true, true).ok(),
            Some(vec![
                g.bos_id().unwrap_or(0),
                id(&g, b"Hello"),
                g.eos_id().unwrap_or(0)
            ])
        );
    }

    #[test]
    fn no_post_processor_and_no_flags_adds_nothing() {
        let t = ok(load(
            &tokenizer_json(false),
            Some(r#"{"bos_token": "<|begin_of_text|>"}"#),
        )
        .0);
        assert!(!t.add_bos_default());
        assert_eq!(
            t.encode("Hello", true, true).ok(),
            Some(vec![id(&llama(), b"Hello")])
        );
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = err_text(load("{not json", None).0);
        assert!(e.contains("tokenizer.json: invalid JSON"), "{e}");
        let e = err_text(load(&tokenizer_json(true), Some(r#"{"bos_token": "<s>"}"#)).0);
        assert!(e.contains("bos_token '<s>' is not a token"), "{e}");
        // A merge whose result is not a token would make `tokenizers` panic; we refuse it.
        let mut json: serde_json::Value =
            serde_json::from_str(&tokenizer_json(false)).unwrap_or_default();
        if let Some(m) = json
            .pointer_mut("/model/merges")
            .and_then(|m| m.as_array_mut())
        {
            m.push(serde_json::json!(["H", "o"]));
        }
        let e = err_text(load(&json.to_string(), None).0);
        assert!(
            e.contains("merged token 'Ho' is not in the vocabulary"),
            "{e}"
        );
        let e = err_text(Tokenizer::from_files(
            std::path::Path::new("/nonexistent/tokenizer.json"),
            None,
        ));
        assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
    }
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<ChatTemplate>();
    check::<TokenizerError>();
}

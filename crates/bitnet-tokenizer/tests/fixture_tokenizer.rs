//! The small fixture tokenizer (LLaMA-3 structure, 384 tokens; fixtures/tokenizer/, written by
//! tools/fixtures/generate.py) loaded with `from_files` must reproduce HF `tokenizers`' ids and
//! decodings for every recorded case; the models' hf-packed tokenizer.json files must agree.

use std::path::{Path, PathBuf};

use bitnet_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn load(dir: &Path) -> Tokenizer {
    Tokenizer::from_files(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn cases() -> Vec<Value> {
    let path = fixtures().join("tokenizer/fixture_tokenizer_cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    v["cases"].as_array().cloned().unwrap_or_default()
}

fn ids(case: &Value, key: &str) -> Vec<u32> {
    case[key]
        .as_array()
        .unwrap_or_else(|| panic!("case {:?} lacks {key}", case["text"]))
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).expect("id"))
        .collect()
}

fn str_of<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("case lacks {key}"))
}

fn check_cases(t: &Tokenizer) {
    let cases = cases();
    assert!(cases.len() >= 40, "fixture case file is unexpectedly small");
    for case in &cases {
        let text = str_of(case, "text");
        let plain = ids(case, "ids");
        assert_eq!(
            t.encode(text, false, true).expect("encode"),
            plain,
            "ids of {text:?}"
        );
        assert_eq!(
            t.encode(text, true, true).expect("encode"),
            ids(case, "ids_with_bos"),
            "ids_with_bos of {text:?}"
        );
        let as_text = ids(case, "ids_specials_as_text");
        assert_eq!(
            t.encode(text, false, false).expect("encode"),
            as_text,
            "ids_specials_as_text of {text:?}"
        );
        let tokens: Vec<&str> = plain
            .iter()
            .map(|&i| t.token_piece(i).expect("piece"))
            .collect();
        let want_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(tokens, want_tokens, "tokens of {text:?}");
        assert_eq!(
            t.decode(&plain, false).expect("decode"),
            str_of(case, "decoded")
        );
        assert_eq!(
            t.decode(&plain, true).expect("decode"),
            str_of(case, "decoded_skip_special"),
            "skip-special decoding of {text:?}"
        );
        assert_eq!(
            t.decode(&as_text, false).expect("decode"),
            str_of(case, "decoded_specials_as_text")
        );

        // Streaming the ids one at a time gives the same text.
        let mut dec = t.stream_decoder(true);
        let mut out = String::new();
        for &i in &plain {
            if let Some(p) = dec.push(i).expect("known id") {
                out.push_str(&p);
            }
        }
        out.extend(dec.finish());
        assert_eq!(
            out,
            str_of(case, "decoded_skip_special"),
            "stream of {text:?}"
        );
    }
}

#[test]
fn fixture_tokenizer_matches_hf_cases() {
    let t = load(&fixtures().join("tokenizer"));
    assert_eq!(t.vocab_size(), 384);
    assert_eq!(t.bos_id(), Some(379));
    assert_eq!(t.eos_id(), Some(380));
    assert_eq!(t.eot_id(), Some(381));
    assert!(t.is_eog(380) && t.is_eog(381) && !t.is_eog(379));
    assert!(t.add_bos_default());
    check_cases(&t);
}

#[test]
fn model_fixture_tokenizers_match() {
    let models = fixtures().join("models");
    let Ok(entries) = std::fs::read_dir(&models) else {
        panic!("no {}", models.display());
    };
    let mut checked = 0;
    for entry in entries.flatten() {
        let dir = entry.path().join("hf-packed");
        if dir.join("tokenizer.json").is_file() {
            check_cases(&load(&dir));
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no hf-packed tokenizer.json under {}",
        models.display()
    );
}

#[test]
fn fixture_chat_template_renders_like_the_builtin_2b4t_one() {
    let t = load(&fixtures().join("tokenizer"));
    let src = t
        .chat_template()
        .expect("fixture config has a chat_template");
    let tpl = ChatTemplate::new(src).expect("compiles");
    let msgs = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hey, are you conscious?"),
    ];
    let rendered = tpl
        .render(&msgs, true, "<|begin_of_text|>", "<|end_of_text|>")
        .expect("renders");
    assert_eq!(
        rendered,
        "System: Be brief.<|eot_id|>User: Hey, are you conscious?<|eot_id|>Assistant: "
    );
    let builtin = ChatTemplate::builtin_bitnet_2b4t()
        .render(&msgs, true, "<|begin_of_text|>", "<|end_of_text|>")
        .expect("renders");
    assert_eq!(rendered, builtin);
    let ids = t.encode_chat_prompt(&rendered).expect("encode");
    assert_eq!(ids.first(), Some(&379));
    assert_eq!(ids.iter().filter(|&&i| i == 381).count(), 2);
}

#[test]
fn tokenizer_json_converts_to_gguf_lists_that_tokenize_the_same() {
    let t = load(&fixtures().join("tokenizer"));
    let vocab = t.to_gguf_vocab().unwrap();
    assert_eq!(vocab.pre.as_deref(), Some("llama-bpe"));
    assert_eq!(vocab.tokens.len(), 384);
    let back = Tokenizer::from_gguf_vocab(&vocab).unwrap();
    assert_eq!(
        (back.bos_id(), back.eos_id(), back.eot_id()),
        (t.bos_id(), t.eos_id(), t.eot_id())
    );
    check_cases(&back);
}

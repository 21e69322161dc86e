//! A generation that goes on from an earlier one's cache (`Engine::generate_after`, what `bitnet
//! chat` does turn after turn) prefills only its new tokens and gives exactly the output of a
//! fresh generation, for every KV cache type.

use std::path::Path;

use bitnet_engine::{ChatMessage, Device, EngineBuilder, GenerateOptions, KvType, Prompt};

fn engine(kv: KvType) -> bitnet_engine::Engine {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.gguf");
    EngineBuilder::new(path.to_string_lossy())
        .device(Device::Cpu)
        .threads(1)
        .kv(kv)
        .build()
        .unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    let mut o = GenerateOptions::greedy(n);
    o.ignore_eos = true;
    o
}

fn ids(g: bitnet_engine::Generation) -> (Vec<u32>, bitnet_engine::PromptPrefix) {
    let mut g = g;
    let out: Vec<u32> = g.by_ref().map(|t| t.unwrap().id).collect();
    (out, g.into_prefix())
}

#[test]
fn a_chat_turn_after_the_last_reuses_its_cache_and_says_the_same() {
    for kv in KvType::ALL {
        let e = engine(kv);
        let mut history = vec![ChatMessage::user("Who comes there?")];
        let first = e
            .generate(Prompt::Chat(history.clone()), greedy(16))
            .unwrap();
        let prompt_len = first.prompt_tokens().len();
        let (_, prefix) = ids(first);
        assert_eq!(prefix.tokens().len(), prompt_len + 15, "{kv:?}");
        let reply = e
            .generate_text(Prompt::Chat(history.clone()), greedy(16))
            .unwrap();
        history.push(ChatMessage::new("assistant", reply.trim()));
        history.push(ChatMessage::user("And what of the king?"));

        let after = e
            .generate_after(Prompt::Chat(history.clone()), greedy(12), prefix)
            .unwrap();
        let reused = after.reused_tokens();
        let (got, _) = ids(after);
        let fresh = e
            .generate(Prompt::Chat(history.clone()), greedy(12))
            .unwrap();
        assert_eq!(fresh.reused_tokens(), 0);
        let (want, _) = ids(fresh);
        assert_eq!(got, want, "{kv:?}");
        // At least the first turn's prompt but its last token came from the cache.
        assert!(reused >= prompt_len - 1, "{kv:?}: {reused} of {prompt_len}");
    }
}

#[test]
fn a_prompt_that_shares_nothing_or_everything_is_still_exact() {
    let e = engine(KvType::F16);
    let first = e.generate("ROMEO:", greedy(10)).unwrap();
    let (out, prefix) = ids(first);
    // The same prompt again: all of it but its last token reused, the same output.
    let again = e.generate_after("ROMEO:", greedy(10), prefix).unwrap();
    let n = again.prompt_tokens().len();
    assert_eq!(again.reused_tokens(), n - 1);
    let (out2, prefix) = ids(again);
    assert_eq!(out2, out);
    // Nothing shared (no BOS either): the cache is reused empty, the output is a fresh one's.
    let mut o = greedy(10);
    o.add_bos = Some(false);
    let other = e.generate_after("JULIET:", o.clone(), prefix).unwrap();
    let (got, _) = ids(other);
    let (want, _) = ids(e.generate("JULIET:", o).unwrap());
    assert_eq!(got, want);
}

#[test]
fn a_prefix_from_another_engine_is_refused() {
    let (a, b) = (engine(KvType::F16), engine(KvType::F16));
    let (_, prefix) = ids(a.generate("ROMEO:", greedy(4)).unwrap());
    let err = match b.generate_after("ROMEO: and", greedy(4), prefix) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a prefix from another engine was taken"),
    };
    assert!(err.contains("another engine"), "{err}");
    // A clone of the engine shares its model: its prefixes are taken.
    let (_, prefix) = ids(a.generate("ROMEO:", greedy(4)).unwrap());
    let c = a.clone();
    assert!(c.generate_after("ROMEO: and", greedy(4), prefix).is_ok());
}

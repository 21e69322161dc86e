//! Batched forward passes (several sequences, mixed prefill and decode, one GEMM per linear) give
//! bit-identical logits to running each sequence alone, whatever the KV cache stores.

use std::path::Path;
use std::sync::Arc;

use bitnet_model::{BatchEntry, KvType, Logits, Model, Scratch};

fn model(kv: KvType) -> Model {
    model_on(kv, &bitnet_core::scalar::ScalarKernel)
}

fn model_on(kv: KvType, kernel: &dyn bitnet_core::LinearKernel) -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/untied-gqa4/model-tq2_0.gguf");
    let file = bitnet_gguf::GgufFile::open(path).unwrap();
    bitnet_model::load_gguf(Arc::new(file), kernel)
        .unwrap()
        .with_kv_type(kv)
}

#[test]
fn batched_equals_alone() {
    // Single-threaded, and on a thread pool (the head's tasks then write each vector's share
    // of the logits themselves).
    let threaded = bitnet_cpu::with_threads(Arc::new(bitnet_core::scalar::ScalarKernel), 3);
    for kv in KvType::ALL {
        batched_equals_alone_with(&model(kv));
        batched_equals_alone_with(&model_on(kv, &*threaded));
    }
}

fn batched_equals_alone_with(m: &Model) {
    // The first prompt's 12 rows (alone, and with the others' two in the second batched step)
    // take the pool's per-row path for norms and quantization (8 rows and up).
    let prompts: [&[u32]; 3] = [
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        &[9],
        &[100, 200, 300],
    ];
    // Alone: prefill each prompt, then decode two tokens.
    let mut alone = Vec::new();
    for p in prompts {
        let mut cache = m.new_cache(32);
        let mut s = Scratch::default();
        let mut l = Vec::new();
        m.forward(p, &mut cache, Logits::Last, &mut l, &mut s, None)
            .unwrap();
        let mut rows = vec![l.clone()];
        for t in [7u32, 8] {
            m.forward(&[t], &mut cache, Logits::Last, &mut l, &mut s, None)
                .unwrap();
            rows.push(l.clone());
        }
        alone.push(rows);
    }
    // Batched: sequence 0 prefills in two chunks while the others prefill and decode.
    let mut caches: Vec<_> = (0..3).map(|_| m.new_cache(32)).collect();
    let mut s = Scratch::default();
    let mut out = Vec::new();
    let v = m.config().vocab_size;
    {
        let [c0, c1, c2] = &mut caches[..] else {
            unreachable!()
        };
        let mut step = [
            BatchEntry {
                tokens: &prompts[0][..2],
                cache: c0,
                logits: Logits::Last,
            },
            BatchEntry {
                tokens: prompts[1],
                cache: c1,
                logits: Logits::Last,
            },
            BatchEntry {
                tokens: prompts[2],
                cache: c2,
                logits: Logits::Last,
            },
        ];
        m.forward_batch(&mut step, &mut out, &mut s, None).unwrap();
        assert_eq!(out.len(), 3 * v);
        assert_eq!(&out[v..2 * v], &alone[1][0][..]);
        assert_eq!(&out[2 * v..], &alone[2][0][..]);
    }
    {
        let [c0, c1, c2] = &mut caches[..] else {
            unreachable!()
        };
        let mut step = [
            BatchEntry {
                tokens: &prompts[0][2..],
                cache: c0,
                logits: Logits::Last,
            },
            BatchEntry {
                tokens: &[7],
                cache: c1,
                logits: Logits::Last,
            },
            BatchEntry {
                tokens: &[7],
                cache: c2,
                logits: Logits::Last,
            },
        ];
        m.forward_batch(&mut step, &mut out, &mut s, None).unwrap();
        assert_eq!(&out[..v], &alone[0][0][..]);
        assert_eq!(&out[v..2 * v], &alone[1][1][..]);
        assert_eq!(&out[2 * v..], &alone[2][1][..]);
    }
    {
        let [c0, c1, c2] = &mut caches[..] else {
            unreachable!()
        };
        let mut step = [
            BatchEntry {
                tokens: &[7],
                cache: c0,
                logits: Logits::Last,
            },
            BatchEntry {
                tokens: &[8],
                cache: c1,
                logits: Logits::Last,
            },
            BatchEntry {
                tokens: &[8],
                cache: c2,
                logits: Logits::Last,
            },
        ];
        m.forward_batch(&mut step, &mut out, &mut s, None).unwrap();
        assert_eq!(&out[..v], &alone[0][1][..]);
        assert_eq!(&out[v..2 * v], &alone[1][2][..]);
        assert_eq!(&out[2 * v..], &alone[2][2][..]);
    }
    assert_eq!(
        caches.iter().map(|c| c.len()).collect::<Vec<_>>(),
        [13, 3, 5]
    );
}

#[test]
fn an_invalid_entry_changes_nothing() {
    let m = model(KvType::default());
    let mut a = m.new_cache(4);
    let mut b = m.new_cache(4);
    let mut step = [
        BatchEntry {
            tokens: &[1, 2],
            cache: &mut a,
            logits: Logits::Last,
        },
        BatchEntry {
            tokens: &[1, 2, 3, 4, 5],
            cache: &mut b,
            logits: Logits::Last,
        },
    ];
    let err = m
        .forward_batch(&mut step, &mut Vec::new(), &mut Scratch::default(), None)
        .unwrap_err();
    assert!(err.to_string().contains("context length exceeded"), "{err}");
    assert_eq!((a.len(), b.len()), (0, 0));
}

//! The seed's model-level targets as criterion benches: a ~1M-parameter BitNet model's decode
//! step (forward of one token with a short KV cache) on the best kernel, one thread, and the
//! same step batched over 8 sequences.
//! `cargo bench -p bitnet-engine --bench forward`

use bitnet_engine::convert::{ConvertOptions, synthetic};
use bitnet_engine::{EngineBuilder, bench};
use bitnet_model::{BatchEntry, Logits, Scratch};
use criterion::{Criterion, criterion_group, criterion_main};

fn forward(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("bitnet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("1m.gguf");
    synthetic("1m", 0, &path, &ConvertOptions::default(), None).expect("synthetic model");
    let engine = EngineBuilder::new(path.to_str().expect("utf-8 path"))
        .threads(1)
        .build()
        .expect("load");
    let model = engine.model();
    let cfg = model.config();
    let params = cfg.vocab_size * cfg.hidden_size
        + cfg.n_layers
            * (2 * cfg.hidden_size * (cfg.q_dim() + cfg.kv_dim())
                + 3 * cfg.hidden_size * cfg.intermediate_size);
    eprintln!(
        "model: {params} parameters, kernel {}",
        engine.info().kernel
    );
    if let Some(rss) = bench::peak_rss_bytes() {
        eprintln!("peak RSS after load: {:.1} MB", rss as f64 / 1e6);
    }
    let prompt: Vec<u32> = (0..16).collect();
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    let mut base = model.new_cache(64);
    model
        .forward(
            &prompt,
            &mut base,
            Logits::Last,
            &mut logits,
            &mut scratch,
            None,
        )
        .expect("prefill");
    c.bench_function("1m_decode_token", |b| {
        b.iter(|| {
            base.truncate(prompt.len());
            model
                .forward(
                    &[7],
                    &mut base,
                    Logits::Last,
                    &mut logits,
                    &mut scratch,
                    None,
                )
                .expect("decode");
        })
    });
    c.bench_function("1m_decode_batch8", |b| {
        let toks: Vec<[u32; 1]> = (0..8).map(|i| [i as u32]).collect();
        let mut caches: Vec<_> = (0..8)
            .map(|_| {
                let mut c = model.new_cache(64);
                model
                    .forward(
                        &prompt,
                        &mut c,
                        Logits::Last,
                        &mut logits,
                        &mut scratch,
                        None,
                    )
                    .expect("prefill");
                c
            })
            .collect();
        b.iter(|| {
            for c in caches.iter_mut() {
                c.truncate(prompt.len());
            }
            let mut batch: Vec<BatchEntry<'_>> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(cache, t)| BatchEntry {
                    tokens: t,
                    cache,
                    logits: Logits::Last,
                })
                .collect();
            model
                .forward_batch(&mut batch, &mut logits, &mut scratch, None)
                .expect("decode");
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, forward);
criterion_main!(benches);

//! Would two half batches, decoded concurrently on one GPU, beat one whole batch? Loads the
//! model `copies` times (each copy has its own CUDA stream), gives each copy `batch / copies`
//! sequences filled to `depth` positions, then times `steps` greedy decode steps on every copy
//! at once (one thread per copy, started together). Prints the aggregate generated tokens/s.
//! A probe for splitting one batched step into concurrent chains (BENCHMARKS.md, session 23).
//!
//! `cargo run --release -p bitnet-engine --example two_chains -- MODEL.gguf BATCH COPIES [STEPS] [DEPTH]`

use std::sync::Barrier;
use std::time::Instant;

use bitnet_engine::{Device, Engine, EngineBuilder};
use bitnet_model::{BatchEntry, Logits, Scratch};

fn run(engine: &Engine, batch: usize, steps: usize, depth: usize, go: &Barrier) -> f64 {
    let model = engine.model();
    let vocab = model.config().vocab_size;
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    let mut caches: Vec<_> = (0..batch)
        .map(|_| model.new_cache(depth + steps + 1))
        .collect();
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|i| {
            (0..depth)
                .map(|j| ((j * 7919 + i * 104_729 + 13) % vocab) as u32)
                .collect()
        })
        .collect();
    for (cs, ps) in caches.chunks_mut(4).zip(prompts.chunks(4)) {
        let mut entries: Vec<BatchEntry<'_>> = cs
            .iter_mut()
            .zip(ps)
            .map(|(cache, p)| BatchEntry {
                tokens: p,
                cache,
                logits: Logits::Last,
            })
            .collect();
        model
            .forward_batch(&mut entries, &mut logits, &mut scratch, None)
            .expect("prefill");
    }
    let mut step: Vec<[u32; 1]> = prompts.iter().map(|p| [p[0]]).collect();
    let mut next = Vec::new();
    // One untimed step captures the graph.
    let mut decode = |step: &mut Vec<[u32; 1]>| {
        let mut entries: Vec<BatchEntry<'_>> = caches
            .iter_mut()
            .zip(step.iter())
            .map(|(cache, tok)| BatchEntry {
                tokens: tok,
                cache,
                logits: Logits::Last,
            })
            .collect();
        model
            .forward_batch_greedy(&mut entries, &mut next, &mut scratch)
            .expect("decode");
        for (s, &n) in step.iter_mut().zip(&next) {
            s[0] = n;
        }
    };
    decode(&mut step);
    go.wait();
    let t = Instant::now();
    for _ in 0..steps {
        decode(&mut step);
    }
    t.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: two_chains MODEL.gguf BATCH COPIES [STEPS] [DEPTH]";
    let path = args.next().ok_or(usage)?;
    let batch: usize = args.next().ok_or(usage)?.parse()?;
    let copies: usize = args.next().ok_or(usage)?.parse()?;
    let steps: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(64);
    let depth: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(512);
    let engines: Vec<Engine> = (0..copies)
        .map(|_| {
            EngineBuilder::new(path.clone())
                .device(Device::Cuda(0))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let go = Barrier::new(copies);
    let per = batch / copies;
    let times: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter()
            .map(|e| s.spawn(|| run(e, per, steps, depth, &go)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let wall = times.iter().cloned().fold(0.0, f64::max);
    println!(
        "batch {batch} as {copies} x {per}: {:.0} tok/s aggregate (slowest copy {:.3} s, {:.3} ms/step)",
        (per * copies * steps) as f64 / wall,
        wall,
        wall * 1e3 / steps as f64
    );
    Ok(())
}

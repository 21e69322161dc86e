//! Would two half batches, decoded concurrently on one GPU, beat one whole batch? Loads the
//! model `copies` times (each copy has its own CUDA stream), gives each copy `batch / copies`
//! sequences filled to `depth` positions, then times `steps` greedy decode steps on every copy
//! at once (one thread per copy, started together). Prints the aggregate generated tokens/s.
//! A probe for splitting one batched step into concurrent chains (BENCHMARKS.md, session 23).
//!
//! `cargo run --release -p bitnet-engine --example two_chains -- MODEL.gguf BATCH COPIES [STEPS] [DEPTH]`

use std::sync::Barrier;
use std::time::Instant;

use bitnet_engine::bench::BatchDecode;
use bitnet_engine::{Device, Engine, EngineBuilder};

fn run(engine: &Engine, batch: usize, steps: usize, depth: usize, go: &Barrier) -> f64 {
    // One untimed step captures the graph.
    let mut run = BatchDecode::new(engine.model(), batch, depth, steps + 1, 0).expect("prefill");
    run.step(false).expect("decode");
    go.wait();
    let t = Instant::now();
    for i in 0..steps {
        run.step(i + 1 < steps).expect("decode");
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

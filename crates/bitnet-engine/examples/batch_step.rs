//! Times one batched decode step (`Model::forward_batch`) at several batch sizes, to see how
//! decode throughput scales with concurrent sequences.
//! `cargo run --release -p bitnet-engine --example batch_step -- MODEL.gguf [threads] [batches] [steps]`
//! (batches comma-separated, default 1,4,16,64; steps timed per batch size, default 4)

use std::time::Instant;

use bitnet_engine::EngineBuilder;
use bitnet_model::{BatchEntry, Logits, Scratch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: batch_step MODEL.gguf [threads] [batches] [steps]")?;
    let threads: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    let batches: Vec<usize> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 4, 16, 64],
    };
    let steps: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(4);
    let engine = EngineBuilder::new(path).threads(threads).build()?;
    let model = engine.model();
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    println!("| batch | ms/step | tok/s | x batch 1 |");
    println!("|---:|---:|---:|---:|");
    let mut base = 0.0;
    for batch in batches {
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache(64)).collect();
        for (i, c) in caches.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..16).map(|t| (t * 31 + i * 7) as u32).collect();
            model.forward(&prompt, c, Logits::Last, &mut logits, &mut scratch, None)?;
        }
        let toks: Vec<[u32; 1]> = (0..batch).map(|i| [i as u32 + 1]).collect();
        let t = Instant::now();
        for _ in 0..steps {
            let mut entries: Vec<BatchEntry<'_>> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(cache, tok)| BatchEntry {
                    tokens: tok,
                    cache,
                    logits: Logits::Last,
                })
                .collect();
            model.forward_batch(&mut entries, &mut logits, &mut scratch, None)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let tps = batch as f64 * 1e3 / ms;
        if batch == 1 {
            base = tps;
        }
        println!("| {batch} | {ms:.1} | {tps:.1} | {:.2} |", tps / base);
    }
    Ok(())
}

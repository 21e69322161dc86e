//! Greedy (or top-k) decode steps with and without the head's int8 screen, alternated step by
//! step in one process (the two models share the mapped file), so that the machine's drifting
//! memory speed hits both alike; also checks that both choose the same candidates.
//! `cargo run --release -p bitnet-engine --example screen_ab -- MODEL.gguf [threads] [batches] [steps] [k]`
//! (batches comma-separated, default 1,16; steps per batch size and model, default 16; `k`
//! candidates per step, default 1 = greedy; each step continues with the best one)

use std::time::Instant;

use bitnet_engine::EngineBuilder;
use bitnet_model::{BatchEntry, Logits, Model, Scratch};

/// `batch` sequences prefilled with 16 tokens each, at the next token to decode.
struct Run {
    caches: Vec<bitnet_model::KvCache>,
    toks: Vec<[u32; 1]>,
    scratch: Scratch,
    next: Vec<(u32, f32)>,
}

impl Run {
    fn new(model: &Model, batch: usize, steps: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let mut scratch = Scratch::default();
        let mut logits = Vec::new();
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache(17 + steps)).collect();
        for (i, c) in caches.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..16).map(|t| (t * 31 + i * 7) as u32).collect();
            model.forward(&prompt, c, Logits::Last, &mut logits, &mut scratch, None)?;
        }
        Ok(Self {
            caches,
            toks: (0..batch).map(|i| [i as u32 + 1]).collect(),
            scratch,
            next: Vec::new(),
        })
    }

    /// One step choosing `k` candidates; returns its seconds (and the screen's exact rows land
    /// in `scratch`).
    fn step(&mut self, model: &Model, k: usize) -> Result<f64, Box<dyn std::error::Error>> {
        let mut entries: Vec<BatchEntry<'_>> = (self.caches.iter_mut())
            .zip(&self.toks)
            .map(|(cache, tok)| BatchEntry {
                tokens: tok,
                cache,
                logits: Logits::Last,
            })
            .collect();
        let t = Instant::now();
        if k == 1 {
            let mut ids = Vec::new();
            model.forward_batch_greedy(&mut entries, &mut ids, &mut self.scratch)?;
            self.next = ids.into_iter().map(|id| (id, 0.0)).collect();
        } else {
            model.forward_batch_top_k(&mut entries, k, &mut self.next, &mut self.scratch)?;
        }
        let dt = t.elapsed().as_secs_f64();
        for (t, c) in self.toks.iter_mut().zip(self.next.chunks(k)) {
            t[0] = c[0].0;
        }
        Ok(dt)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: screen_ab MODEL.gguf [threads] [batches] [steps]")?;
    let threads: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    let batches: Vec<usize> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 16],
    };
    let steps: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(16);
    let k: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(1);
    let load = |screen| {
        EngineBuilder::new(&path)
            .threads(threads)
            .head_screen(screen)
            .build()
    };
    let t = Instant::now();
    let screened = load(true)?;
    let load_screened = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let plain = load(false)?;
    let load_plain = t.elapsed().as_secs_f64();
    println!(
        "load: {load_plain:.2} s without the screen, {load_screened:.2} s with it ({} MB)",
        screened.model().head_screen_bytes() / 1_000_000
    );
    println!(
        "| batch | ms/step, full head | ms/step, screened | speed-up | same tokens | exact rows per sequence |"
    );
    println!("|---:|---:|---:|---:|---|---:|");
    for batch in batches {
        let mut a = Run::new(plain.model(), batch, steps)?;
        let mut b = Run::new(screened.model(), batch, steps)?;
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        let mut same = true;
        let mut exact = 0;
        for _ in 0..steps {
            ta.push(a.step(plain.model(), k)?);
            tb.push(b.step(screened.model(), k)?);
            exact += b.scratch.screened_exact_rows();
            same &= format!("{:?}", a.next) == format!("{:?}", b.next);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] * 1e3
        };
        let (ma, mb) = (median(&mut ta), median(&mut tb));
        let per_sequence = exact as f64 / (steps * batch) as f64;
        println!(
            "| {batch} | {ma:.1} | {mb:.1} | {:.2}x | {same} | {per_sequence:.0} |",
            ma / mb
        );
    }
    Ok(())
}

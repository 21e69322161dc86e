//! What a compact head costs in accuracy: runs a reference model and a candidate (the same model
//! converted with another head, e.g. `bitnet convert --head q6_k`) over the same text, teacher
//! forced in chunks, and reports top-1 agreement and the mean KL divergence KL(ref || candidate)
//! of the next-token distributions at every position.
//!
//! `cargo run --release -p bitnet-engine --example head_accuracy -- REF.gguf CANDIDATE.gguf TEXT_FILE [ctx]`

use bitnet_engine::EngineBuilder;
use bitnet_model::{Logits, Scratch};

/// log-softmax of one row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference, candidate, text, rest @ ..] = args.as_slice() else {
        return Err("usage: head_accuracy REF.gguf CANDIDATE.gguf TEXT_FILE [ctx]".into());
    };
    let ctx: usize = rest.first().map(|c| c.parse()).transpose()?.unwrap_or(256);
    let a = EngineBuilder::new(reference)
        .device(bitnet_engine::Device::Cpu)
        .build()?;
    let b = EngineBuilder::new(candidate)
        .device(bitnet_engine::Device::Cpu)
        .build()?;
    let tok = a
        .tokenizer()
        .ok_or("the reference model has no tokenizer")?;
    let tokens = tok.encode(&std::fs::read_to_string(text)?, false, false)?;
    let vocab = a.model().config().vocab_size;
    if b.model().config().vocab_size != vocab {
        return Err("the two models' vocabularies differ".into());
    }
    let (mut agree, mut kl_sum, mut n) = (0usize, 0.0f64, 0usize);
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    let (mut sa, mut sb) = (Scratch::default(), Scratch::default());
    let ctx = ctx.min(a.context_length()).min(b.context_length());
    for chunk in tokens.chunks(ctx).filter(|c| c.len() > 1) {
        let mut ca = a.model().new_cache(chunk.len());
        let mut cb = b.model().new_cache(chunk.len());
        a.model()
            .forward(chunk, &mut ca, Logits::All, &mut la, &mut sa, None)?;
        b.model()
            .forward(chunk, &mut cb, Logits::All, &mut lb, &mut sb, None)?;
        for (ra, rb) in la.chunks_exact(vocab).zip(lb.chunks_exact(vocab)) {
            agree += (argmax(ra) == argmax(rb)) as usize;
            let (pa, pb) = (log_softmax(ra), log_softmax(rb));
            kl_sum += pa
                .iter()
                .zip(&pb)
                .map(|(x, y)| x.exp() * (x - y))
                .sum::<f64>();
            n += 1;
        }
    }
    if n == 0 {
        return Err("the text is too short".into());
    }
    println!(
        "{} positions: top-1 agreement {:.2}%, mean KL(ref || candidate) {:.3e} nats (head {} vs {})",
        n,
        100.0 * agree as f64 / n as f64,
        kl_sum / n as f64,
        a.model().head_type(),
        b.model().head_type()
    );
    Ok(())
}

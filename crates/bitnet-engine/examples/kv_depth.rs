//! Decode cost of each KV cache type (f32, f16, q8) at depth 0 and at a given depth, on one
//! thread, in process CPU time as well as wall time: CPU time stays comparable on a machine
//! that other work shares, where `bitnet bench -t 2` swings by 2x.
//! `cargo run --release -p bitnet-engine --example kv_depth -- MODEL.gguf [depth] [n]`

use std::time::Instant;

use bitnet_engine::{Device, EngineBuilder, KvType};
use bitnet_model::{KvCache, Logits, Model, Scratch};

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, 10 ms ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: state is the first, utime the 12th, stime the 13th.
    let fields: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    ticks as f64 / 100.0
}

/// Decodes `n` tokens one at a time; returns (CPU ms, wall ms) per token.
fn decode(
    model: &Model,
    cache: &mut KvCache,
    n: usize,
) -> Result<(f64, f64), bitnet_model::ModelError> {
    let vocab = model.config().vocab_size;
    let (mut scratch, mut logits) = (Scratch::default(), Vec::new());
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    for i in 0..n {
        let token = ((i * 7919 + 13) % vocab) as u32;
        model.forward(
            &[token],
            cache,
            Logits::Last,
            &mut logits,
            &mut scratch,
            None,
        )?;
    }
    let per_token = |s: f64| s * 1e3 / n as f64;
    Ok((
        per_token(cpu_seconds() - cpu),
        per_token(wall.elapsed().as_secs_f64()),
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: kv_depth MODEL.gguf [depth] [n]")?;
    let depth: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(1024);
    let n: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(32);
    println!(
        "| kv | KV MB at d{depth} | CPU ms/token d0 | CPU ms/token d{depth} | wall d0 | wall d{depth} |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for kv in KvType::ALL {
        let engine = EngineBuilder::new(&path)
            .threads(1)
            .device(Device::Cpu)
            .kv(kv)
            .build()?;
        let model = engine.model();
        let vocab = model.config().vocab_size;
        let mut cache = model.new_cache(depth + n + 1);
        let shallow = decode(model, &mut cache, n)?;
        let fill: Vec<u32> = (cache.len()..depth)
            .map(|i| ((i * 104_729 + 7) % vocab) as u32)
            .collect();
        model.forward(
            &fill,
            &mut cache,
            Logits::Last,
            &mut Vec::new(),
            &mut Scratch::default(),
            None,
        )?;
        let deep = decode(model, &mut cache, n)?;
        let kv_mb = (depth * model.kv_bytes_per_position()) as f64 / 1e6;
        println!(
            "| {kv} | {kv_mb:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            shallow.0, deep.0, shallow.1, deep.1
        );
    }
    Ok(())
}

//! Times the forward and backward pass of one training step of a preset on random tokens:
//! `cargo run -p bitnet-train --example step_time -- small 16 [float]`.

use std::time::Instant;

use bitnet_train::{BitNetModel, Preset};
use candle_core::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let preset = Preset::parse(args.get(1).map_or("small", String::as_str)).ok_or("preset")?;
    let batch: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let float = args.get(3).is_some_and(|s| s == "float");
    let shape = preset.shape();
    let (t, v) = (shape.context_length, shape.vocab_size as u32);
    let model = BitNetModel::new(shape, float, 1)?;
    let ids: Vec<u32> = (0..batch * t)
        .map(|i| (i as u32).wrapping_mul(2654435761) % v)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, t), model.device())?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let loss = model.loss(&ids, &ids)?;
        let t1 = Instant::now();
        let _g = loss.backward()?;
        let t2 = Instant::now();
        println!(
            "forward {:.3}s backward {:.3}s -> {:.0} tokens/s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (batch * t) as f64 / (t2 - t0).as_secs_f64()
        );
    }
    Ok(())
}

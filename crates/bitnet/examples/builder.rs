//! The builder: pick the kernel, context length and KV memory budget, then sample with a seed.
//! `cargo run -p bitnet --example builder -- [MODEL]`

fn main() -> Result<(), bitnet::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fixtures/models/untied-gqa4/hf-packed".into());
    let model = bitnet::EngineBuilder::new(path)
        .kernel("auto")
        .context_length(96)
        .max_kv_bytes(16 << 20)
        .device(bitnet::Device::Cpu)
        .build()?;
    println!(
        "context {} tokens, kernel {}",
        model.context_length(),
        model.info().kernel
    );
    let opts = bitnet::GenerateOptions {
        max_tokens: 24,
        sampling: bitnet::SamplingOptions {
            temperature: 0.7,
            top_k: 20,
            seed: Some(7),
            ..Default::default()
        },
        stop: vec!["\n".into()],
        ..Default::default()
    };
    println!("{}", model.generate_text("The quick brown fox", opts)?);
    Ok(())
}

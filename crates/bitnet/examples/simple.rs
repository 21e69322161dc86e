//! Load a model and generate text in one call.
//! `cargo run -p bitnet --example simple -- [MODEL] [PROMPT]`

fn main() -> Result<(), bitnet::Error> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "fixtures/models/tied-gqa2/model-i2_s.gguf".into());
    let prompt = args.next().unwrap_or_else(|| "The quick brown fox".into());
    let model = bitnet::load(&path)?;
    let text = model.generate_text(prompt.as_str(), bitnet::GenerateOptions::greedy(16))?;
    println!("{prompt}{text}");
    Ok(())
}

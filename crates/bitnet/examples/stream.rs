//! Stream tokens as they are generated; stop early by dropping the iterator.
//! `cargo run -p bitnet --example stream -- [MODEL]`

use std::io::Write;

fn main() -> Result<(), bitnet::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fixtures/models/tied-gqa2/model-tq2_0.gguf".into());
    let model = bitnet::load(&path)?;
    let mut generation =
        model.generate("The quick brown fox", bitnet::GenerateOptions::greedy(32))?;
    let mut out = std::io::stdout();
    for (i, token) in generation.by_ref().enumerate() {
        let token = token?;
        print!("{}", token.text);
        out.flush().ok();
        if i == 9 {
            break; // cancel: the rest is never computed
        }
    }
    println!("{}", generation.take_tail());
    Ok(())
}

//! The model bundled into the binary, so `bitnet generate --prompt "ROMEO:"` works offline on a
//! fresh machine with nothing else installed: a small BitNet b1.58 model this project trained on
//! Shakespeare (see models/default/MODEL_CARD.md for how, and its measured quality).

/// How reports name it.
pub const NAME: &str = "bundled:bitnet-shakespeare-small";

/// The GGUF image (I2_S ternary weights, f16 embedding, its own tokenizer).
pub const GGUF: &[u8] = include_bytes!("../../../models/default/model.gguf");

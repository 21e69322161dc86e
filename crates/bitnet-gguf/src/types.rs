//! ggml tensor types: how a raw `type_id` is interpreted (per architecture, because Microsoft's
//! bitnet.cpp fork reuses ids that upstream ggml assigns differently) and how many bytes a tensor
//! of a given type and element count occupies.

use crate::error::{GgufError, Result};

/// Architectures written by Microsoft's bitnet.cpp, whose ggml fork numbers its own types
/// I2_S 36, I8_S 37, TL1 38, TL2 39. Every other architecture uses upstream ggml ids.
pub const BITNET_FORK_ARCHITECTURES: [&str; 2] = ["bitnet-b1.58", "bitnet-25"];

/// True when type ids of a file with this `general.architecture` follow bitnet.cpp's fork table.
pub fn uses_bitnet_fork_ids(architecture: &str) -> bool {
    BITNET_FORK_ARCHITECTURES.contains(&architecture)
}

/// A tensor encoding this crate can size and decode.
///
/// Ids are never trusted on their own: [`TensorType::from_id`] needs the file's architecture.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    /// IEEE f32, id 0.
    F32,
    /// IEEE f16, id 1.
    F16,
    /// bfloat16, id 30.
    BF16,
    /// Blocks of 32: f16 `d` + 16 bytes of 4-bit codes (value `j` in the low nibble of byte `j`,
    /// value `j + 16` in its high nibble), `(q - 8) * d`; 18 bytes, id 2.
    Q4_0,
    /// Blocks of 32: f16 `d` + 32 i8, 34 bytes, id 8.
    Q8_0,
    /// Blocks of 256: f16 `d`, f16 `dmin`, `scales[12]` (8 packed 6-bit scales and mins),
    /// `qs[128]` (4-bit); `d * sc * q - dmin * m`; 144 bytes, id 12.
    Q4_K,
    /// Blocks of 256: `ql[128]`, `qh[64]`, `scales[16]` (i8), f16 `d`; 210 bytes, id 14.
    Q6_K,
    /// Ternary, blocks of 256: base-3 packed `qs[48]`, `qh[4]`, f16 `d`; 54 bytes, id 34.
    TQ1_0,
    /// Ternary, blocks of 256: 2-bit `qs[64]`, f16 `d`; 66 bytes, id 35.
    TQ2_0,
    /// bitnet.cpp's ternary I2_S (id 36 in the fork only): 2-bit codes in 128-value blocks of 32
    /// bytes, then a 32-byte tail starting with the per-tensor f32 scale; `n/4 + 32` bytes.
    I2_S,
}

impl TensorType {
    /// Every type this crate supports.
    pub const ALL: [TensorType; 10] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::BF16,
        TensorType::Q4_0,
        TensorType::Q8_0,
        TensorType::Q4_K,
        TensorType::Q6_K,
        TensorType::TQ1_0,
        TensorType::TQ2_0,
        TensorType::I2_S,
    ];

    /// Interprets a raw ggml type id for a file whose `general.architecture` is `architecture`.
    /// Id 36 is I2_S only for bitnet.cpp's architectures; elsewhere it is not a type we know.
    pub fn from_id(type_id: u32, architecture: &str) -> Option<TensorType> {
        match type_id {
            0 => Some(TensorType::F32),
            1 => Some(TensorType::F16),
            2 => Some(TensorType::Q4_0),
            8 => Some(TensorType::Q8_0),
            12 => Some(TensorType::Q4_K),
            14 => Some(TensorType::Q6_K),
            30 => Some(TensorType::BF16),
            34 => Some(TensorType::TQ1_0),
            35 => Some(TensorType::TQ2_0),
            36 if uses_bitnet_fork_ids(architecture) => Some(TensorType::I2_S),
            _ => None,
        }
    }

    /// The raw ggml id written for this type (I2_S: the fork's 36).
    pub fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q8_0 => 8,
            TensorType::Q4_K => 12,
            TensorType::Q6_K => 14,
            TensorType::BF16 => 30,
            TensorType::TQ1_0 => 34,
            TensorType::TQ2_0 => 35,
            TensorType::I2_S => 36,
        }
    }

    /// The ggml name ("Q6_K", "I2_S", ...).
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::BF16 => "BF16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q4_K => "Q4_K",
            TensorType::Q6_K => "Q6_K",
            TensorType::TQ1_0 => "TQ1_0",
            TensorType::TQ2_0 => "TQ2_0",
            TensorType::I2_S => "I2_S",
        }
    }

    /// Elements per block. For I2_S this is the 128-value packing group of the x86 layout; ggml's
    /// fork itself reports 1, but a tensor whose element count is not a multiple of 128 has no
    /// defined I2_S layout.
    pub fn block_size(self) -> u64 {
        match self {
            TensorType::F32 | TensorType::F16 | TensorType::BF16 => 1,
            TensorType::Q4_0 | TensorType::Q8_0 => 32,
            TensorType::I2_S => 128,
            TensorType::Q4_K | TensorType::Q6_K | TensorType::TQ1_0 | TensorType::TQ2_0 => 256,
        }
    }

    /// Bytes per block (I2_S: 32 bytes per 128 codes, not counting the 32-byte tensor tail).
    pub fn type_size(self) -> u64 {
        match self {
            TensorType::F32 => 4,
            TensorType::F16 | TensorType::BF16 => 2,
            TensorType::Q4_0 => 18,
            TensorType::Q8_0 => 34,
            TensorType::Q4_K => 144,
            TensorType::Q6_K => 210,
            TensorType::TQ1_0 => 54,
            TensorType::TQ2_0 => 66,
            TensorType::I2_S => 32,
        }
    }

    /// True for the ternary packings (TQ1_0, TQ2_0, I2_S).
    pub fn is_ternary_packing(self) -> bool {
        matches!(
            self,
            TensorType::TQ1_0 | TensorType::TQ2_0 | TensorType::I2_S
        )
    }

    /// Exact byte size of a tensor of `n_elements` values: `blocks * type_size`, and for I2_S
    /// `n/4 + 32` (the codes plus the 32-byte tail holding the scale). Errors when `n_elements`
    /// is not a whole number of blocks or the size overflows.
    pub fn n_bytes(self, n_elements: u64) -> Result<u64> {
        let block = self.block_size();
        if !n_elements.is_multiple_of(block) {
            return Err(GgufError::data(
                self.name(),
                format!(
                    "{n_elements} elements is not a multiple of the {block}-element block size"
                ),
            ));
        }
        let blocks = n_elements / block;
        let body = blocks.checked_mul(self.type_size());
        let total = match self {
            TensorType::I2_S => body.and_then(|b| b.checked_add(32)),
            _ => body,
        };
        total.ok_or_else(|| {
            GgufError::data(
                self.name(),
                format!("byte size of {n_elements} elements overflows u64"),
            )
        })
    }

    /// Bytes of one row of `row_len` elements, for types whose rows are self-contained (all but
    /// I2_S, whose scale lives in the tensor tail). Errors when `row_len` is not a multiple of
    /// the block size.
    pub fn row_bytes(self, row_len: u64) -> Result<u64> {
        if self == TensorType::I2_S {
            return Err(GgufError::data(
                "I2_S",
                "rows are not self-contained (the scale is in the tensor tail)",
            ));
        }
        self.n_bytes(row_len)
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The ggml name of any type id, including ones this crate cannot decode, so listings and error
/// messages can say "Q4_K" or "TL1" instead of a bare number. `None` for ids nobody assigned.
pub fn ggml_type_name(type_id: u32, architecture: &str) -> Option<&'static str> {
    if uses_bitnet_fork_ids(architecture) {
        match type_id {
            36 => return Some("I2_S"),
            37 => return Some("I8_S"),
            38 => return Some("TL1"),
            39 => return Some("TL2"),
            _ => {}
        }
    }
    Some(match type_id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        40 => "NVFP4",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_36_is_i2_s_only_for_bitnet_cpp_architectures() {
        assert_eq!(
            TensorType::from_id(36, "bitnet-b1.58"),
            Some(TensorType::I2_S)
        );
        assert_eq!(TensorType::from_id(36, "bitnet-25"), Some(TensorType::I2_S));
        assert_eq!(TensorType::from_id(36, "bitnet"), None);
        assert_eq!(TensorType::from_id(36, "llama"), None);
        assert_eq!(TensorType::from_id(36, ""), None);
        for arch in ["bitnet-b1.58", "llama"] {
            for id in [37, 38, 39, 3, 13, 40] {
                assert_eq!(TensorType::from_id(id, arch), None, "id {id} arch {arch}");
            }
        }
        assert_eq!(ggml_type_name(39, "bitnet-25"), Some("TL2"));
        assert_eq!(ggml_type_name(39, "bitnet"), Some("MXFP4"));
        assert_eq!(ggml_type_name(36, "bitnet"), None);
    }

    #[test]
    fn ids_round_trip() {
        for t in TensorType::ALL {
            assert_eq!(TensorType::from_id(t.id(), "bitnet-b1.58"), Some(t));
        }
    }

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(TensorType::I2_S.n_bytes(2560 * 2560).unwrap(), 1_638_432);
        assert_eq!(TensorType::TQ1_0.n_bytes(512).unwrap(), 108);
        assert_eq!(TensorType::TQ2_0.n_bytes(256).unwrap(), 66);
        assert_eq!(TensorType::Q6_K.n_bytes(256).unwrap(), 210);
        assert_eq!(TensorType::Q8_0.n_bytes(64).unwrap(), 68);
        assert_eq!(TensorType::Q4_0.n_bytes(64).unwrap(), 36);
        assert_eq!(TensorType::Q4_K.n_bytes(512).unwrap(), 288);
        assert!(TensorType::Q4_0.n_bytes(48).is_err());
        assert_eq!(TensorType::BF16.n_bytes(3).unwrap(), 6);
        assert_eq!(TensorType::F32.n_bytes(0).unwrap(), 0);
        assert!(TensorType::I2_S.n_bytes(64).is_err());
        assert!(TensorType::Q8_0.n_bytes(33).is_err());
        assert!(TensorType::F32.n_bytes(u64::MAX).is_err());
        assert!(TensorType::I2_S.row_bytes(128).is_err());
        assert_eq!(TensorType::Q6_K.row_bytes(512).unwrap(), 420);
    }
}

//! Property tests: the writer and reader are inverses (metadata of every type, tensors of every
//! type, any alignment, v2 and v3), and every codec round-trips exactly what its format can
//! represent.

use bitnet_gguf::{
    Array, GgufFile, GgufWriter, TensorType, Value, decode_f32, decode_rows_f32, decode_ternary,
    encode_bf16, encode_f16, encode_f32, encode_i2_s, encode_q4_0, encode_q4_k, encode_q6_k,
    encode_q8_0, encode_tq1_0, encode_tq2_0,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Bitwise equality (NaN payloads and signed zeros included).
fn same_array(a: &Array, b: &Array) -> bool {
    match (a, b) {
        (Array::F32(x), Array::F32(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (Array::F64(x), Array::F64(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (Array::Array(x), Array::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_array(p, q))
        }
        _ => a == b,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => same_array(x, y),
        _ => a == b,
    }
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-z.]{0,6}", Just(String::new())]
}

fn arb_array() -> impl Strategy<Value = Array> {
    let leaf = prop_oneof![
        vec(any::<u8>(), 0..6).prop_map(Array::U8),
        vec(any::<i8>(), 0..6).prop_map(Array::I8),
        vec(any::<u16>(), 0..6).prop_map(Array::U16),
        vec(any::<i16>(), 0..6).prop_map(Array::I16),
        vec(any::<u32>(), 0..6).prop_map(Array::U32),
        vec(any::<i32>(), 0..6).prop_map(Array::I32),
        vec(any::<u32>().prop_map(f32::from_bits), 0..6).prop_map(Array::F32),
        vec(any::<bool>(), 0..6).prop_map(Array::Bool),
        vec(arb_string(), 0..6).prop_map(Array::String),
        vec(any::<u64>(), 0..6).prop_map(Array::U64),
        vec(any::<i64>(), 0..6).prop_map(Array::I64),
        vec(any::<u64>().prop_map(f64::from_bits), 0..6).prop_map(Array::F64),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| vec(inner, 0..4).prop_map(Array::Array))
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))),
        any::<bool>().prop_map(Value::Bool),
        arb_string().prop_map(Value::String),
        arb_array().prop_map(Value::Array),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b))),
    ]
}

/// A tensor of a random supported type with a valid shape and random bytes of the right size.
fn arb_tensor() -> impl Strategy<Value = (TensorType, Vec<u64>, Vec<u8>)> {
    let kinds = prop_oneof![
        Just(TensorType::F32),
        Just(TensorType::F16),
        Just(TensorType::BF16),
        Just(TensorType::Q4_0),
        Just(TensorType::Q8_0),
        Just(TensorType::Q4_K),
        Just(TensorType::Q6_K),
        Just(TensorType::TQ1_0),
        Just(TensorType::TQ2_0),
        Just(TensorType::I2_S),
    ];
    (kinds, 1u64..3, vec(1u64..4, 0..3)).prop_flat_map(|(kind, row_blocks, outer)| {
        let mut dims = vec![row_blocks * kind.block_size()];
        dims.extend(outer);
        let n: u64 = dims.iter().product();
        let len = kind.n_bytes(n).unwrap() as usize;
        (Just(kind), Just(dims), vec(any::<u8>(), len))
    })
}

fn arb_codes(block: usize) -> impl Strategy<Value = Vec<i8>> {
    (1usize..4).prop_flat_map(move |k| vec(-1i8..=1, k * block))
}

/// A positive scale exact in f16 (normal or subnormal).
fn arb_f16_scale() -> impl Strategy<Value = f32> {
    (1u16..0x7c00).prop_map(|b| half::f16::from_bits(b).to_f32())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn metadata_of_every_type_round_trips(
        values in vec(arb_value(), 0..12),
        version in 2u32..=3,
        align_log in 0u32..9,
    ) {
        let mut w = GgufWriter::with_version(version).unwrap();
        w.set_alignment(1 << align_log).unwrap();
        for (i, v) in values.iter().enumerate() {
            w.add_metadata(format!("test.key{i}"), v.clone()).unwrap();
        }
        let bytes = w.to_bytes().unwrap();
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        prop_assert_eq!(f.version(), version);
        prop_assert_eq!(f.alignment(), 1u64 << align_log);
        let user: Vec<_> = f.metadata().iter().filter(|(k, _)| k != "general.alignment").collect();
        prop_assert_eq!(user.len(), values.len());
        for (i, ((k, got), want)) in user.iter().zip(&values).enumerate() {
            prop_assert_eq!(k, &format!("test.key{i}"));
            prop_assert!(same(got, want), "{:?} != {:?}", got, want);
            prop_assert!(same(f.get(k).unwrap(), want));
        }
        // Writing what was read reproduces the file byte for byte.
        let mut w2 = GgufWriter::with_version(version).unwrap();
        for (k, v) in f.metadata() {
            w2.add_metadata(k.clone(), v.clone()).unwrap();
        }
        prop_assert_eq!(w2.to_bytes().unwrap(), bytes);
    }

    #[test]
    fn tensors_of_every_type_round_trip(
        tensors in vec(arb_tensor(), 0..5),
        align_log in 0u32..8,
    ) {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "bitnet-b1.58").unwrap();
        w.set_alignment(1 << align_log).unwrap();
        for (i, (kind, dims, data)) in tensors.iter().enumerate() {
            // Half the tensors borrow their bytes, half hand them over.
            if i % 2 == 0 {
                w.add_tensor(format!("t{i}"), dims.clone(), kind.id(), data.as_slice()).unwrap();
            } else {
                w.add_tensor(format!("t{i}"), dims.clone(), kind.id(), data.clone()).unwrap();
            }
        }
        let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        prop_assert_eq!(f.tensors().len(), tensors.len());
        for (i, (kind, dims, data)) in tensors.iter().enumerate() {
            let t = f.tensor(&format!("t{i}")).unwrap();
            prop_assert_eq!(&t.dims, dims);
            prop_assert_eq!(t.kind, Some(*kind));
            prop_assert_eq!(t.type_id, kind.id());
            prop_assert_eq!(t.n_bytes, data.len() as u64);
            prop_assert_eq!(t.offset % (1u64 << align_log), 0);
            prop_assert_eq!(f.tensor_data(t).unwrap(), data.as_slice());
        }
    }

    #[test]
    fn tq1_0_tq2_0_pack_unpack(codes in arb_codes(256), scale in arb_f16_scale()) {
        let n = codes.len();
        for (kind, bytes) in [
            (TensorType::TQ1_0, encode_tq1_0(&codes, scale).unwrap()),
            (TensorType::TQ2_0, encode_tq2_0(&codes, scale).unwrap()),
        ] {
            prop_assert_eq!(bytes.len() as u64, kind.n_bytes(n as u64).unwrap());
            let t = decode_ternary(kind, &bytes, n).unwrap();
            prop_assert_eq!(&t.codes, &codes);
            let any = codes.iter().any(|&c| c != 0);
            prop_assert_eq!(t.scale, if any { scale } else { 0.0 });
            let values = decode_f32(kind, &bytes, n).unwrap();
            for (v, &c) in values.iter().zip(&codes) {
                prop_assert_eq!(*v, f32::from(c) * scale);
            }
        }
    }

    #[test]
    fn i2_s_pack_unpack(codes in arb_codes(128), scale_bits in 1u32..0x7f80_0000) {
        let scale = f32::from_bits(scale_bits);
        let n = codes.len();
        let bytes = encode_i2_s(&codes, scale).unwrap();
        prop_assert_eq!(bytes.len(), n / 4 + 32);
        let t = decode_ternary(TensorType::I2_S, &bytes, n).unwrap();
        prop_assert_eq!(&t.codes, &codes);
        prop_assert_eq!(t.scale, scale);
        let values = decode_f32(TensorType::I2_S, &bytes, n).unwrap();
        for (v, &c) in values.iter().zip(&codes) {
            prop_assert_eq!(v.to_bits(), (f32::from(c) * scale).to_bits());
        }
    }

    #[test]
    fn float_typed_ternary_recovers_codes_and_scale(
        codes in arb_codes(32),
        m in 8u32..16,
        e in -10i32..6,
    ) {
        prop_assume!(codes.iter().any(|&c| c != 0));
        // m/8 * 2^e has 4 significant bits: exact in f32, f16 and bf16.
        let scale = m as f32 / 8.0 * 2f32.powi(e);
        let w: Vec<f32> = codes.iter().map(|&c| f32::from(c) * scale).collect();
        for (kind, bytes) in [
            (TensorType::F32, encode_f32(&w)),
            (TensorType::F16, encode_f16(&w).unwrap()),
            (TensorType::BF16, encode_bf16(&w).unwrap()),
        ] {
            let t = decode_ternary(kind, &bytes, w.len()).unwrap();
            prop_assert_eq!(&t.codes, &codes);
            prop_assert_eq!(t.scale, scale);
        }
    }

    #[test]
    fn q8_0_round_trip(x in (1usize..4).prop_flat_map(|k| vec(-100.0f32..100.0, 32 * k))) {
        let bytes = encode_q8_0(&x).unwrap();
        let y = decode_f32(TensorType::Q8_0, &bytes, x.len()).unwrap();
        for (block, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            for (a, b) in xs.iter().zip(ys) {
                prop_assert!((a - b).abs() <= d * 0.5 + amax * 1e-3, "block {} {} vs {}", block, a, b);
            }
        }
        // Values decoded from Q8_0 re-encode to the same bytes.
        prop_assert_eq!(encode_q8_0(&y).unwrap(), bytes);
    }

    #[test]
    fn q4_0_round_trip(x in (1usize..4).prop_flat_map(|k| vec(-100.0f32..100.0, 32 * k))) {
        let bytes = encode_q4_0(&x).unwrap();
        let y = decode_f32(TensorType::Q4_0, &bytes, x.len()).unwrap();
        for (block, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 8.0;
            for (a, b) in xs.iter().zip(ys) {
                // Half a step, except near -max, which is clipped to 7 steps (level +8 does not
                // exist): up to one step off.
                let step = if a.abs() > 7.0 * d { 1.0 } else { 0.5 };
                let tol = d * step + amax * 1e-3;
                prop_assert!((a - b).abs() <= tol, "block {} {} vs {}", block, a, b);
            }
        }
        // Values decoded from Q4_0 re-encode to the same bytes.
        prop_assert_eq!(encode_q4_0(&y).unwrap(), bytes);
    }

    #[test]
    fn q6_k_reencoding_decoded_blocks_is_lossless(
        blocks in (1usize..3).prop_flat_map(|k| vec(any::<u8>(), 210 * k)),
        d_bits in vec(any::<u16>(), 2),
    ) {
        let mut bytes = blocks;
        let n_blocks = bytes.len() / 210;
        for (b, &d) in d_bits.iter().take(n_blocks).enumerate() {
            // Any finite f16 scale (NaN/inf would decode to non-finite values).
            let d = if d & 0x7c00 == 0x7c00 { d & 0x83ff } else { d };
            bytes[210 * b + 208..210 * b + 210].copy_from_slice(&d.to_le_bytes());
        }
        let n = n_blocks * 256;
        let v = decode_f32(TensorType::Q6_K, &bytes, n).unwrap();
        let again = decode_f32(TensorType::Q6_K, &encode_q6_k(&v).unwrap(), n).unwrap();
        for (i, (a, b)) in v.iter().zip(&again).enumerate() {
            // Equal as f32 values: non-zero values bit for bit, zeros possibly with either sign.
            prop_assert!(a == b, "element {}: {} vs {}", i, a, b);
            prop_assert!(*a == 0.0 || a.to_bits() == b.to_bits());
        }
    }

    #[test]
    fn q6_k_quantization_error_is_bounded(x in vec(-10.0f32..10.0, 256)) {
        let y = decode_f32(TensorType::Q6_K, &encode_q6_k(&x).unwrap(), 256).unwrap();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in x.iter().zip(&y) {
            prop_assert!((a - b).abs() <= amax / 24.0, "{} vs {} (amax {})", a, b, amax);
        }
        let mut row = vec![0.0f32; 128];
        let bytes = encode_q6_k(&x).unwrap();
        prop_assert!(decode_rows_f32(TensorType::Q6_K, &bytes, 128, 0, &mut row).is_err());
    }

    #[test]
    fn encoders_never_panic_on_arbitrary_floats(
        bits in vec(any::<u32>(), 256),
        small in vec(-3i32..3, 256),
        exp in -149i32..128,
    ) {
        // Raw bit patterns (NaN, inf, subnormals, huge) and a coarse grid at an arbitrary
        // exponent (exactly representable blocks drive the lossless Q6_K search).
        let raw: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let grid: Vec<f32> = small.iter().map(|&k| k as f32 * 2f32.powi(exp)).collect();
        for x in [&raw, &grid] {
            for bytes in [
                encode_q6_k(x),
                encode_q8_0(x),
                encode_q4_0(x),
                encode_q4_k(x),
                encode_f16(x),
                encode_bf16(x),
            ]
                .into_iter()
                .flatten()
            {
                prop_assert!(!bytes.is_empty());
            }
            if let Ok(b) = encode_q6_k(x) {
                let y = decode_f32(TensorType::Q6_K, &b, 256).unwrap();
                prop_assert!(y.iter().all(|v| v.is_finite()));
            }
            if let Ok(b) = encode_q4_k(x) {
                let y = decode_f32(TensorType::Q4_K, &b, 256).unwrap();
                prop_assert!(y.iter().all(|v| v.is_finite()));
            }
            let _ = bitnet_gguf::ternarize_f32(x);
        }
        // The grid is exactly representable when 2^exp is a normal f16: encoding is lossless.
        if (-14..=15).contains(&exp) {
            let y = decode_f32(TensorType::Q6_K, &encode_q6_k(&grid).unwrap(), 256).unwrap();
            prop_assert_eq!(y, grid);
        }
    }

    #[test]
    fn f16_and_bf16_bits_round_trip(bits in vec(any::<u16>(), 1..64)) {
        let finite: Vec<u16> = bits.into_iter().filter(|b| b & 0x7f80 != 0x7f80 && b & 0x7c00 != 0x7c00).collect();
        let raw: Vec<u8> = finite.iter().flat_map(|b| b.to_le_bytes()).collect();
        for kind in [TensorType::F16, TensorType::BF16] {
            let v = decode_f32(kind, &raw, finite.len()).unwrap();
            let enc = if kind == TensorType::F16 { encode_f16(&v) } else { encode_bf16(&v) };
            prop_assert_eq!(enc.unwrap(), raw.clone());
        }
    }
}

#[test]
fn file_round_trip_through_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let codes: Vec<i8> = (0..256 * 4).map(|i| (i % 3) as i8 - 1).collect();
    let i2s = encode_i2_s(&codes, 1.75).unwrap();
    let norm = encode_f32(&[1.0, 0.5, 0.25, 2.0]);
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "bitnet-b1.58")
        .unwrap();
    w.add_metadata("bitnet-b1.58.block_count", 30u32).unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        Array::String(vec!["<s>".into(), "Ġa".into()]),
    )
    .unwrap();
    w.add_tensor("blk.0.attn_q.weight", vec![256, 4], 36, i2s.as_slice())
        .unwrap();
    w.add_tensor("output_norm.weight", vec![4], 0, norm.clone())
        .unwrap();
    let written = w.write_to(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.file_size(), written);
    assert_eq!(f.architecture().unwrap(), "bitnet-b1.58");
    assert_eq!(f.get_u64("bitnet-b1.58.block_count").unwrap(), 30);
    assert_eq!(
        f.get_string_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "Ġa"]
    );
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.kind, Some(TensorType::I2_S));
    assert_eq!(f.tensor_data(q).unwrap(), i2s.as_slice());
    let t = f.decode_ternary(q).unwrap();
    assert_eq!((t.codes, t.scale), (codes, 1.75));
    let mut row = vec![0.0f32; 256];
    f.decode_rows_f32(q, 3, &mut row).unwrap();
    assert_eq!(row[0], f32::from(((3 * 256) % 3) as i8 - 1) * 1.75);
    let n = f.tensor("output_norm.weight").unwrap();
    assert_eq!(f.decode_f32(n).unwrap(), vec![1.0, 0.5, 0.25, 2.0]);
}

/// A file with upstream types only (gguf-py cannot parse type 36 at all). Set
/// BITNET_GGUF_SAMPLE_OUT=path to keep a copy: checked once with gguf-py 0.19's
/// `gguf.GGUFReader`, which lists every key with the right type and value, every tensor with the
/// right type, shape and bytes, and dequantizes them to the values our decoder gives.
#[test]
fn gguf_py_compatible_sample() {
    let x: Vec<f32> = (0..512)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let codes: Vec<i8> = (0..512).map(|i| ((i * 7) % 3) as i8 - 1).collect();
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.add_metadata("general.architecture", "bitnet").unwrap();
    w.add_metadata("t.u8", 7u8).unwrap();
    w.add_metadata("t.i16", -5i16).unwrap();
    w.add_metadata("t.f64", 0.25f64).unwrap();
    w.add_metadata("t.bool", false).unwrap();
    w.add_metadata("t.strs", Array::String(vec!["x".into(), "é".into()]))
        .unwrap();
    w.add_metadata("t.nested", Array::Array(vec![Array::U16(vec![1, 2])]))
        .unwrap();
    let tensors = [
        (TensorType::F32, encode_f32(&x)),
        (TensorType::F16, encode_f16(&x).unwrap()),
        (TensorType::BF16, encode_bf16(&x).unwrap()),
        (TensorType::Q4_0, encode_q4_0(&x).unwrap()),
        (TensorType::Q8_0, encode_q8_0(&x).unwrap()),
        (TensorType::Q6_K, encode_q6_k(&x).unwrap()),
        (TensorType::Q4_K, encode_q4_k(&x).unwrap()),
        (TensorType::TQ1_0, encode_tq1_0(&codes, 0.5).unwrap()),
        (TensorType::TQ2_0, encode_tq2_0(&codes, 0.5).unwrap()),
    ];
    for (kind, data) in &tensors {
        w.add_tensor(kind.name(), vec![256, 2], kind.id(), data.as_slice())
            .unwrap();
    }
    let bytes = w.to_bytes().unwrap();
    if let Some(out) = std::env::var_os("BITNET_GGUF_SAMPLE_OUT") {
        std::fs::write(out, &bytes).unwrap();
    }
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.get("general.alignment"), Some(&Value::U32(64)));
    for (kind, data) in &tensors {
        let t = f.tensor(kind.name()).unwrap();
        assert_eq!(f.tensor_data(t).unwrap(), data.as_slice());
    }
}

#[test]
fn writer_validates_on_add() {
    let mut w = GgufWriter::new();
    assert!(w.add_metadata("", 1u8).is_err());
    w.add_metadata("a", 1u8).unwrap();
    assert!(w.add_metadata("a", 2u8).is_err(), "duplicate key");
    assert!(
        w.add_metadata("general.alignment", 1u64).is_err(),
        "alignment must be u32"
    );
    assert!(
        w.add_metadata("general.alignment", 48u32).is_err(),
        "not a power of two"
    );
    assert!(w.add_metadata("general.architecture", 3u32).is_err());
    let mut deep = Array::U8(vec![1]);
    for _ in 0..8 {
        deep = Array::Array(vec![deep]);
    }
    assert!(w.add_metadata("deep", deep).is_err());
    assert!(w.set_alignment(0).is_err());
    assert!(GgufWriter::with_version(1).is_err());
    // I2_S is id 36 only once the architecture says bitnet.cpp.
    let i2s = encode_i2_s(&[0; 128], 1.0).unwrap();
    assert!(w.add_tensor("w", vec![128], 36, i2s.clone()).is_err());
    w.add_metadata("general.architecture", "bitnet-25").unwrap();
    w.add_tensor("w", vec![128], 36, i2s.clone()).unwrap();
    assert!(
        w.add_tensor("w", vec![128], 36, i2s.clone()).is_err(),
        "duplicate name"
    );
    assert!(
        w.add_tensor("x", vec![128], 36, vec![0u8; 10]).is_err(),
        "wrong size"
    );
    assert!(
        w.add_tensor("x", vec![100], 8, vec![0u8; 34]).is_err(),
        "partial Q8_0 block"
    );
    assert!(
        w.add_tensor("x", vec![1; 5], 0, vec![0u8; 4]).is_err(),
        "5 dims"
    );
    assert!(
        w.add_tensor("x", vec![u64::MAX, 2], 0, vec![]).is_err(),
        "overflow"
    );
    assert!(
        w.add_tensor("x".repeat(64), vec![1], 0, vec![0u8; 4])
            .is_err(),
        "name too long"
    );
    assert!(
        w.add_tensor("x", vec![1], 37, vec![0u8; 4]).is_err(),
        "I8_S unsupported"
    );
    w.add_tensor("x", vec![], 0, vec![0u8; 4]).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.tensor("x").unwrap().n_elements, 1);
}

/// Releasing a mapped tensor's pages (after its weights were repacked) never changes what it
/// reads back: the pages come back from the file.
#[test]
fn released_pages_read_back_unchanged() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "bitnet-b1.58")
        .unwrap();
    // f32 tensors of 3 pages + a bit and of a bit more than one page.
    let a: Vec<u8> = (0..4 * (3 * 1024 + 5))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let b: Vec<u8> = (0..4 * 1250).map(|i| (i * 13 % 241) as u8).collect();
    w.add_tensor(
        "a",
        vec![(a.len() / 4) as u64],
        TensorType::F32.id(),
        a.clone(),
    )
    .unwrap();
    w.add_tensor(
        "b",
        vec![(b.len() / 4) as u64],
        TensorType::F32.id(),
        b.clone(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let read = |n: &str| f.tensor_data(f.tensor(n).unwrap()).unwrap().to_vec();
    assert_eq!(read("a"), a);
    f.release_pages("a");
    f.release_pages("missing");
    assert_eq!(read("a"), a);
    assert_eq!(read("b"), b);
}

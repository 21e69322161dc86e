//! Hostile and broken files: every one must be refused with a clear error (never a panic), and
//! no header may make the reader allocate more than a small multiple of the file's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bitnet_gguf::{
    GgufError, GgufFile, GgufWriter, TensorType, encode_f32, encode_i2_s, encode_q4_0, encode_q4_k,
    encode_q8_0,
};
use proptest::prelude::*;

// ---- allocation tracking -------------------------------------------------------------------

/// Records the largest single allocation made by the current thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new_size)));
        // SAFETY: as for `alloc`/`dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Opens `bytes` (already owned by the caller) and returns the result and the largest single
/// allocation made while parsing.
fn open_tracked(bytes: Vec<u8>) -> (Result<GgufFile, GgufError>, usize) {
    LARGEST.with(|m| m.set(0));
    let r = GgufFile::from_bytes(bytes);
    (r, LARGEST.with(Cell::get))
}

// ---- raw file builder ----------------------------------------------------------------------

/// Builds GGUF bytes field by field, so tests can write what no valid writer would.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(tensors).u64(kvs);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(type_id).u64(offset)
    }
    fn align(&mut self, a: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(a) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

fn err_of(bytes: Vec<u8>) -> String {
    let len = bytes.len();
    // SHOW_ERRORS=1 cargo test ... -- --nocapture prints every message for review.
    if std::env::var_os("SHOW_ERRORS").is_some()
        && let Err(e) = GgufFile::from_bytes(bytes.clone())
    {
        eprintln!("{e}");
    }
    let (r, largest) = open_tracked(bytes);
    assert!(
        largest <= 8 * len + 4096,
        "allocated {largest} bytes for a {len}-byte file"
    );
    match r {
        Ok(_) => panic!("a broken file opened"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(bytes: Vec<u8>, needles: &[&str]) {
    let msg = err_of(bytes);
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}

/// A small valid file: bitnet.cpp architecture, an F32 norm, Q8_0, Q4_0 and Q4_K matrices and an
/// I2_S matrix
/// whose size is a multiple of the alignment (so every proper prefix of the data is invalid).
fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "bitnet-b1.58")
        .unwrap();
    w.add_metadata("bitnet-b1.58.block_count", 1u32).unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        bitnet_gguf::Array::String(vec!["a".into(), "b".into()]),
    )
    .unwrap();
    w.add_tensor("norm", vec![8], 0, encode_f32(&[1.0; 8]))
        .unwrap();
    let q8: Vec<f32> = (0..64).map(|i| i as f32 / 10.0).collect();
    w.add_tensor("q8", vec![32, 2], 8, encode_q8_0(&q8).unwrap())
        .unwrap();
    w.add_tensor("q4", vec![32, 2], 2, encode_q4_0(&q8).unwrap())
        .unwrap();
    let q4k: Vec<f32> = (0..256).map(|i| (i % 19) as f32 / 7.0 - 1.0).collect();
    w.add_tensor("q4k", vec![256, 1], 12, encode_q4_k(&q4k).unwrap())
        .unwrap();
    let codes: Vec<i8> = (0..384).map(|i| (i % 3) as i8 - 1).collect();
    w.add_tensor("w", vec![128, 3], 36, encode_i2_s(&codes, 1.5).unwrap())
        .unwrap();
    w.to_bytes().unwrap()
}

/// Decodes every tensor every way; must never panic.
fn exercise(f: &GgufFile) {
    for t in f.tensors() {
        let _ = f.tensor_region(t);
        let _ = f.decode_f32(t);
        let _ = f.decode_ternary(t);
        if t.row_len() > 0 && t.row_len() <= 4096 {
            let mut row = vec![0.0f32; t.row_len() as usize];
            let _ = f.decode_rows_f32(t, 0, &mut row);
            if let (Some(k), Ok(data)) = (t.kind, f.tensor_data(t))
                && bitnet_gguf::quants::supports_dot(k)
            {
                row.fill(0.5);
                let mut out = [0.0f32; 2];
                let _ = bitnet_gguf::quants::dot_rows_f32(k, data, row.len(), 0, &row, 1, &mut out);
            }
        }
    }
    let _ = f.architecture();
    for (k, _) in f.metadata() {
        let _ = f.get_u64(k);
        let _ = f.get_string_array(k);
    }
}

#[test]
fn the_allocation_tracker_works() {
    LARGEST.with(|m| m.set(0));
    let v = vec![0u8; 1 << 20];
    assert!(LARGEST.with(Cell::get) >= 1 << 20);
    drop(v);
    let file = valid_file();
    let len = file.len();
    let (r, largest) = open_tracked(file);
    assert!(r.is_ok());
    assert!(largest > 0 && largest <= 8 * len + 4096, "{largest}");
}

#[test]
fn the_base_file_is_valid() {
    let f = GgufFile::from_bytes(valid_file()).unwrap();
    assert_eq!(f.tensors().len(), 5);
    exercise(&f);
    let w = f.tensor("w").unwrap();
    assert_eq!(f.decode_ternary(w).unwrap().scale, 1.5);
}

#[test]
fn every_truncation_is_refused() {
    let full = valid_file();
    let f = GgufFile::from_bytes(full.clone()).unwrap();
    let last = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap();
    assert_eq!(
        last,
        full.len() as u64,
        "the last tensor must end the file for this test"
    );
    for len in 0..full.len() {
        let msg = err_of(full[..len].to_vec());
        assert!(!msg.is_empty());
    }
}

#[test]
fn bit_flips_in_the_header_never_panic() {
    let full = valid_file();
    let f = GgufFile::from_bytes(full.clone()).unwrap();
    let header = f.data_offset() as usize;
    for pos in 0..header {
        for bit in 0..8 {
            let mut b = full.clone();
            b[pos] ^= 1 << bit;
            let len = b.len();
            let (r, largest) = open_tracked(b);
            assert!(largest <= 8 * len + 4096, "byte {pos} bit {bit}: {largest}");
            if let Ok(f) = r {
                exercise(&f);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_corruption_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut b = valid_file();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if do_cut {
            let keep = cut.index(b.len());
            b.truncate(keep);
        }
        let len = b.len();
        let (r, largest) = open_tracked(b);
        prop_assert!(largest <= 8 * len + 4096);
        if let Ok(f) = r {
            exercise(&f);
        }
    }
}

#[test]
fn header_errors() {
    assert_err(vec![], &["truncated", "magic"]);
    assert_err(b"GGU".to_vec(), &["truncated"]);
    assert_err(b"GGML\x03\0\0\0".to_vec(), &["not a GGUF file"]);
    assert_err(Raw::header(1, 0, 0).done(), &["version 1", "v1"]);
    assert_err(Raw::header(0x0300_0000, 0, 0).done(), &["big-endian"]);
    assert_err(Raw::header(4, 0, 0).done(), &["version 4"]);
    assert_err(b"GGUF\x03\0\0\0\0\0".to_vec(), &["tensor count"]);
    // Counts no file of this size could hold fail before anything is allocated.
    assert_err(
        Raw::header(3, 0, 1 << 60).zeros(64).done(),
        &["metadata entry count"],
    );
    assert_err(
        Raw::header(3, u64::MAX, 0).zeros(64).done(),
        &["tensor count", "18446744073709551615"],
    );
    assert_err(Raw::header(3, 3, 3).zeros(80).done(), &["tensor count"]);
}

#[test]
fn metadata_errors() {
    // Key length u64::MAX.
    assert_err(
        Raw::header(3, 0, 1).u64(u64::MAX).zeros(16).done(),
        &["metadata key", "claims"],
    );
    // Value string length past the end.
    assert_err(
        Raw::header(3, 0, 1)
            .str("k")
            .u32(8)
            .u64(1 << 40)
            .zeros(8)
            .done(),
        &["\"k\"", "string value"],
    );
    // Array count u64::MAX of u32 / of strings.
    assert_err(
        Raw::header(3, 0, 1)
            .str("arr")
            .u32(9)
            .u32(4)
            .u64(u64::MAX)
            .zeros(8)
            .done(),
        &["\"arr\"", "array element count"],
    );
    assert_err(
        Raw::header(3, 0, 1)
            .str("arr")
            .u32(9)
            .u32(8)
            .u64(1 << 61)
            .zeros(8)
            .done(),
        &["\"arr\"", "array element count"],
    );
    // Unknown value type and unknown array element type.
    assert_err(
        Raw::header(3, 0, 1).str("k").u32(13).zeros(8).done(),
        &["\"k\"", "type id 13"],
    );
    assert_err(
        Raw::header(3, 0, 1).str("k").u32(9).u32(99).u64(0).done(),
        &["element type id 99"],
    );
    // Bool that is neither 0 nor 1.
    assert_err(
        Raw::header(3, 0, 1).str("b").u32(7).bytes(&[2]).done(),
        &["\"b\"", "bool"],
    );
    // Invalid UTF-8 in a key and in a value.
    assert_err(
        Raw::header(3, 0, 1)
            .u64(2)
            .bytes(&[0xff, 0xfe])
            .u32(0)
            .bytes(&[0])
            .done(),
        &["UTF-8"],
    );
    assert_err(
        Raw::header(3, 0, 1)
            .str("s")
            .u32(8)
            .u64(1)
            .bytes(&[0x80])
            .done(),
        &["\"s\"", "UTF-8"],
    );
    // Arrays nested deeper than the bound.
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..9 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    assert_err(r.done(), &["\"deep\"", "nested deeper"]);
    // Duplicate keys.
    assert_err(
        Raw::header(3, 0, 2).kv_u32("a", 1).kv_u32("a", 2).done(),
        &["\"a\"", "more than once"],
    );
    // Special keys with wrong types or values.
    assert_err(
        Raw::header(3, 0, 1)
            .kv_u32("general.architecture", 1)
            .done(),
        &["general.architecture", "expected string", "u32 1"],
    );
    assert_err(
        Raw::header(3, 0, 1).kv_str("general.alignment", "x").done(),
        &["general.alignment", "expected u32"],
    );
    for bad in [0u32, 3, 48] {
        assert_err(
            Raw::header(3, 0, 1).kv_u32("general.alignment", bad).done(),
            &["general.alignment", "power of two"],
        );
    }
}

/// A file with a bitnet.cpp architecture and the given tensor infos; `data` bytes follow the
/// aligned header.
fn with_tensors(arch: &str, infos: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let mut r = Raw::header(3, infos.len() as u64, 1);
    r.kv_str("general.architecture", arch);
    for &(name, dims, type_id, offset) in infos {
        r.tensor(name, dims, type_id, offset);
    }
    r.align(32).zeros(data).done()
}

#[test]
fn tensor_info_errors() {
    let a = "bitnet-b1.58";
    assert_err(
        with_tensors(a, &[("t", &[1, 1, 1, 1, 1], 0, 0)], 64),
        &["\"t\"", "5 dimensions"],
    );
    assert_err(
        with_tensors(a, &[("t", &[1 << 32, 1 << 32], 0, 0)], 64),
        &["\"t\"", "overflows"],
    );
    assert_err(
        with_tensors(a, &[("t", &[u64::MAX], 0, 0)], 64),
        &["\"t\"", "overflows"],
    );
    assert_err(
        with_tensors(a, &[("t", &[4], 0, 64)], 32),
        &["\"t\"", "past the end"],
    );
    assert_err(
        with_tensors(a, &[("t", &[4], 0, u64::MAX - 31)], 32),
        &["\"t\""],
    );
    assert_err(
        with_tensors(a, &[("t", &[16], 0, 0)], 32),
        &["\"t\"", "needs 64 bytes"],
    );
    assert_err(
        with_tensors(a, &[("t", &[4], 0, 8)], 64),
        &["\"t\"", "alignment"],
    );
    assert_err(
        with_tensors(a, &[("a", &[16], 0, 0), ("b", &[4], 0, 32)], 128),
        &["\"a\"", "\"b\"", "overlap"],
    );
    assert_err(
        with_tensors(a, &[("a", &[4], 0, 0), ("a", &[4], 0, 32)], 64),
        &["\"a\"", "more than once"],
    );
    assert_err(
        with_tensors(a, &[("q", &[48], 8, 0)], 64),
        &["\"q\"", "multiple of 32"],
    );
    assert_err(
        with_tensors(a, &[("i", &[64], 36, 0)], 64),
        &["\"i\"", "I2_S"],
    );
    // Tensor infos present but the data section itself is missing.
    let mut b = with_tensors(a, &[("t", &[4], 0, 0)], 0);
    b.truncate(b.len() - 1);
    let msg = err_of(b);
    assert!(
        msg.contains("truncated") || msg.contains("past the end"),
        "{msg}"
    );
}

#[test]
fn unknown_types_open_but_refuse_their_data() {
    // TL1 (38 in bitnet.cpp's table), Q5_K (13), and 36 under an upstream architecture.
    for (arch, id, label) in [
        ("bitnet-b1.58", 38u32, "TL1"),
        ("bitnet-25", 13, "Q5_K"),
        ("bitnet", 36, ""),
        ("llama", 999, ""),
    ] {
        let f = GgufFile::from_bytes(with_tensors(
            arch,
            &[("blk.0.ffn_up.weight", &[256, 2], id, 0)],
            64,
        ))
        .unwrap();
        let t = &f.tensors()[0];
        assert_eq!((t.kind, t.type_id, t.n_bytes), (None, id, 0));
        for msg in [
            f.tensor_data(t).unwrap_err().to_string(),
            f.decode_f32(t).unwrap_err().to_string(),
            f.decode_ternary(t).unwrap_err().to_string(),
        ] {
            assert!(msg.contains("blk.0.ffn_up.weight"), "{msg}");
            assert!(msg.contains(&format!("type id {id}")), "{msg}");
            assert!(msg.contains(label), "{msg}");
            assert!(msg.contains(arch), "{msg}");
        }
        assert_eq!(f.tensor_region(t).unwrap().len(), 64);
    }
}

#[test]
fn i2_s_with_a_bitnet_cpp_2024_size_is_refused_at_decode_time() {
    // 512 codes need 512/4 + 32 = 160 bytes; the next tensor starts at 256, as if the stored
    // tensor were larger (bitnet.cpp's Oct-2024 I2_S).
    let infos: &[(&str, &[u64], u32, u64)] = &[("w", &[128, 4], 36, 0), ("n", &[4], 0, 256)];
    let f = GgufFile::from_bytes(with_tensors("bitnet-b1.58", infos, 288)).unwrap();
    let w = f.tensor("w").unwrap();
    assert_eq!(w.n_bytes, 160);
    let msg = f.decode_ternary(w).unwrap_err().to_string();
    for needle in ["\"w\"", "n/4 + 32 = 160", "256 bytes", "2024"] {
        assert!(msg.contains(needle), "{msg}");
    }
    assert!(f.tensor_data(w).is_err());
    // The same tensor last in the file, followed by extra bytes, is refused too.
    let f = GgufFile::from_bytes(with_tensors(
        "bitnet-b1.58",
        &[("w", &[128, 4], 36, 0)],
        400,
    ))
    .unwrap();
    assert!(f.decode_ternary(&f.tensors()[0]).is_err());
    // Exactly n/4 + 32 (padded to the alignment) is accepted.
    let f = GgufFile::from_bytes(with_tensors(
        "bitnet-b1.58",
        &[("w", &[128, 4], 36, 0)],
        160,
    ))
    .unwrap();
    let err = f.decode_ternary(&f.tensors()[0]).unwrap_err().to_string();
    assert!(err.contains("scale"), "all-zero bytes have scale 0: {err}");
}

#[test]
fn vocab_only_files_and_getters() {
    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.ggml.model", "gpt2").unwrap();
    w.add_metadata(
        "tokenizer.ggml.token_type",
        bitnet_gguf::Array::I32(vec![1, 3]),
    )
    .unwrap();
    w.add_metadata("n", -4i32).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert!(f.tensors().is_empty());
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.opt_str("absent").unwrap(), None);
    assert_eq!(
        f.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        &[1, 3]
    );
    let msg = f.get_u64("absent").unwrap_err().to_string();
    assert!(
        msg.contains("\"absent\"") && msg.contains("missing"),
        "{msg}"
    );
    let msg = f.get_u64("n").unwrap_err().to_string();
    assert!(
        msg.contains("\"n\"") && msg.contains("non-negative") && msg.contains("i32 -4"),
        "{msg}"
    );
    let msg = f
        .opt_string_array("tokenizer.ggml.model")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("array of string") && msg.contains("string"),
        "{msg}"
    );
    assert_eq!(f.get_i64("n").unwrap(), -4);
    assert!(f.architecture().is_err());
    assert_eq!(f.alignment(), 32);
    // A tensor info from another file is not served.
    let other = GgufFile::from_bytes(valid_file()).unwrap();
    let t = other.tensor("norm").unwrap();
    assert!(matches!(
        f.tensor_data(t),
        Err(GgufError::MissingTensor { .. })
    ));
}

#[test]
fn opening_missing_files_names_the_path() {
    let msg = GgufFile::open("/nonexistent/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/nonexistent/model.gguf"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(GgufFile::open(&empty).is_err());
    let _ = TensorType::F32;
}

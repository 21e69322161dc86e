//! The 16- and 8-bit KV caches on the fixture models: what they store is exactly what their
//! type defines, the logits stay close to the f32 cache's, and their sizes are what the server's
//! budget is told.

use std::sync::Arc;

use bitnet_model::{KvCache, KvType, KvView, Logits, Model, Scratch, quantize_q8};
use half::f16;

mod support;
use support::*;

const MODELS: [(&str, &str); 5] = [
    ("tied-gqa2", "model-i2_s.gguf"),
    ("untied-gqa4", "model-tq2_0.gguf"),
    ("odd-mha", "model-f32.gguf"),
    ("hd128", "model-i2_s.gguf"),
    ("silu-bitnet", "model-tq2_0.gguf"),
];

fn load(name: &str, format: &str, kv: KvType) -> Model {
    let file = bitnet_gguf::GgufFile::open(fixtures().join(name).join(format)).unwrap();
    bitnet_model::load_gguf(Arc::new(file), &bitnet_core::scalar::ScalarKernel)
        .unwrap()
        .with_kv_type(kv)
}

/// Every token's logits in one pass, and the cache it leaves.
fn run(model: &Model, tokens: &[u32]) -> (Vec<f32>, KvCache) {
    let mut cache = model.new_cache(tokens.len());
    let mut logits = Vec::new();
    model
        .forward(
            tokens,
            &mut cache,
            Logits::All,
            &mut logits,
            &mut Scratch::default(),
            None,
        )
        .unwrap();
    (logits, cache)
}

fn f32_view<'a>(v: KvView<'a>) -> &'a [f32] {
    match v {
        KvView::F32(x) => x,
        _ => panic!("not an f32 cache"),
    }
}

/// Layer 0 sees the same inputs whatever the cache type, so its stored keys and values must be
/// exactly the f32 cache's, rounded by the type's own rule.
#[test]
fn stored_values_are_the_f32_values_rounded_by_each_types_rule() {
    for (name, format) in MODELS {
        let r = Reference::load(name);
        let (_, exact) = run(&load(name, format, KvType::F32), &r.tokens);
        let hd = load(name, format, KvType::F32).config().head_dim;
        let (k32, v32) = exact.layer_view(0);
        let (k32, v32) = (f32_view(k32), f32_view(v32));

        let (_, half) = run(&load(name, format, KvType::F16), &r.tokens);
        for (got, want) in [half.layer_view(0).0, half.layer_view(0).1]
            .into_iter()
            .zip([k32, v32])
        {
            let KvView::F16(got) = got else {
                panic!("{name}: not an f16 cache")
            };
            let want: Vec<f16> = want.iter().map(|&x| f16::from_f32(x)).collect();
            assert_eq!(got, &want[..], "{name}: f16 layer 0");
        }

        let (_, q8) = run(&load(name, format, KvType::Q8), &r.tokens);
        for (got, want) in [q8.layer_view(0).0, q8.layer_view(0).1]
            .into_iter()
            .zip([k32, v32])
        {
            let KvView::Q8 { codes, scales } = got else {
                panic!("{name}: not a q8 cache")
            };
            assert_eq!(scales.len(), want.len() / hd, "{name}");
            for (i, x) in want.chunks_exact(hd).enumerate() {
                // The definition, written out plainly.
                let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let scale = absmax / 127.0;
                let want_codes: Vec<i8> = x
                    .iter()
                    .map(|&v| {
                        if scale == 0.0 {
                            0
                        } else {
                            (v / scale).round_ties_even() as i8
                        }
                    })
                    .collect();
                assert_eq!(scales[i], scale, "{name}: q8 scale {i}");
                assert_eq!(
                    &codes[i * hd..(i + 1) * hd],
                    &want_codes[..],
                    "{name}: q8 codes {i}"
                );
                let mut c = vec![0i8; hd];
                assert_eq!(quantize_q8(x, &mut c), scale);
            }
        }
    }
}

/// Layer 0's attention on the fixtures, seen through the int8 codes of the `o` projection's
/// input (`[-127, 127]`): the queries, keys and values are the same whatever the cache, so only
/// the cache's rounding moves them. f16 moves under 2% of the codes, by one; q8, whose error
/// is relative to each head vector's largest value while these random models attend almost
/// evenly (outputs much smaller than the values they mix), moves up to 30%, by at most 4
/// (measured). Later layers, and so the logits, amplify such moves on these random-weight
/// models; the trained model's logits are bounded below.
#[test]
fn layer0_attention_moves_o_input_codes_little() {
    for (name, format) in MODELS {
        let r = Reference::load(name);
        let codes = |kv| {
            let mut cap = Capture::default();
            teacher_forced(&load(name, format, kv), &r, Some(&mut cap));
            let (_, c, _) = cap
                .codes
                .into_iter()
                .find(|(n, _, _)| n == "layers.0.o_in")
                .unwrap();
            c
        };
        let exact = codes(KvType::F32);
        for kv in [KvType::F16, KvType::Q8] {
            let got = codes(kv);
            let flips = got.iter().zip(&exact).filter(|(a, b)| a != b).count();
            let worst = got
                .iter()
                .zip(&exact)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .max()
                .unwrap();
            eprintln!(
                "{name}: {kv}: {flips} of {} codes moved (by <= {worst})",
                got.len()
            );
            let (most, share) = if kv == KvType::F16 {
                (1, 0.02)
            } else {
                (6, 0.4)
            };
            assert!(worst <= most, "{name}: {kv} moved a code by {worst}");
            assert!(
                (flips as f64) < share * got.len() as f64,
                "{name}: {kv} moved {flips} codes"
            );
        }
    }
}

/// The bundled model, trained on Shakespeare (its logits, unlike the random fixtures', do not
/// amplify every rounding change): 200 positions of teacher-forced logits through the 16- and
/// 8-bit caches stay within about 3x the measured worst case of the f32 cache's (f16: 0.03,
/// q8: 0.08, on logits of about 20) and pick the same top token almost everywhere.
#[test]
fn trained_model_logits_stay_close_to_the_f32_cache() {
    let path = fixtures().join("../../models/default/model.gguf");
    let file = Arc::new(bitnet_gguf::GgufFile::open(path).unwrap());
    let kernel = bitnet_cpu::default_kernel().unwrap();
    let model = |kv| {
        bitnet_model::load_gguf(file.clone(), kernel.as_ref())
            .unwrap()
            .with_kv_type(kv)
    };
    let v = model(KvType::F32).config().vocab_size;
    let tokens: Vec<u32> = (0..200).map(|i| ((i * 7919 + 13) % v) as u32).collect();
    let (exact, _) = run(&model(KvType::F32), &tokens);
    for (kv, bound) in [(KvType::F16, 0.1), (KvType::Q8, 0.25)] {
        let (got, _) = run(&model(kv), &tokens);
        let d = max_diff(&got, &exact);
        let agree = got
            .chunks_exact(v)
            .zip(exact.chunks_exact(v))
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        eprintln!("trained model, {kv} cache: logits within {d:.3} of f32, top-1 {agree}/200");
        assert!(d < bound, "{kv}: logits differ from the f32 cache's by {d}");
        assert!(agree >= 195, "{kv}: top-1 agrees on {agree} of 200");
    }
}

/// Greedy decoding through the f16 cache, one token at a time, keeps the reference's tokens on
/// the fixtures whose top-2 margins allow it. (tied-gqa2 leaves them at step 9 of 12: its
/// random weights amplify the f16 rounding through flipped int8 codes, see above.)
#[test]
fn f16_cache_decodes_the_reference_tokens() {
    for (name, format) in MODELS.into_iter().filter(|(n, _)| *n != "tied-gqa2") {
        let r = Reference::load(name);
        let model = load(name, format, KvType::F16);
        let mut cache = model.new_cache(r.tokens.len() + 1);
        let mut scratch = Scratch::default();
        let mut logits = Vec::new();
        let prompt = &r.tokens[..r.prompt_len];
        model
            .forward(
                prompt,
                &mut cache,
                Logits::Last,
                &mut logits,
                &mut scratch,
                None,
            )
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..r.greedy.len() {
            let t = argmax(&logits);
            got.push(t);
            model
                .forward(
                    &[t],
                    &mut cache,
                    Logits::Last,
                    &mut logits,
                    &mut scratch,
                    None,
                )
                .unwrap();
        }
        assert_eq!(got, r.greedy, "{name}: f16 greedy tokens");
    }
}

#[test]
fn bytes_are_what_each_type_stores() {
    let (name, format) = MODELS[1];
    for kv in KvType::ALL {
        let model = load(name, format, kv);
        assert_eq!(model.kv_type(), kv);
        let c = model.config().clone();
        let per_vector = match kv {
            KvType::F32 => 4 * c.head_dim,
            KvType::F16 => 2 * c.head_dim,
            KvType::Q8 => c.head_dim + 4,
        };
        let per_pos = 2 * c.n_layers * c.n_kv_heads * per_vector;
        assert_eq!(model.kv_bytes_per_position(), per_pos, "{kv}");
        let (_, mut cache) = run(&model, &[1, 2, 3, 4, 5]);
        assert_eq!(cache.kv_type(), kv);
        assert_eq!(cache.bytes(), 5 * per_pos, "{kv}");
        cache.truncate(2);
        assert_eq!(cache.bytes(), 2 * per_pos, "{kv} after truncate");
    }
    // f32 is twice f16; q8 a little over half of f16.
    let b = |kv| load(name, format, kv).kv_bytes_per_position();
    assert_eq!(b(KvType::F32), 2 * b(KvType::F16));
    assert!(b(KvType::Q8) < b(KvType::F16) * 2 / 3);
}

//! The GPU forward against the reference fixtures (transformers' BitNetForCausalLM): logits within
//! 1e-3, identical int8 codes at every BitLinear input, identical greedy tokens, for every
//! fixture model and file format, with the f32 KV cache.
//!
//! The f16 KV cache (the default on GPUs) rounds keys and values: on the fixtures, whose random
//! weights give activations far larger than a trained model's, that alone moves logits by up to
//! ~2 (the CPU path with its cache rounded to f16 moves them by 0.50-1.68, measured; the GPU's
//! other summation order gave up to 2.14), so there it only has to stay within 3.0; on the bundled trained model it must match the f32
//! cache to 5e-2 and give the same greedy tokens. Needs a GPU (see conformance.rs for the skip
//! rule).

use std::sync::Arc;

use bitnet_cuda::{CudaModel, CudaOptions, HeadType, KvType};
use bitnet_model::{Model, WeightSource};

#[path = "../../bitnet-model/tests/support/mod.rs"]
mod support;
use support::*;

fn have_gpu() -> bool {
    match bitnet_cuda::device_count() {
        Ok(n) if n > 0 => true,
        r => {
            let why = r.map_or_else(|e| e.to_string(), |_| "no CUDA device".into());
            if std::env::var("BITNET_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("BITNET_REQUIRE_GPU=1 but: {why}");
            }
            eprintln!("SKIPPED (no GPU): {why}");
            false
        }
    }
}

fn with_source(model: &str, format: &str, f: &mut dyn FnMut(&dyn WeightSource)) {
    let path = fixtures().join(model).join(format);
    if format.ends_with(".gguf") {
        let file = bitnet_gguf::GgufFile::open(&path).unwrap();
        f(&bitnet_model::GgufSource::new(Arc::new(file)).unwrap())
    } else {
        let hf = bitnet_hf::HfModel::open(&path).unwrap();
        f(&bitnet_model::HfSource::new(&hf).unwrap())
    }
}

fn on_gpu(src: &dyn WeightSource, kv: KvType, head: HeadType) -> Model {
    let opts = CudaOptions {
        kv,
        head,
        max_context: 512,
        ..Default::default()
    };
    let gpu = CudaModel::load(src, opts).unwrap();
    Model::on_device(
        src.config().clone(),
        src.embedding().unwrap(),
        Box::new(gpu),
    )
    .unwrap()
}

fn check_model(name: &str) {
    if !have_gpu() {
        return;
    }
    let r = Reference::load(name);
    let formats = formats(name);
    for format in &formats {
        with_source(name, format, &mut |src| {
            check_source(src, &r, &format!("{name}/{format}"))
        });
    }
}

fn check_source(src: &dyn WeightSource, r: &Reference, what: &str) {
    {
        let model = on_gpu(src, KvType::F32, HeadType::Native);
        let what = format!("{what} [{}]", model.kernel_name());
        let tol = Tolerance {
            logits: 1e-3,
            hidden: 1e-3,
        };
        check_teacher_forced(&model, r, &what, tol);
        check_greedy(&model, r, &what, tol);
        let half = on_gpu(src, KvType::F16, HeadType::Native);
        let loose = Tolerance {
            logits: 3.0,
            hidden: 3.0,
        };
        check_teacher_forced_logits(&half, r, &format!("{what} f16 KV"), loose);
    }
}

#[test]
fn tied_gqa2() {
    check_model("tied-gqa2");
}

#[test]
fn untied_gqa4() {
    check_model("untied-gqa4");
}

#[test]
fn odd_mha() {
    check_model("odd-mha");
}

#[test]
fn hd128() {
    check_model("hd128");
}

#[test]
fn silu_bitnet() {
    check_model("silu-bitnet");
}

/// Teacher-forced logits only (the f16 cache moves int8 codes at rounding edges).
fn check_teacher_forced_logits(model: &Model, r: &Reference, what: &str, tol: Tolerance) {
    let d = max_diff(&teacher_forced(model, r, None), &r.logits);
    assert!(d < tol.logits, "{what}: logits differ by {d}");
}

/// The bundled trained model.
fn default_model() -> bitnet_model::GgufSource {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.gguf");
    let file = Arc::new(bitnet_gguf::GgufFile::open(&path).unwrap());
    bitnet_model::GgufSource::new(file).unwrap()
}

/// A 40-token prompt, then `steps` greedy decode steps: every step's logits and token.
fn greedy_steps(model: &Model, steps: usize) -> (Vec<f32>, Vec<u32>) {
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 500).collect();
    greedy_after(model, &prompt, 200, steps)
}

/// `prompt` into a fresh cache of `capacity` positions, then `steps` greedy decode steps:
/// the logits before each chosen token, and the tokens.
fn greedy_after(
    model: &Model,
    prompt: &[u32],
    capacity: usize,
    steps: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut cache = model.new_cache(capacity);
    let mut scratch = bitnet_model::Scratch::default();
    let mut logits = Vec::new();
    let (mut all, mut toks) = (Vec::new(), Vec::new());
    let last = bitnet_model::Logits::Last;
    model
        .forward(prompt, &mut cache, last, &mut logits, &mut scratch, None)
        .unwrap();
    for _ in 0..steps {
        let t = argmax(&logits);
        all.extend_from_slice(&logits);
        toks.push(t);
        model
            .forward(&[t], &mut cache, last, &mut logits, &mut scratch, None)
            .unwrap();
    }
    (all, toks)
}

#[test]
fn f16_kv_matches_f32_kv_on_the_trained_default_model() {
    if !have_gpu() {
        return;
    }
    let src = default_model();
    let (l32, t32) = greedy_steps(&on_gpu(&src, KvType::F32, HeadType::Native), 32);
    let (l16, t16) = greedy_steps(&on_gpu(&src, KvType::F16, HeadType::Native), 32);
    assert_eq!(t16, t32, "greedy tokens with the f16 cache");
    let d = max_diff(&l16, &l32);
    assert!(d < 5e-2, "f16 cache moves logits by {d}");
    eprintln!("f16 vs f32 KV on the default model: max logit difference {d}");
}

/// The q8 cache on the GPU holds what the CPU's q8 cache holds (codes rounded the same way, one
/// scale per position and head): over a 40-token prompt and 32 greedy steps of the trained
/// default model (one kernel per operation; the prompt through `rope_kv_q8` and the vector
/// attention, each step's own key and value quantized by the attention kernel) the same greedy
/// tokens as the CPU with `--kv q8`, logits within 5e-2 (a key element on a rounding edge may
/// take the neighbouring code on one side: the two compute it in different f32 orders), and
/// the same tokens as the GPU's f32 cache.
#[test]
fn q8_kv_matches_the_cpu_q8_kv_on_the_trained_default_model() {
    if !have_gpu() {
        return;
    }
    let src = default_model();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.gguf");
    let file = Arc::new(bitnet_gguf::GgufFile::open(&path).unwrap());
    let cpu = bitnet_model::load_gguf(file, &bitnet_core::scalar::ScalarKernel)
        .unwrap()
        .with_kv_type(bitnet_model::KvType::Q8);
    let (lc, tc) = greedy_steps(&cpu, 32);
    let (lq, tq) = greedy_steps(&on_gpu(&src, KvType::Q8, HeadType::Native), 32);
    let (_, t32) = greedy_steps(&on_gpu(&src, KvType::F32, HeadType::Native), 32);
    let d = max_diff(&lq, &lc);
    eprintln!("q8 KV, GPU vs CPU on the default model: max logit difference {d}");
    assert_eq!(tq, tc, "greedy tokens: GPU q8 cache against the CPU's");
    assert!(d < 5e-2, "GPU and CPU q8 caches: logits differ by {d}");
    assert_eq!(tq, t32, "greedy tokens: q8 cache against f32 on the GPU");
}

/// The persistent decode step (every layer in one cooperative launch) computes exactly what one
/// kernel per operation computes: same logits, bit for bit, over 48 greedy steps of the trained
/// default model (context past one attention chunk, so chunk merging runs too).
#[test]
fn persistent_decode_step_equals_one_kernel_per_operation() {
    if !have_gpu() {
        return;
    }
    let src = default_model();
    let run = |persistent: bool| {
        let opts = CudaOptions {
            max_context: 512,
            ..Default::default()
        };
        let gpu = CudaModel::load(&src, opts).unwrap();
        gpu.set_persistent_decode(persistent).unwrap();
        assert_eq!(
            gpu.persistent_decode(),
            persistent,
            "persistent step unavailable"
        );
        let model = Model::on_device(
            src.config().clone(),
            src.embedding().unwrap(),
            Box::new(gpu),
        )
        .unwrap();
        greedy_steps(&model, 48)
    };
    let (a, ta) = run(true);
    let (b, tb) = run(false);
    assert_eq!(ta, tb, "greedy tokens");
    let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "logits differ by up to {}", max_diff(&a, &b));
}

/// Candidates chosen on the GPU (`forward_batch_top_k`) are exactly the host's top-k of the
/// logits the same GPU forward returns, for a batch of three sequences over several steps.
#[test]
fn top_k_on_the_gpu_equals_the_host_selection_of_its_logits() {
    if !have_gpu() {
        return;
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/model.gguf");
    let file = Arc::new(bitnet_gguf::GgufFile::open(&path).unwrap());
    let src = bitnet_model::GgufSource::new(file).unwrap();
    let model = on_gpu(&src, KvType::F16, HeadType::Native);
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|s| (0..5 + 4 * s).map(|i| (i * 31 + 7 * s + 3) % 400).collect())
        .collect();
    let mut caches_a: Vec<_> = (0..3).map(|_| model.new_cache(64)).collect();
    let mut caches_b: Vec<_> = (0..3).map(|_| model.new_cache(64)).collect();
    let (mut sa, mut sb) = (
        bitnet_model::Scratch::default(),
        bitnet_model::Scratch::default(),
    );
    let mut feed: Vec<Vec<u32>> = prompts.clone();
    for step in 0..4 {
        let k = [1usize, 40, 256, 3][step];
        let mut logits = Vec::new();
        let mut ea: Vec<_> = caches_a
            .iter_mut()
            .zip(&feed)
            .map(|(c, t)| bitnet_model::BatchEntry {
                tokens: t,
                cache: c,
                logits: bitnet_model::Logits::Last,
            })
            .collect();
        model
            .forward_batch(&mut ea, &mut logits, &mut sa, None)
            .unwrap();
        drop(ea);
        let mut eb: Vec<_> = caches_b
            .iter_mut()
            .zip(&feed)
            .map(|(c, t)| bitnet_model::BatchEntry {
                tokens: t,
                cache: c,
                logits: bitnet_model::Logits::Last,
            })
            .collect();
        let mut got = Vec::new();
        model
            .forward_batch_top_k(&mut eb, k, &mut got, &mut sb)
            .unwrap();
        drop(eb);
        let mut want = Vec::new();
        for (r, row) in logits.chunks_exact(vocab).enumerate() {
            bitnet_core::ops::top_k(row, k, &mut want);
            let g: Vec<_> = got[r * k..(r + 1) * k]
                .iter()
                .map(|c| (c.0, c.1.to_bits()))
                .collect();
            let w: Vec<_> = want.iter().map(|c| (c.0, c.1.to_bits())).collect();
            assert_eq!(g, w, "step {step} row {r} k {k}");
        }
        feed = (0..3).map(|r| vec![got[r * k].0]).collect();
    }
}

/// Batched decode of 40 sequences (the tensor-core head from 9 rows, attention in 128-thread
/// blocks from 32 rows, the tensor-core GEMM) gives each sequence the greedy tokens and the
/// logits it gets decoded alone (dp4a GEMV, CUDA-core head, 256-thread attention).
///
/// The two paths sum attention in different f32 orders, so an activation that sits on a rounding
/// edge can get the neighbouring int8 code (as against the reference: `norm_quant_matches_the_cpu`).
/// Measured on an H200 (2026-11-28): most steps agree within ~1e-5; three of 480 sequence-steps
/// moved by 0.0018-0.0059, each time from one step on (the flip's key and value stay in the
/// cache). So: the same greedy tokens everywhere, every step within 2e-2, and at least 95% of
/// the steps within 1e-4 (a wrong mask, position or row would break all three by far).
#[test]
fn batched_decode_of_40_sequences_matches_each_alone() {
    if !have_gpu() {
        return;
    }
    let src = default_model();
    for kv in [KvType::F32, KvType::F16, KvType::Q8] {
        let steps = batched_vs_alone(&src, kv, 40);
        check_batched(kv, &steps);
    }
}

/// The same with 100 sequences: decode steps of more than 48 rows run in parts on several
/// streams at once (`LANE_SPLIT_ROWS` in model.rs): here two of 50 rows, and the first pass (every
/// prompt, ~600 rows in passes of 256) four.
#[test]
fn batched_decode_of_100_sequences_in_two_lanes_matches_each_alone() {
    if !have_gpu() {
        return;
    }
    let src = default_model();
    let steps = batched_vs_alone(&src, KvType::F16, 100);
    check_batched(KvType::F16, &steps);
}

/// Every step's greedy token the same, within 2e-2, and 95% within 1e-4. With the q8 cache a key
/// or value element whose f32 value the two paths compute in another order can take the
/// neighbouring code (1/254 of its head vector's largest magnitude), and the code stays in the
/// cache for every later step: there (H200, 2026-11-30) 140 of the 240 steps stayed within
/// 1e-4 and the others moved by up to 1.3e-2, from a sequence's first differing step on, so the
/// q8 cache must give the same tokens, stay within 5e-2 (the GPU's q8 cache against the CPU's:
/// 1.6e-2), and keep 40% of the steps within 1e-4.
fn check_batched(kv: KvType, steps: &[Step]) {
    let report: Vec<String> = steps
        .iter()
        .filter(|s| !s.same_token || s.diff > 1e-4)
        .map(|s| format!("{s:?}"))
        .collect();
    let report = format!("{kv:?} cache, steps beyond 1e-4:\n{}", report.join("\n"));
    let close = steps.iter().filter(|s| s.diff <= 1e-4).count();
    let (bound, share) = if kv == KvType::Q8 {
        (5e-2, 40)
    } else {
        (2e-2, 95)
    };
    assert!(steps.iter().all(|s| s.same_token), "{report}");
    assert!(steps.iter().all(|s| s.diff < bound), "{report}");
    assert!(close * 100 >= steps.len() * share, "{report}");
    eprintln!("{kv:?} cache: {close} of {} steps within 1e-4", steps.len());
}

/// One decode step of one sequence, alone against together.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug in the failure report
struct Step {
    sequence: usize,
    step: usize,
    same_token: bool,
    diff: f32,
}

/// Decodes `n` prompts alone and together on `kv`: every sequence's every step compared.
fn batched_vs_alone(src: &dyn WeightSource, kv: KvType, n: usize) -> Vec<Step> {
    let model = on_gpu(src, kv, HeadType::Native);
    let vocab = model.config().vocab_size;
    let steps = 6usize;
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|s| {
            (0..3 + s % 7)
                .map(|i| ((i * 37 + s * 11 + 5) % 500) as u32)
                .collect()
        })
        .collect();
    let last = bitnet_model::Logits::Last;
    // Alone: prompt, then greedy steps; the logits before each token.
    let alone: Vec<(Vec<f32>, Vec<u32>)> = prompts
        .iter()
        .map(|p| greedy_after(&model, p, 64, steps))
        .collect();
    let mut scratch = bitnet_model::Scratch::default();
    // Together: every prompt in one batched pass, then batched greedy steps.
    let mut caches: Vec<_> = (0..n).map(|_| model.new_cache(64)).collect();
    let mut feed = prompts.clone();
    let mut together: Vec<(Vec<f32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); n];
    for _ in 0..steps {
        let mut logits = Vec::new();
        let mut entries: Vec<_> = caches
            .iter_mut()
            .zip(&feed)
            .map(|(cache, tokens)| bitnet_model::BatchEntry {
                tokens,
                cache,
                logits: last,
            })
            .collect();
        model
            .forward_batch(&mut entries, &mut logits, &mut scratch, None)
            .unwrap();
        drop(entries);
        for (s, row) in logits.chunks_exact(vocab).enumerate() {
            let t = argmax(row);
            together[s].0.extend_from_slice(row);
            together[s].1.push(t);
            feed[s] = vec![t];
        }
    }
    // Every sequence's report first (step by step), then the verdict.
    let mut out = Vec::new();
    for (s, ((la, ta), (lb, tb))) in alone.iter().zip(&together).enumerate() {
        let rows = la.chunks_exact(vocab).zip(lb.chunks_exact(vocab));
        for (step, (a, b)) in rows.enumerate() {
            out.push(Step {
                sequence: s,
                step,
                same_token: ta[step] == tb[step],
                diff: max_diff(a, b),
            });
        }
    }
    out
}

/// A cache that outgrew its storage (the server's prompt cache handing a finished request's
/// cache, cut back to the shared prefix, to a longer request): `Model::resize_cache` moves it to
/// larger storage with its positions copied, and the sequence goes on bit for bit as in a cache
/// that was large enough from the start and ran the same passes, for every KV type (q8 rows
/// carry their scales).
#[test]
fn a_cache_moved_to_larger_storage_goes_on_bit_for_bit() {
    if !have_gpu() {
        return;
    }
    let src = default_model();
    for kv in [KvType::F32, KvType::F16, KvType::Q8] {
        let model = on_gpu(&src, kv, HeadType::Native);
        let prompt: Vec<u32> = (0..30).map(|i| (i * 41 + 3) % 500).collect();
        let more: Vec<u32> = (0..12).map(|i| (i * 13 + 7) % 500).collect();
        let keep = prompt.len() - 5;
        let rest: Vec<u32> = prompt[keep..].iter().chain(&more).copied().collect();
        let run = |capacity: usize, grow: bool| {
            let last = bitnet_model::Logits::Last;
            let mut scratch = bitnet_model::Scratch::default();
            let mut logits = Vec::new();
            let mut cache = model.new_cache(capacity);
            model
                .forward(&prompt, &mut cache, last, &mut logits, &mut scratch, None)
                .unwrap();
            cache.truncate(keep);
            if grow {
                model.resize_cache(&mut cache, 64).unwrap();
                assert_eq!((cache.len(), cache.capacity()), (keep, 64));
            }
            model
                .forward(&rest, &mut cache, last, &mut logits, &mut scratch, None)
                .unwrap();
            logits
        };
        assert_eq!(
            run(prompt.len(), true),
            run(64, false),
            "{kv:?}: logits after the move differ"
        );
    }
}

/// Greedy decode steps launched ahead of their calls (`Model::forward_batch_greedy_ahead`: each
/// step's successor launched before its tokens are back, fed them on the device) give every
/// sequence the tokens that steps launched one at a time give, through what breaks the chain: a
/// sequence leaving, a new one joining with its prompt, a call for logits, a call that does not
/// ask for a successor, a cache that fills up; for 3, 40 (one pass; the head choosing the
/// tokens itself) and 100 sequences (two lanes), the f16 and q8 caches, with the f16 and int8
/// heads.
#[test]
fn greedy_steps_launched_ahead_equal_steps_waited_for() {
    if !have_gpu() {
        return;
    }
    let src = default_model();
    for (n, kv, head) in [
        (3, KvType::F16, HeadType::Native),
        (40, KvType::Q8, HeadType::Int8),
        (100, KvType::F16, HeadType::Native),
        (100, KvType::Q8, HeadType::Int8),
    ] {
        let run = |ahead: bool| {
            let opts = CudaOptions {
                kv,
                head,
                max_context: 512,
                ..Default::default()
            };
            let gpu = CudaModel::load(&src, opts).unwrap();
            gpu.set_decode_ahead(ahead);
            assert_eq!(gpu.decode_ahead(), ahead);
            let model = Model::on_device(
                src.config().clone(),
                src.embedding().unwrap(),
                Box::new(gpu),
            )
            .unwrap();
            scripted_decode(&model, n)
        };
        let (a, b) = (run(true), run(false));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                x, y,
                "{n} sequences, {kv:?} cache, {head:?} head: (step, sequence, token)"
            );
        }
        eprintln!("{n} sequences, {kv:?}, {head:?}: {} tokens equal", a.len());
    }
}

/// `n` prompts, then 24 batched greedy steps with the chain broken on purpose (see
/// [`greedy_steps_launched_ahead_equal_steps_waited_for`]): every (step, sequence, token).
fn scripted_decode(model: &Model, n: usize) -> Vec<(usize, usize, u32)> {
    let vocab = model.config().vocab_size;
    let prompt = |s: usize| -> Vec<u32> {
        (0..3 + s % 5)
            .map(|i| ((i * 37 + s * 11 + 5) % 500) as u32)
            .collect()
    };
    // Sequence 2's cache fills up after 10 tokens; sequence n joins at step 9.
    let cap = |s: usize| if s == 2 { prompt(2).len() + 10 } else { 64 };
    let mut caches: Vec<_> = (0..=n).map(|s| model.new_cache(cap(s))).collect();
    let mut feed: Vec<Vec<u32>> = (0..n).map(prompt).collect();
    feed.push(Vec::new());
    let mut scratch = bitnet_model::Scratch::default();
    let mut out = Vec::new();
    let (mut ids, mut logits) = (Vec::new(), Vec::new());
    for step in 0..24 {
        if step == 9 {
            feed[n] = prompt(n);
        }
        // Sequence 1 leaves at step 6; a full cache takes no more tokens.
        let live: Vec<usize> = (0..=n)
            .filter(|&s| !feed[s].is_empty())
            .filter(|&s| s != 1 || step < 6)
            .filter(|&s| caches[s].len() + feed[s].len() <= caches[s].capacity())
            .collect();
        let mut entries: Vec<_> = caches
            .iter_mut()
            .enumerate()
            .filter(|(s, _)| live.contains(s))
            .map(|(s, cache)| bitnet_model::BatchEntry {
                tokens: &feed[s],
                cache,
                logits: bitnet_model::Logits::Last,
            })
            .collect();
        match step {
            0 | 13 => {
                model
                    .forward_batch(&mut entries, &mut logits, &mut scratch, None)
                    .unwrap();
                ids.clear();
                ids.extend(logits.chunks_exact(vocab).map(argmax));
            }
            17 => model
                .forward_batch_greedy(&mut entries, &mut ids, &mut scratch)
                .unwrap(),
            _ => model
                .forward_batch_greedy_ahead(&mut entries, &mut ids, &mut scratch)
                .unwrap(),
        }
        drop(entries);
        assert_eq!(ids.len(), live.len());
        for (&s, &t) in live.iter().zip(&ids) {
            out.push((step, s, t));
            feed[s] = vec![t];
        }
    }
    out
}

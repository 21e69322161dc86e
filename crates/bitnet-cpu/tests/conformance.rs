//! Every kernel this CPU offers must return exactly the scalar reference's integer products on
//! random shapes (odd widths and non-multiples of the 128/256-weight blocks included), batch
//! sizes 1..=64, extreme activations and all-(-1)/all-(+1) weight rows; and the float forward
//! pass must then agree bit for bit across kernels.

use std::sync::Arc;

use bitnet_core::scalar::ScalarKernel;
use bitnet_core::{CoreError, LinearKernel, QuantizedActivations, TernaryMatrix};
use bitnet_cpu::{available_kernels, kernel_by_name, with_threads};
use proptest::prelude::*;

/// The oracle, spelled out independently of any kernel.
fn reference(w: &[i8], x: &[i8], rows: usize, cols: usize, batch: usize) -> Vec<i32> {
    let mut want = vec![0i32; batch * rows];
    for b in 0..batch {
        for o in 0..rows {
            want[b * rows + o] = (0..cols)
                .map(|i| w[o * cols + i] as i32 * x[b * cols + i] as i32)
                .sum();
        }
    }
    want
}

/// Activation flavours: random, all -128, all 127, alternating extremes.
fn activations(batch: usize, cols: usize) -> impl Strategy<Value = Vec<i8>> {
    prop_oneof![
        proptest::collection::vec(any::<i8>(), batch * cols),
        Just(vec![-128i8; batch * cols]),
        Just(vec![127i8; batch * cols]),
        Just(
            (0..batch * cols)
                .map(|i| if i % 2 == 0 { -128 } else { 127 })
                .collect()
        ),
    ]
}

/// Weights: random codes, with some rows forced to all -1 or all +1.
fn weights(rows: usize, cols: usize) -> impl Strategy<Value = Vec<i8>> {
    (
        proptest::collection::vec(-1i8..=1, rows * cols),
        proptest::collection::vec(0u8..4, rows),
    )
        .prop_map(move |(mut w, kinds)| {
            for (r, kind) in kinds.iter().enumerate() {
                let fill = match kind {
                    0 => -1,
                    1 => 1,
                    _ => continue,
                };
                w[r * cols..(r + 1) * cols].fill(fill);
            }
            w
        })
}

fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<i8>, Vec<i8>)> {
    let cols = prop_oneof![
        1usize..600,
        prop::sample::select(vec![
            127usize, 128, 129, 255, 256, 257, 383, 384, 511, 512, 513, 2689
        ]),
    ];
    (1usize..80, cols, 1usize..=64).prop_flat_map(|(rows, cols, batch)| {
        (
            Just(rows),
            Just(cols),
            Just(batch),
            weights(rows, cols),
            activations(batch, cols),
        )
    })
}

/// Every kernel, alone and spread over a pool of three threads.
fn all_kernels() -> Vec<Arc<dyn LinearKernel>> {
    let mut all = available_kernels();
    all.extend(available_kernels().into_iter().map(|k| with_threads(k, 3)));
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn every_kernel_matches_the_scalar_reference((rows, cols, batch, w, x) in case()) {
        let m = TernaryMatrix::new(rows, cols, w.clone(), 1.5).unwrap();
        let want = reference(&w, &x, rows, cols, batch);
        let mut got = vec![0i32; batch * rows];
        ScalarKernel.prepare(&m).unwrap().matmul_i32(&x, batch, &mut got);
        prop_assert_eq!(&got, &want);
        for k in all_kernels() {
            let p = k.prepare(&m).unwrap();
            prop_assert_eq!((p.rows(), p.cols(), p.scale()), (rows, cols, 1.5));
            // Poison the output so a kernel that skips an element cannot pass.
            let mut got = vec![i32::MIN; batch * rows];
            p.matmul_i32(&x, batch, &mut got);
            prop_assert_eq!(&got, &want, "kernel {}", k.name());
        }
    }

    #[test]
    fn forward_is_identical_across_kernels(
        (rows, cols, batch, w, _x) in case(),
        seed in any::<u64>(),
    ) {
        let m = TernaryMatrix::new(rows, cols, w, 0.75).unwrap();
        let mut s = seed;
        let xf: Vec<f32> = (0..batch * cols)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
            })
            .collect();
        let mut q = QuantizedActivations::default();
        q.quantize(&xf, batch, cols);
        let mut want = vec![0f32; batch * rows];
        ScalarKernel.prepare(&m).unwrap().forward(&q, &mut want, &mut Vec::new());
        for k in all_kernels() {
            let mut got = vec![f32::NAN; batch * rows];
            k.prepare(&m).unwrap().forward(&q, &mut got, &mut Vec::new());
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(same, "kernel {}", k.name());
        }
    }
}

#[test]
fn empty_shapes_work_for_every_kernel() {
    for k in all_kernels() {
        let m = TernaryMatrix::new(3, 0, vec![], 1.0).unwrap();
        let mut out = [7i32; 6];
        k.prepare(&m).unwrap().matmul_i32(&[], 2, &mut out);
        assert_eq!(out, [0; 6], "kernel {}", k.name());
        let m = TernaryMatrix::new(0, 5, vec![], 1.0).unwrap();
        k.prepare(&m).unwrap().matmul_i32(&[1; 10], 2, &mut []);
    }
}

#[test]
fn every_available_kernel_is_found_by_name() {
    for k in available_kernels() {
        assert_eq!(kernel_by_name(k.name()).unwrap().name(), k.name());
    }
    assert_eq!(
        kernel_by_name("auto").unwrap().name(),
        available_kernels()[0].name()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            assert_eq!(kernel_by_name("avx2").unwrap().name(), "avx2");
        }
        if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw")
        {
            assert_eq!(kernel_by_name("avx512vnni").unwrap().name(), "avx512vnni");
            let best = if std::is_x86_feature_detected!("avx512vbmi") {
                "avx512vnni-t1"
            } else {
                "avx512vnni"
            };
            assert_eq!(available_kernels()[0].name(), best);
        }
    }
}

#[test]
fn unknown_kernel_names_error_and_list_the_alternatives() {
    let err = kernel_by_name("nope").err().unwrap();
    assert!(matches!(err, CoreError::UnknownKernel { .. }));
    let msg = err.to_string();
    assert!(msg.contains("nope") && msg.contains("scalar"), "{msg}");
    for k in available_kernels() {
        assert!(msg.contains(k.name()), "{msg}");
    }
}

#[test]
fn threaded_kernels_split_rows_exactly() {
    let (rows, cols) = (1000, 333);
    let w: Vec<i8> = (0..rows * cols)
        .map(|i| ((i * 7 + i / 13) % 3) as i8 - 1)
        .collect();
    let m = TernaryMatrix::new(rows, cols, w.clone(), 2.0).unwrap();
    for batch in [1, 2, 5, 8] {
        let x: Vec<i8> = (0..batch * cols)
            .map(|i| ((i * 31) % 256) as u8 as i8)
            .collect();
        let want = reference(&w, &x, rows, cols, batch);
        for k in all_kernels() {
            let mut got = vec![i32::MIN; batch * rows];
            k.prepare(&m).unwrap().matmul_i32(&x, batch, &mut got);
            assert_eq!(got, want, "kernel {} batch {batch}", k.name());
        }
    }
}

//! The conformance suite: every kernel this build offers must return exactly the scalar
//! reference's integer products on random shapes (odd sizes included) and batch sizes 1..=64.
//! New backends are picked up automatically through `available_kernels()`.

use bitnet_core::scalar::ScalarKernel;
use bitnet_core::{LinearKernel, TernaryMatrix, available_kernels};
use proptest::prelude::*;

fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<i8>, Vec<i8>)> {
    (1usize..80, 1usize..300, 1usize..=64).prop_flat_map(|(rows, cols, batch)| {
        (
            Just(rows),
            Just(cols),
            Just(batch),
            proptest::collection::vec(-1i8..=1, rows * cols),
            proptest::collection::vec(-128i8..=127, batch * cols),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_kernel_matches_the_scalar_reference((rows, cols, batch, w, x) in case()) {
        let m = TernaryMatrix::new(rows, cols, w.clone(), 1.5).unwrap();
        // The oracle, spelled out independently of any kernel.
        let mut want = vec![0i32; batch * rows];
        for b in 0..batch {
            for o in 0..rows {
                want[b * rows + o] = (0..cols).map(|i| w[o * cols + i] as i32 * x[b * cols + i] as i32).sum();
            }
        }
        let scalar = ScalarKernel.prepare(&m).unwrap();
        let mut got = vec![0i32; batch * rows];
        scalar.matmul_i32(&x, batch, &mut got);
        prop_assert_eq!(&got, &want);
        for k in available_kernels() {
            let p = k.prepare(&m).unwrap();
            prop_assert_eq!((p.rows(), p.cols(), p.scale()), (rows, cols, 1.5));
            let mut got = vec![0i32; batch * rows];
            p.matmul_i32(&x, batch, &mut got);
            prop_assert_eq!(&got, &want, "kernel {}", k.name());
        }
    }
}

#[test]
fn kernels_are_found_by_name() {
    assert_eq!(
        bitnet_core::kernel_by_name("scalar").unwrap().name(),
        "scalar"
    );
    let err = bitnet_core::kernel_by_name("nope")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope") && err.contains("scalar"), "{err}");
}

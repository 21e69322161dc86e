//! Property tests of the 2-bit packer against transformers' layout, and of "never panic" on
//! arbitrary safetensors bytes.

mod common;

use std::path::Path;

use bitnet_hf::{SafetensorsView, decode_f32, pack_ternary, unpack_ternary};
use proptest::prelude::*;

fn dims_and_codes() -> impl Strategy<Value = (usize, usize, Vec<i8>)> {
    // out a multiple of 4, in deliberately including odd sizes.
    (1usize..8, 1usize..13).prop_flat_map(|(q, inp)| {
        let out = 4 * q;
        (
            Just(out),
            Just(inp),
            proptest::collection::vec(-1i8..=1, out * inp),
        )
    })
}

proptest! {
    #[test]
    fn pack_unpack_round_trip((out, inp, codes) in dims_and_codes()) {
        let packed = pack_ternary(&codes, out, inp).unwrap();
        prop_assert_eq!(packed.len(), out / 4 * inp);
        prop_assert_eq!(&packed, &common::reference_pack(&codes, out, inp));
        prop_assert_eq!(unpack_ternary(&packed, out, inp).unwrap(), codes);
    }

    #[test]
    fn unpack_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), out in 0usize..40, inp in 0usize..20) {
        match unpack_ternary(&bytes, out, inp) {
            Ok(codes) => {
                prop_assert_eq!(codes.len(), out * inp);
                prop_assert!(codes.iter().all(|c| (-1..=1).contains(c)));
                prop_assert_eq!(pack_ternary(&codes, out, inp).unwrap(), bytes);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn mutated_safetensors_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = common::safetensors_bytes(&[
            common::entry("a", safetensors::Dtype::BF16, &[2, 3], common::bf16_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            common::entry("b", safetensors::Dtype::U8, &[4], vec![0, 1, 2, 3]),
        ]);
        for (i, v) in edits {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if do_cut {
            let n = cut.index(bytes.len());
            bytes.truncate(n);
        }
        if let Ok(view) = SafetensorsView::parse(&bytes, Path::new("fuzz.safetensors")) {
            for name in view.names() {
                let t = view.tensor(name).expect("listed tensor is present");
                let _ = decode_f32(&t);
                prop_assert!(t.data.len() <= bytes.len());
            }
        }
    }
}

//! The KV cache type as a load option: the model remembers it, budgets count its real bytes, and
//! q8 on a GPU is a clear error.

use std::path::{Path, PathBuf};

use bitnet_engine::{Device, EngineBuilder, KvType};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(rel)
}

fn builder() -> EngineBuilder {
    EngineBuilder::new(fixture("untied-gqa4/model-tq2_0.gguf").to_string_lossy())
}

#[test]
fn the_model_and_its_caches_keep_the_chosen_type() {
    let e = builder().device(Device::Cpu).build().unwrap();
    assert_eq!(e.model().kv_type(), KvType::F16, "default");
    for kv in KvType::ALL {
        let e = builder().device(Device::Cpu).kv(kv).build().unwrap();
        assert_eq!(e.model().kv_type(), kv);
        assert_eq!(e.model().new_cache(8).kv_type(), kv);
    }
}

/// A KV budget holds as many positions as the chosen type's real bytes allow.
#[test]
fn a_kv_budget_counts_the_types_bytes() {
    let per_pos = |kv| {
        builder()
            .device(Device::Cpu)
            .kv(kv)
            .build()
            .unwrap()
            .model()
            .kv_bytes_per_position()
    };
    let budget = 20 * per_pos(KvType::F32);
    for (kv, fits) in [(KvType::F32, 20), (KvType::F16, 40)] {
        let e = builder()
            .device(Device::Cpu)
            .kv(kv)
            .max_kv_bytes(budget)
            .build()
            .unwrap();
        assert_eq!(e.context_length(), fits, "{kv}");
    }
    let e = builder()
        .device(Device::Cpu)
        .kv(KvType::Q8)
        .max_kv_bytes(budget)
        .build()
        .unwrap();
    assert_eq!(e.context_length(), budget / per_pos(KvType::Q8));
    assert!(e.context_length() > 70, "{}", e.context_length());
}

/// q8 runs on a GPU as on the CPU: with a GPU, `cuda` and `auto` load onto it with a q8 cache;
/// without one, `cuda` fails for the missing GPU exactly as with f16 and `auto` runs on the CPU.
#[test]
fn q8_goes_wherever_f16_goes() {
    let gpu = matches!(bitnet_cuda::device_count(), Ok(n) if n > 0);
    for device in [Device::Cuda(0), Device::Auto] {
        let q8 = builder().device(device).kv(KvType::Q8).build();
        let f16 = builder().device(device).kv(KvType::F16).build();
        match (q8, f16) {
            (Ok(q8), Ok(f16)) => {
                assert_eq!(q8.info().device, f16.info().device);
                assert_eq!(q8.info().device == "cpu", !gpu, "{device:?}");
            }
            (Err(q8), Err(f16)) => {
                assert!(!gpu, "{device:?}: {q8}");
                assert_eq!(q8.to_string(), f16.to_string());
            }
            (q8, f16) => panic!("{device:?}: q8 {:?}, f16 {:?}", q8.err(), f16.err()),
        }
    }
}

//! The kernels compile with NVRTC for every architecture we support (runs wherever libnvrtc is
//! present, GPU or not; skipped with a message elsewhere).

use std::collections::BTreeSet;

/// The kernels (`.entry` names) a PTX module defines.
fn entries(ptx: &str) -> BTreeSet<String> {
    ptx.lines()
        .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
        .map(|l| l.split(['(', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn kernels_compile_for_supported_architectures() {
    if !bitnet_cuda::nvrtc_present() {
        eprintln!(
            "SKIPPED: libnvrtc not found (install the CUDA toolkit or nvidia-cuda-nvrtc to run)"
        );
        return;
    }
    for arch in ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"] {
        let parts = bitnet_cuda::compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(parts.len(), bitnet_cuda::PARTS as usize, "{arch}");
        let mut all = BTreeSet::new();
        for (i, c) in parts.iter().enumerate() {
            assert_eq!(c.part, i as u32 + 1, "{arch}: parts in order");
            // Machine code for the real architecture, as the driver loads it without compiling;
            // the cache's check takes it whole and refuses it cut short.
            assert!(
                bitnet_cuda::elf_is_whole(&c.cubin),
                "{arch} part {}",
                c.part
            );
            let n = c.cubin.len();
            for cut in [n / 3, n / 2, n - 1] {
                assert!(
                    !bitnet_cuda::elf_is_whole(&c.cubin[..cut]),
                    "{arch} part {}",
                    c.part
                );
            }
            let names = entries(&c.ptx);
            assert!(
                !names.is_empty() || arch == "sm_75",
                "{arch}: part {} is empty",
                c.part
            );
            for n in names {
                // An entry outside every `#if IN_PART(n)` would be in every part.
                assert!(all.insert(n.clone()), "{arch}: {n} is in two parts");
            }
        }
        assert!(all.contains("ternary_gemv"), "{arch}");
        assert!(all.contains("ternary_gemv_norm1_p28"), "{arch}");
        let has_mma = all.contains("ternary_mma_4");
        assert_eq!(all.contains("decode_step_f16"), has_mma, "{arch}: sm_80+");
        assert_eq!(
            has_mma,
            arch != "sm_75",
            "{arch}: mma kernels only from sm_80"
        );
        assert_eq!(all.contains("head_imma_i8"), has_mma, "{arch}");
        assert_eq!(all.contains("split_rows_i16"), has_mma, "{arch}");
        assert_eq!(
            all.contains("attn_one_f16_g4"),
            arch == "sm_90",
            "{arch}: clusters from sm_90"
        );
        assert_eq!(
            all.contains("ternary_gemm"),
            arch == "sm_90",
            "{arch}: sm_90"
        );
        // The q8 cache's kernels: everywhere but the tensor-core split from sm_80 and the
        // cluster kernel from sm_90, as for f16.
        for name in ["rope_kv_q8", "attn_vec_q8", "attn_vec4_q8"] {
            assert!(all.contains(name), "{arch}: {name}");
        }
        assert_eq!(all.contains("attn_split4_q8_h128"), has_mma, "{arch}");
        assert_eq!(all.contains("attn_mma_q8_h128"), has_mma, "{arch}");
        assert_eq!(all.contains("attn_one_q8_g4"), arch == "sm_90", "{arch}");
    }
}

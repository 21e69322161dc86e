//! The kernels compile with NVRTC for every architecture we support (runs wherever libnvrtc is
//! present, GPU or not; skipped with a message elsewhere).

#[test]
fn kernels_compile_for_supported_architectures() {
    if !bitnet_cuda::nvrtc_present() {
        eprintln!(
            "SKIPPED: libnvrtc not found (install the CUDA toolkit or nvidia-cuda-nvrtc to run)"
        );
        return;
    }
    for arch in ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"] {
        let ptx = bitnet_cuda::compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let src = ptx.to_src();
        assert!(src.contains(".entry ternary_gemv"), "{arch}");
        let has_mma = src.contains(".entry ternary_mma_4");
        assert_eq!(
            src.contains(".entry decode_step_f16"),
            has_mma,
            "{arch}: sm_80+"
        );
        assert_eq!(
            has_mma,
            arch != "sm_75",
            "{arch}: mma kernels only from sm_80"
        );
    }
}

//! `default_kernel` honours `BITNET_KERNEL`. This binary holds a single test so that changing
//! the process environment cannot race with another test thread.

use bitnet_cpu::{available_kernels, default_kernel};

#[test]
fn default_kernel_follows_bitnet_kernel() {
    let best = available_kernels()[0].name();
    let set = |v: Option<&str>| {
        // SAFETY: this is the only test in this binary, so no other thread reads the environment.
        unsafe {
            match v {
                Some(v) => std::env::set_var("BITNET_KERNEL", v),
                None => std::env::remove_var("BITNET_KERNEL"),
            }
        }
    };
    set(None);
    assert_eq!(default_kernel().unwrap().name(), best);
    set(Some("auto"));
    assert_eq!(default_kernel().unwrap().name(), best);
    set(Some(""));
    assert_eq!(default_kernel().unwrap().name(), best);
    for k in available_kernels() {
        set(Some(k.name()));
        assert_eq!(default_kernel().unwrap().name(), k.name());
    }
    set(Some("no-such-kernel"));
    let err = default_kernel().err().unwrap().to_string();
    assert!(err.contains("no-such-kernel"), "{err}");
    set(None);
}

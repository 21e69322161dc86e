//! `BITNET_CUDA_STEP_GAPS=1`: where a decode step's wall time goes between the device and the
//! host, printed per batch size when the model is dropped.

use std::collections::BTreeMap;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

use crate::CudaError;

/// A decode step's CUDA events at its first launch, after its last kernel (before the outputs
/// are copied back) and once the host holds the outputs, against the host's clock from one
/// step's start to the next.
#[derive(Default)]
pub(super) struct Gaps {
    /// The open step: its rows, the host's clock at its start and its three events.
    open: Option<(usize, Instant, [Option<CudaEvent>; 3])>,
    /// Per batch size: steps counted, and their summed microseconds from the first launch to
    /// the last kernel, from there to the host holding the outputs, and from there to the next
    /// step's start.
    sums: BTreeMap<usize, (u64, [f64; 3])>,
}

impl Gaps {
    /// Some where `BITNET_CUDA_STEP_GAPS=1`.
    pub(super) fn new() -> Option<Self> {
        std::env::var("BITNET_CUDA_STEP_GAPS")
            .is_ok_and(|v| v == "1")
            .then(Gaps::default)
    }

    /// A step of `rows` starts on `st` (`decode`: a decode step, the only kind counted). The
    /// previous one is counted if this one is a decode step too (else its host time would be
    /// the caller's setup of what comes next).
    pub(super) fn start(
        &mut self,
        st: &CudaStream,
        rows: usize,
        decode: bool,
    ) -> Result<(), CudaError> {
        let event = st.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let now = Instant::now();
        if let Some((n, t, [Some(a), Some(d), Some(b)])) = self.open.take()
            && decode
            && let (Ok(ad), Ok(ab)) = (a.elapsed_ms(&d), a.elapsed_ms(&b))
        {
            let (ad, ab) = (f64::from(ad) * 1e3, f64::from(ab) * 1e3);
            let wall = now.duration_since(t).as_secs_f64() * 1e6;
            let e = self.sums.entry(n).or_default();
            e.0 += 1;
            e.1[0] += ad;
            e.1[1] += ab - ad;
            e.1[2] += wall - ab;
        }
        self.open = decode.then(|| (rows, now, [Some(event), None, None]));
        Ok(())
    }

    /// The open step's event `i` (1: after its last kernel, 2: the host holds its outputs).
    pub(super) fn mark(&mut self, i: usize, st: &CudaStream) -> Result<(), CudaError> {
        if let Some((_, _, events)) = &mut self.open {
            events[i] = Some(st.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?);
        }
        Ok(())
    }
}

impl Drop for Gaps {
    fn drop(&mut self) {
        for (rows, (steps, sums)) in &self.sums {
            let per = sums.map(|x| x / *steps as f64);
            eprintln!(
                "step gaps, {rows} rows, {steps} steps (us per step): launch to last kernel \
                 {:.1}, to the host holding the outputs {:.1}, host until the next step {:.1}",
                per[0], per[1], per[2]
            );
        }
    }
}

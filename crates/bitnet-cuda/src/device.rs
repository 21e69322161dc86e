//! Finding a GPU, compiling the kernels once (cached on disk per architecture) and launching them.

use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::CudaError;

/// The kernels' source, compiled at run time by NVRTC.
pub const KERNELS: &str = include_str!("kernels.cu");

/// Whether the CUDA driver library can be opened (no GPU needed to answer `false`).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether the NVRTC library can be opened.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The number of CUDA devices, or why there are none usable.
pub fn device_count() -> Result<usize, CudaError> {
    if !driver_present() {
        return Err(CudaError::Unavailable(
            "the CUDA driver library (libcuda) was not found".into(),
        ));
    }
    if !nvrtc_present() {
        return Err(CudaError::Unavailable(
            "the NVRTC library (libnvrtc, part of the CUDA toolkit) was not found".into(),
        ));
    }
    let n = CudaContext::device_count().map_err(|e| CudaError::Unavailable(e.to_string()))?;
    Ok(n.max(0) as usize)
}

/// A kernel argument by value.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer.
    P(u64),
    /// An `int`.
    I(i32),
    /// A `float`.
    F(f32),
}

/// The raw device address of a buffer (the context does no event tracking, so nothing waits).
pub fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

/// One device: context, stream and the compiled module.
pub struct Gpu {
    /// The context.
    pub ctx: Arc<CudaContext>,
    /// The one stream everything runs on.
    pub stream: Arc<CudaStream>,
    /// One module per part of the kernels ([`PARTS`]).
    modules: Vec<Arc<CudaModule>>,
    /// `sm_XY`.
    pub arch: String,
    /// The device's name.
    pub name: String,
    /// Its index.
    pub ordinal: usize,
    /// With `BITNET_CUDA_PROFILE=1`: device time per kernel (CUDA events around every
    /// launch), printed to stderr when the device is dropped.
    profile: Option<std::sync::Mutex<Profile>>,
    /// Programmatic dependent launch (sm_90+): each kernel may start while its predecessor
    /// finishes, requesting what does not depend on it (the products' weights). `None`: for the
    /// launches the model asks for ([`Gpu::pdl_scope`]); `BITNET_CUDA_PDL=1` / `0`: always / never
    /// (never before sm_90).
    pdl: Option<bool>,
    /// The model's choice for the launches that follow (where `pdl` is `None`).
    pdl_now: std::sync::atomic::AtomicBool,
}

/// Launches with the model's choice of programmatic dependent launch ([`Gpu::pdl_scope`]).
pub struct PdlScope<'a>(&'a Gpu);

impl Drop for PdlScope<'_> {
    fn drop(&mut self) {
        let off = std::sync::atomic::Ordering::Relaxed;
        self.0.pdl_now.store(false, off);
    }
}

/// A launch attribute ([`Gpu::launch_with`]).
#[derive(Clone, Copy, Debug)]
pub enum Attr {
    /// Programmatic stream serialization ([`Gpu::pdl`]: decode steps of more than one row, or
    /// every launch with `BITNET_CUDA_PDL=1`).
    Pdl,
    /// A cooperative grid (all blocks co-resident).
    Cooperative,
    /// Thread-block clusters of this many blocks along x.
    Cluster(u32),
}

impl Attr {
    /// The driver's form of the attribute.
    fn raw(&self) -> cudarc::driver::sys::CUlaunchAttribute {
        use cudarc::driver::sys;
        // SAFETY: zero is a valid bit pattern for this plain C union.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        let id = match *self {
            Attr::Pdl => {
                value.programmaticStreamSerializationAllowed = 1;
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            }
            Attr::Cooperative => {
                value.cooperative = 1;
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE
            }
            Attr::Cluster(x) => {
                value.clusterDim =
                    sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x, y: 1, z: 1 };
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
            }
        };
        sys::CUlaunchAttribute {
            id,
            pad: [0; 4],
            value,
        }
    }
}

/// A launch of `grid` x `block` threads with `smem` bytes of dynamic shared memory on `gpu`'s
/// stream, with the attributes `attrs` (which must outlive the configuration's use).
fn launch_config(
    gpu: &Gpu,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    attrs: &mut [cudarc::driver::sys::CUlaunchAttribute],
) -> cudarc::driver::sys::CUlaunchConfig {
    cudarc::driver::sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: gpu.stream.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: attrs.len() as u32,
    }
}

/// Kernel timings: events still in flight, and totals by kernel.
#[derive(Default)]
struct Profile {
    pending: Vec<(String, cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>,
    totals: std::collections::BTreeMap<String, (u64, f64)>,
}

impl Profile {
    fn settle(&mut self) {
        for (name, a, b) in self.pending.drain(..) {
            if let Ok(ms) = a.elapsed_ms(&b) {
                let e = self.totals.entry(name).or_default();
                e.0 += 1;
                e.1 += ms as f64 / 1e3;
            }
        }
    }
}

/// A compiled kernel and its name.
#[derive(Clone, Debug)]
pub struct Kernel {
    f: CudaFunction,
    name: String,
    /// [`Kernel::wave`], asked of the driver once.
    wave: std::sync::OnceLock<u32>,
}

impl Kernel {
    /// Blocks of [`Kernel::WAVE_BLOCK`] threads (no dynamic shared memory) that run at once on
    /// the whole GPU: one wave. At least 1; asked of the driver at the first call only.
    pub fn wave(&self, gpu: &Gpu) -> u32 {
        *self
            .wave
            .get_or_init(|| self.resident(gpu, Self::WAVE_BLOCK, 0).max(1))
    }

    /// Blocks of `block` threads with `smem` bytes of dynamic shared memory that fit on the
    /// whole GPU at once (0 if the driver cannot say).
    pub fn resident(&self, gpu: &Gpu, block: u32, smem: usize) -> u32 {
        let per_sm = self
            .f
            .occupancy_max_active_blocks_per_multiprocessor(block, smem, None)
            .unwrap_or(0);
        per_sm.saturating_mul(gpu.sm_count())
    }

    /// Lets launches of this kernel use up to `bytes` of dynamic shared memory (beyond the
    /// default 48 KB, where the device allows).
    pub fn allow_smem(&self, bytes: usize) -> Result<(), CudaError> {
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        let bytes = i32::try_from(bytes)
            .map_err(|_| CudaError::Unavailable(format!("{bytes} bytes of shared memory")))?;
        Ok(self
            .f
            .set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)?)
    }

    /// The most dynamic shared memory a launch of this kernel may take (48 KB unless
    /// [`Kernel::allow_smem`] raised it; 0 if the driver cannot say).
    pub fn dynamic_smem_cap(&self) -> usize {
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        self.f
            .get_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
            .map_or(0, |v| v.max(0) as usize)
    }

    /// The largest thread-block cluster (16, where the device allows clusters beyond the portable
    /// 8; else 8; 0 where none can run) of blocks of `block` threads with `smem` bytes of dynamic
    /// shared memory that the device can place, asked of the driver. Lets launches of this kernel
    /// use clusters of more than 8 blocks where it answers 16.
    pub fn cluster_limit(&self, gpu: &Gpu, block: u32, smem: usize) -> u32 {
        use cudarc::driver::sys;
        let f = self.f.cu_function();
        // SAFETY: `f` is a live function of this context; the attribute takes 0 or 1.
        let wide = unsafe {
            sys::cuFuncSetAttribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            )
        } == sys::CUresult::CUDA_SUCCESS;
        let sizes: &[u32] = if wide { &[16, 8] } else { &[8] };
        for &n in sizes {
            let mut attr = [Attr::Cluster(n).raw()];
            let cfg = launch_config(gpu, (n, 1, 1), block, smem as u32, &mut attr);
            let mut clusters = 0i32;
            // SAFETY: `cfg` and its attribute live through the call; nothing is launched.
            let r = unsafe { sys::cuOccupancyMaxActiveClusters(&mut clusters, f, &cfg) };
            if r == sys::CUresult::CUDA_SUCCESS && clusters > 0 {
                return n;
            }
        }
        0
    }

    /// The block size [`Kernel::wave`] counts for.
    pub const WAVE_BLOCK: u32 = 256;

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let Some(p) = self.profile.take() else { return };
        let mut p = p.into_inner().unwrap_or_default();
        p.settle();
        let total: f64 = p.totals.values().map(|v| v.1).sum();
        eprintln!(
            "kernel profile (device time, CUDA events): {:.3} s total",
            total
        );
        let mut rows: Vec<_> = p.totals.into_iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        for (name, (n, t)) in rows {
            eprintln!(
                "  {name:<20} {n:>8} launches {:>10.3} ms {:>6.1}% {:>8.2} us/launch",
                t * 1e3,
                100.0 * t / total.max(1e-12),
                t * 1e6 / n as f64
            );
        }
    }
}

/// How the host waits for the device: spinning (the primary context's scheduling flag), which
/// on an H200 took a decode step's tokens back ~6 us sooner than the driver's own choice (+1%
/// at batch 1 and 64; blocking cost 8-13%: BENCHMARKS.md session 41).
/// `BITNET_CUDA_SCHED=auto|yield|block` for the others.
fn set_sched(ordinal: usize) -> Result<(), CudaError> {
    use cudarc::driver::sys::CUctx_flags as F;
    let flag = match std::env::var("BITNET_CUDA_SCHED").as_deref() {
        Ok("auto") => return Ok(()),
        Ok("yield") => F::CU_CTX_SCHED_YIELD,
        Ok("block") => F::CU_CTX_SCHED_BLOCKING_SYNC,
        _ => F::CU_CTX_SCHED_SPIN,
    };
    cudarc::driver::result::init()?;
    let dev = cudarc::driver::result::device::get(ordinal as i32)?;
    // SAFETY: a plain driver call on a valid device handle. A refusal (a driver that will not
    // change an active context's flags) leaves the driver's choice: a hint, not a failure.
    let _ = unsafe { cudarc::driver::sys::cuDevicePrimaryCtxSetFlags_v2(dev, flag as u32) };
    Ok(())
}

/// Host memory the device copies to and from directly (page-locked), where the driver gives
/// it (`BITNET_CUDA_PINNED=0`: ordinary memory, which the driver stages through its own); a
/// copy from it is asynchronous, so it must not change until the copy's stream has passed it.
pub(crate) enum HostBuf<T: Copy + Default> {
    /// `len` values at `ptr`, allocated by the driver in `ctx`.
    Pinned {
        ptr: *mut T,
        len: usize,
        ctx: Arc<CudaContext>,
    },
    Plain(Vec<T>),
}

// SAFETY: the page-locked allocation is owned by the buffer alone, like a Vec's.
unsafe impl<T: Copy + Default + Send> Send for HostBuf<T> {}
// SAFETY: as above; shared references only read.
unsafe impl<T: Copy + Default + Sync> Sync for HostBuf<T> {}

impl<T: Copy + Default> HostBuf<T> {
    /// `len` default values, page-locked where possible.
    pub(crate) fn new(gpu: &Gpu, len: usize) -> Self {
        let on = std::env::var("BITNET_CUDA_PINNED").map_or(true, |v| v != "0");
        let bytes = len.max(1) * std::mem::size_of::<T>();
        let pinned = || {
            gpu.ctx.bind_to_thread().ok()?;
            // SAFETY: a fresh allocation of `bytes`, filled below before any use.
            let ptr = unsafe { cudarc::driver::result::malloc_host(bytes, 0) }.ok()? as *mut T;
            if ptr.is_null() || !ptr.is_aligned() {
                return None;
            }
            for i in 0..len {
                // SAFETY: within the allocation, aligned.
                unsafe { ptr.add(i).write(T::default()) };
            }
            let ctx = gpu.ctx.clone();
            Some(HostBuf::Pinned { ptr, len, ctx })
        };
        on.then(pinned)
            .flatten()
            .unwrap_or_else(|| HostBuf::Plain(vec![T::default(); len]))
    }
}

impl<T: Copy + Default> std::ops::Deref for HostBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            // SAFETY: `len` initialized values, owned by this buffer.
            HostBuf::Pinned { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
            HostBuf::Plain(v) => v,
        }
    }
}

impl<T: Copy + Default> std::ops::DerefMut for HostBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            // SAFETY: as in `deref`, and borrowed mutably.
            HostBuf::Pinned { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(*ptr, *len)
            },
            HostBuf::Plain(v) => v,
        }
    }
}

impl<T: Copy + Default> Drop for HostBuf<T> {
    fn drop(&mut self) {
        if let HostBuf::Pinned { ptr, ctx, .. } = self
            && ctx.bind_to_thread().is_ok()
        {
            // SAFETY: allocated by `malloc_host`, freed once. (Every copy from or to it was
            // waited for by its pass.)
            let _ = unsafe { cudarc::driver::result::free_host(*ptr as *mut std::ffi::c_void) };
        }
    }
}

impl Gpu {
    /// Opens device `ordinal` and loads the kernels (compiling them on first use).
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        Self::open_with(ordinal, false)
    }

    /// [`Gpu::open`], saying on stderr when the kernels are compiled (`progress`).
    pub fn open_with(ordinal: usize, progress: bool) -> Result<Self, CudaError> {
        let n = device_count()?;
        if ordinal >= n {
            return Err(CudaError::Unavailable(format!(
                "cuda:{ordinal} requested, but {n} CUDA device(s) are present"
            )));
        }
        set_sched(ordinal)?;
        let ctx = CudaContext::new(ordinal)?;
        // One stream, in order: cudarc's per-buffer events would only add work (and break graph
        // capture).
        // SAFETY: called before any buffer exists on this context.
        unsafe { ctx.disable_event_tracking() };
        let (maj, min) = ctx.compute_capability()?;
        let arch = format!("sm_{maj}{min}");
        let name = ctx.name()?;
        let modules = load_modules(&ctx, &arch, progress)?;
        let stream = ctx.new_stream()?;
        let profile = std::env::var("BITNET_CUDA_PROFILE")
            .is_ok_and(|v| v == "1")
            .then(Default::default);
        let pdl = match std::env::var("BITNET_CUDA_PDL").as_deref() {
            _ if maj < 9 => Some(false),
            Ok("1") => Some(true),
            Ok("0") => Some(false),
            _ => None,
        };
        Ok(Self {
            ctx,
            stream,
            modules,
            arch,
            name,
            ordinal,
            profile,
            pdl,
            pdl_now: Default::default(),
        })
    }

    /// A kernel by name (from whichever part of the kernels holds it).
    pub fn function(&self, name: &str) -> Result<Kernel, CudaError> {
        let mut missing = None;
        for m in &self.modules {
            match m.load_function(name) {
                Ok(f) => {
                    return Ok(Kernel {
                        f,
                        name: name.to_string(),
                        wave: std::sync::OnceLock::new(),
                    });
                }
                Err(e) => missing = Some(e),
            }
        }
        Err(match missing {
            Some(e) => e.into(),
            None => CudaError::Unavailable("no CUDA kernels are loaded".into()),
        })
    }

    /// Another handle on this GPU with a stream of its own (the same context and kernels): work
    /// launched through the two runs concurrently unless ordered (`stream.join`).
    pub fn second_stream(&self) -> Result<Gpu, CudaError> {
        Ok(Gpu {
            ctx: self.ctx.clone(),
            stream: self.ctx.new_stream()?,
            modules: self.modules.clone(),
            arch: self.arch.clone(),
            name: self.name.clone(),
            ordinal: self.ordinal,
            profile: self.profile.as_ref().map(|_| Default::default()),
            pdl: self.pdl,
            pdl_now: Default::default(),
        })
    }

    /// The launches `launch` makes on this handle's stream, captured as a graph (not run).
    pub(crate) fn capture(
        &self,
        launch: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<cudarc::driver::CudaGraph, CudaError> {
        let st = &self.stream;
        st.begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )?;
        let launched = launch();
        let graph = st.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))?;
        launched?;
        graph.ok_or_else(|| CudaError::Unavailable("graph capture produced no graph".into()))
    }

    /// A kernel that may be missing on older architectures.
    pub fn optional_function(&self, name: &str) -> Option<Kernel> {
        self.function(name).ok()
    }

    /// The number of streaming multiprocessors (at least 1).
    pub fn sm_count(&self) -> u32 {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        let n = self
            .ctx
            .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(1);
        n.max(1) as u32
    }

    /// Whether the launches now are programmatic dependent launches (sm_90+, not while
    /// profiling; the model's choice unless `BITNET_CUDA_PDL` overrides it).
    pub fn pdl(&self) -> bool {
        let on = self
            .pdl
            .unwrap_or_else(|| self.pdl_now.load(std::sync::atomic::Ordering::Relaxed));
        on && self.profile.is_none()
    }

    /// Asks for programmatic dependent launch (or not) on the launches made while the returned
    /// scope lives; off again after it.
    pub fn pdl_scope(&self, on: bool) -> PdlScope<'_> {
        self.pdl_now.store(on, std::sync::atomic::Ordering::Relaxed);
        PdlScope(self)
    }

    /// Whether launches are being profiled (graphs would hide them).
    pub fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// Runs `go` (one launch of `k`), between two CUDA events when profiling.
    fn timed(
        &self,
        k: &Kernel,
        go: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        let Some(p) = &self.profile else {
            return go();
        };
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let t0 = self.stream.record_event(timing)?;
        go()?;
        let t1 = self.stream.record_event(timing)?;
        if let Ok(mut p) = p.lock() {
            p.pending.push((k.name.clone(), t0, t1));
            if p.pending.len() > 4096 {
                p.settle();
            }
        }
        Ok(())
    }

    /// Launches `f` on the stream.
    pub fn launch(
        &self,
        k: &Kernel,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        if self.pdl() {
            return self.launch_ex(k, grid, block, smem, args, Attr::Pdl);
        }
        self.timed(k, || {
            let mut b = self.stream.launch_builder(&k.f);
            for a in args {
                match a {
                    Arg::P(p) => b.arg(p),
                    Arg::I(i) => b.arg(i),
                    Arg::F(x) => b.arg(x),
                };
            }
            let cfg = LaunchConfig {
                grid_dim: grid,
                block_dim: (block, 1, 1),
                shared_mem_bytes: smem,
            };
            // SAFETY: every kernel's argument list is built next to its signature in this
            // crate; buffers are sized by the caller for the grid given.
            unsafe { b.launch(cfg) }?;
            Ok(())
        })
    }

    /// Launches `k` with one launch attribute: [`Attr::Cooperative`] (every block resident at
    /// once: the driver refuses a grid larger than one wave instead of letting grid-wide
    /// barriers deadlock) or [`Attr::Cluster`] (`grid.0` a multiple of the cluster; more than 8
    /// blocks only after [`Kernel::cluster_limit`] allowed it).
    pub(crate) fn launch_with(
        &self,
        k: &Kernel,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
        attr: Attr,
    ) -> Result<(), CudaError> {
        self.timed(k, || self.launch_ex(k, grid, block, smem, args, attr))
    }

    /// Launches with one launch attribute (a cluster launch also with [`Attr::Pdl`] where
    /// [`Gpu::pdl`]). [`Attr::Pdl`]: programmatic stream serialization, the kernel may begin
    /// once its predecessor's blocks have all passed their own wait (every kernel of
    /// `kernels.cu` signals right after it), and waits (`griddepcontrol.wait`) before touching
    /// anything a predecessor writes. [`Attr::Cooperative`]: all blocks co-resident.
    fn launch_ex(
        &self,
        k: &Kernel,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
        kind: Attr,
    ) -> Result<(), CudaError> {
        use cudarc::driver::sys;
        // Each argument in its own 8-byte slot; the driver reads the parameter's size from it
        // (little-endian, so an int or float sits in the slot's first four bytes).
        let mut slots = [0u64; 32];
        if args.len() > slots.len() {
            return Err(CudaError::Unavailable(format!(
                "{}: {} kernel arguments (at most 32)",
                k.name,
                args.len()
            )));
        }
        for (slot, a) in slots.iter_mut().zip(args) {
            *slot = match *a {
                Arg::P(p) => p,
                Arg::I(i) => i as u32 as u64,
                Arg::F(x) => x.to_bits() as u64,
            };
        }
        let mut params: [*mut std::ffi::c_void; 32] = [std::ptr::null_mut(); 32];
        for (p, slot) in params.iter_mut().zip(slots.iter_mut()) {
            *p = (slot as *mut u64).cast();
        }
        // A cluster launch is also a programmatic one where PDL is on.
        let mut attrs = [kind.raw(), Attr::Pdl.raw()];
        let n = match kind {
            Attr::Cluster(_) if self.pdl() => 2,
            _ => 1,
        };
        let cfg = launch_config(self, grid, block, smem, &mut attrs[..n]);
        // SAFETY: the argument list matches the kernel's signature (built next to it in this
        // crate), `params` points at live slots for the call, and the stream belongs to the
        // function's context.
        let r = unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                k.f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(CudaError::Unavailable(format!(
                "launching {}: {r:?}",
                k.name
            )));
        }
        Ok(())
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.clone_htod(data)?)
    }

    /// A zeroed device buffer of `n` elements (at least one, so that it has an address).
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    /// Copies `bytes` bytes between two device addresses of this context, on this stream.
    pub(crate) fn copy_device(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        self.stream.context().bind_to_thread()?;
        // SAFETY: both addresses lie in live allocations of this context with `bytes` bytes
        // behind them (the caller's caches), and the copy is ordered on this stream.
        let r = unsafe {
            cudarc::driver::sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream.cu_stream())
        };
        Ok(r.result()?)
    }

    /// Waits for the stream.
    pub fn sync(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }
}

/// The kernels compile as this many independent modules (`BITNET_PART` 1..=PARTS in
/// kernels.cu), in parallel, each cached on its own: one module took NVRTC and ptxas ~50-60 s on
/// one core, the largest part takes a tenth of that.
pub const PARTS: u32 = 12;

/// The part that holds the warpgroup (`wgmma`) kernels: compiled for `sm_90a` (the
/// architecture-specific features of Hopper) where the GPU is `sm_90`; elsewhere it holds none.
const WGMMA_PART: u32 = 12;

/// What NVRTC made of one part of the kernels for one architecture.
pub struct Compiled {
    /// The part (1..=[`PARTS`]; 0: every kernel in one module).
    pub part: u32,
    /// PTX: what the driver compiles itself where it refuses the machine code.
    pub ptx: String,
    /// The machine code for the real architecture (an ELF CUBIN), loaded without the driver's
    /// compiler and cached.
    pub cubin: Vec<u8>,
}

/// Where compiled kernels are kept: `$BITNET_CACHE_DIR/cuda`, else
/// `$XDG_CACHE_HOME/bitnet-rs/cuda`, else `~/.cache/bitnet-rs/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BITNET_CACHE_DIR") {
        return Some(PathBuf::from(d).join("cuda"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("bitnet-rs").join("cuda"))
}

/// FNV-1a, to name cache entries by their source.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The cache file of `part` for `arch` without its extension (`.cubin`, or `.ptx` where the
/// driver refused the machine code): named by everything that decides its contents.
fn cache_stem(dir: &std::path::Path, arch: &str, part: u32) -> PathBuf {
    let lineinfo = lineinfo();
    let key = fnv1a(&[
        KERNELS.as_bytes(),
        arch.as_bytes(),
        &[lineinfo as u8],
        &part.to_le_bytes(),
    ]);
    dir.join(format!("kernels-{key:016x}-{arch}-{part}"))
}

/// Writes `bytes` to `path` whole, then renames it into place, so that a concurrent reader
/// never sees half a file. A cache that cannot be written only costs the next run a compile.
fn cache_write(path: &std::path::Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Stores part `part`'s `bytes` as the cache file `stem` + `.cubin` (machine code) or `.ptx`,
/// drops the part's file of the other kind (no longer read) and trims other builds' versions.
/// Whether the file is now in place.
fn cache_store(stem: &std::path::Path, ext: &str, bytes: &[u8], arch: &str, part: u32) -> bool {
    let path = stem.with_extension(ext);
    cache_write(&path, bytes);
    let other = if ext == "cubin" { "ptx" } else { "cubin" };
    let _ = std::fs::remove_file(stem.with_extension(other));
    cache_prune(stem, arch, part);
    path.is_file()
}

/// Other builds' versions of a part that the cache keeps besides the current one, so that two
/// builds used by turns (an upgrade tried against the old one, an A/B benchmark) do not evict
/// each other's kernels.
const CACHE_KEEP_OTHERS: usize = 2;

/// Trims the cache's other versions of the part whose file is `stem` (`.cubin` or `.ptx`): the
/// same part for the same architecture from other builds, and the one-module PTX of builds
/// before the parts (`kernels-KEY-ARCH.ptx`). The [`CACHE_KEEP_OTHERS`] most recently written
/// stay, so that upgrades do not pile up files (~5 MB per build and architecture).
fn cache_prune(stem: &std::path::Path, arch: &str, part: u32) {
    let (Some(dir), Some(keep)) = (stem.parent(), stem.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let same_part = format!("-{arch}-{part}");
    let one_module = format!("-{arch}.ptx");
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                return false;
            };
            let base = name
                .strip_suffix(".cubin")
                .or_else(|| name.strip_suffix(".ptx"));
            name.starts_with("kernels-")
                && base != Some(keep)
                && (base.is_some_and(|b| b.ends_with(&same_part)) || name.ends_with(&one_module))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    others.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, path) in others.into_iter().skip(CACHE_KEEP_OTHERS) {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether `bytes` is a whole 64-bit little-endian ELF image: every header table, section and
/// segment it describes lies inside it. The driver is handed a cached image by address alone
/// (`cuModuleLoadData` takes no length), so a truncated or damaged cache file must not reach it.
pub fn elf_is_whole(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| -> Option<u64> {
        Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?) as u64)
    };
    let u32_at = |o: usize| -> Option<u64> {
        Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?) as u64)
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
    };
    let len = bytes.len() as u64;
    let inside = |off: u64, size: u64| off.checked_add(size).is_some_and(|end| end <= len);
    // None: not whole (`need(false)` turns a failed condition into one).
    let need = |ok: bool| ok.then_some(());
    let check = || -> Option<()> {
        need(bytes.starts_with(b"\x7fELF") && bytes.get(4..6)? == [2, 1])?;
        let (phoff, shoff) = (u64_at(0x20)?, u64_at(0x28)?);
        let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
        let (shentsize, shnum) = (u16_at(0x3a)?, u16_at(0x3c)?);
        need((phnum == 0 || phentsize >= 56) && (shnum == 0 || shentsize >= 64))?;
        need(inside(phoff, phentsize * phnum) && inside(shoff, shentsize * shnum))?;
        for i in 0..shnum {
            let h = (shoff + i * shentsize) as usize;
            const NOBITS: u64 = 8;
            need(u32_at(h + 4)? == NOBITS || inside(u64_at(h + 0x18)?, u64_at(h + 0x20)?))?;
        }
        for i in 0..phnum {
            let h = (phoff + i * phentsize) as usize;
            need(inside(u64_at(h + 8)?, u64_at(h + 0x20)?))?;
        }
        Some(())
    };
    check().is_some()
}

/// A cached part, as machine code or else PTX, if it is whole and the driver takes it.
fn load_cached(ctx: &Arc<CudaContext>, stem: &std::path::Path) -> Option<Arc<CudaModule>> {
    if let Ok(cubin) = std::fs::read(stem.with_extension("cubin"))
        && elf_is_whole(&cubin)
        && let Ok(m) = ctx.load_module(Ptx::from_binary(cubin))
    {
        return Some(m);
    }
    let src = std::fs::read_to_string(stem.with_extension("ptx")).ok()?;
    // The driver reads PTX up to its first NUL (and cudarc refuses one inside).
    if src.contains('\0') {
        return None;
    }
    ctx.load_module(Ptx::from_src(src)).ok()
}

/// Every part's module for `arch`: from the cache where it holds them, the others compiled (in
/// parallel) and cached.
fn load_modules(
    ctx: &Arc<CudaContext>,
    arch: &str,
    progress: bool,
) -> Result<Vec<Arc<CudaModule>>, CudaError> {
    let dir = cache_dir();
    let stem = |part| dir.as_deref().map(|d| cache_stem(d, arch, part));
    let mut modules = Vec::new();
    let mut missing = Vec::new();
    for part in 1..=PARTS {
        match stem(part).and_then(|s| load_cached(ctx, &s)) {
            Some(m) => modules.push(m),
            None => missing.push(part),
        }
    }
    if missing.is_empty() {
        return Ok(modules);
    }
    let started = std::time::Instant::now();
    if progress {
        eprintln!("{}", compile_note(arch, dir.as_deref(), missing.len()));
    }
    for c in compile_parts(arch, &missing)? {
        let stem = stem(c.part);
        // The machine code first; PTX (compiled again by the driver) where the driver does not
        // take NVRTC's machine code, e.g. a driver older than the NVRTC library.
        let m = match ctx.load_module(Ptx::from_binary(c.cubin.clone())) {
            Ok(m) => {
                if let Some(s) = &stem {
                    cache_store(s, "cubin", &c.cubin, arch, c.part);
                }
                m
            }
            Err(_) => {
                let m = ctx.load_module(Ptx::from_src(c.ptx.clone()))?;
                if let Some(s) = &stem {
                    cache_store(s, "ptx", c.ptx.as_bytes(), arch, c.part);
                }
                m
            }
        };
        modules.push(m);
    }
    if progress {
        eprintln!(
            "compiled the CUDA kernels in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(modules)
}

/// Compiles the parts of the kernels for `arch` that the cache lacks and writes their machine
/// code there, without a GPU (e.g. while building a container image for GPU machines of a known
/// architecture): later runs on such a GPU load them at once. Returns the cache directory and the
/// number of parts compiled; an error if there is no cache directory or it cannot be written.
pub fn fill_cache(arch: &str) -> Result<(PathBuf, usize), CudaError> {
    let dir = cache_dir().ok_or_else(|| {
        CudaError::Unavailable("no cache directory (set BITNET_CACHE_DIR)".into())
    })?;
    let missing: Vec<u32> = (1..=PARTS)
        .filter(|&p| !cache_stem(&dir, arch, p).with_extension("cubin").is_file())
        .collect();
    for c in compile_parts(arch, &missing)? {
        let stem = cache_stem(&dir, arch, c.part);
        if !cache_store(&stem, "cubin", &c.cubin, arch, c.part) {
            return Err(CudaError::Unavailable(format!(
                "could not write {}",
                stem.with_extension("cubin").display()
            )));
        }
    }
    Ok((dir, missing.len()))
}

/// The line said before `parts` of the kernels are compiled for `arch`, naming where they will
/// be kept (`dir`).
fn compile_note(arch: &str, dir: Option<&std::path::Path>, parts: usize) -> String {
    let kept = match dir {
        Some(dir) => format!("kept in {} for later runs", dir.display()),
        None => "not cached: no cache directory (set BITNET_CACHE_DIR)".to_string(),
    };
    let what = if parts as u32 == PARTS {
        "the CUDA kernels".to_string()
    } else {
        format!("{parts} of the {PARTS} parts of the CUDA kernels")
    };
    format!(
        "compiling {what} for {arch} on {} threads (first use on this GPU architecture: up to a \
         minute; {kept})",
        compile_threads(parts)
    )
}

fn lineinfo() -> bool {
    std::env::var("BITNET_CUDA_LINEINFO").is_ok_and(|v| v == "1")
}

/// Compiles every part of the kernels for `arch` (`sm_90`, ...), in parallel.
pub fn compile(arch: &str) -> Result<Vec<Compiled>, CudaError> {
    compile_parts(arch, &(1..=PARTS).collect::<Vec<_>>())
}

/// The threads that compile `parts` parts: one per core, at most one per part.
fn compile_threads(parts: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(parts)
}

/// Compiles `parts` of the kernels for `arch` on up to one thread per core (NVRTC may compile
/// different programs at once), in the order given.
pub fn compile_parts(arch: &str, parts: &[u32]) -> Result<Vec<Compiled>, CudaError> {
    let threads = compile_threads(parts.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<std::sync::Mutex<Option<Result<Compiled, CudaError>>>> =
        parts.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&part) = parts.get(i) else { break };
                    let r = compile_part(arch, part);
                    if let Ok(mut slot) = done[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    done.into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(CudaError::Compile("a compile thread failed".into())))
        })
        .collect()
}

/// Compiles part `part` (1..=[`PARTS`]; 0: all of them in one module) of the kernels for the
/// real architecture `arch` (`sm_90`, ...): PTX and machine code.
pub fn compile_part(arch: &str, part: u32) -> Result<Compiled, CudaError> {
    use cudarc::nvrtc::result;
    let target = match (arch, part) {
        ("sm_90", WGMMA_PART) => "sm_90a",
        _ => arch,
    };
    let mut opts = vec![
        format!("--gpu-architecture={target}"),
        // Separate multiply and add, as the CPU path computes: keeps int8 codes identical.
        "--fmad=false".to_string(),
        format!("--define-macro=BITNET_PART={part}"),
    ];
    if lineinfo() {
        // Source lines for compute-sanitizer and Nsight (BITNET_CUDA_LINEINFO=1).
        opts.push("-lineinfo".into());
    }
    let src = std::ffi::CString::new(KERNELS)
        .map_err(|_| CudaError::Compile("kernels.cu holds a NUL byte".into()))?;
    let prog = result::create_program(&src, Some(c"kernels.cu")).map_err(nvrtc_error)?;
    // SAFETY: `prog` was created above, read only after a successful compile and destroyed once.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let out = match compiled {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| {
                        std::ffi::CStr::from_ptr(l.as_ptr())
                            .to_string_lossy()
                            .into_owned()
                    })
                    .unwrap_or_else(|_| e.to_string());
                Err(CudaError::Compile(log))
            }
            Ok(()) => outputs(prog, part),
        };
        let _ = result::destroy_program(prog);
        out
    }
}

fn nvrtc_error(e: cudarc::nvrtc::result::NvrtcError) -> CudaError {
    CudaError::Compile(e.to_string())
}

/// The PTX and machine code of the compiled program `prog`.
///
/// # Safety
/// `prog` must be a successfully compiled NVRTC program that has not been destroyed.
unsafe fn outputs(
    prog: cudarc::nvrtc::sys::nvrtcProgram,
    part: u32,
) -> Result<Compiled, CudaError> {
    use cudarc::nvrtc::{result, sys};
    // SAFETY: the caller's; each buffer is sized by the matching size query.
    unsafe {
        let ptx = result::get_ptx(prog).map_err(nvrtc_error)?;
        let ptx = std::ffi::CStr::from_ptr(ptx.as_ptr())
            .to_string_lossy()
            .into_owned();
        let mut n = 0usize;
        sys::nvrtcGetCUBINSize(prog, &mut n)
            .result()
            .map_err(nvrtc_error)?;
        let mut cubin = vec![0u8; n];
        sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
            .result()
            .map_err(nvrtc_error)?;
        Ok(Compiled { part, ptx, cubin })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compile_note_names_the_architecture_and_where_the_kernels_are_kept() {
        let dir = std::path::Path::new("/home/u/.cache/bitnet-rs/cuda");
        let note = compile_note("sm_90", Some(dir), PARTS as usize);
        assert!(note.contains("sm_90"), "{note}");
        assert!(
            note.contains("kept in /home/u/.cache/bitnet-rs/cuda"),
            "{note}"
        );
        let note = compile_note("sm_80", None, 2);
        assert!(
            note.contains("sm_80") && note.contains("BITNET_CACHE_DIR"),
            "{note}"
        );
        assert!(note.contains(&format!("2 of the {PARTS} parts")), "{note}");
    }

    /// A minimal 64-bit ELF: header, one program header, two section headers (null, one of
    /// `payload` bytes), then the payload.
    fn tiny_elf(payload: usize) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 + 2 * 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[0x28..0x30].copy_from_slice(&120u64.to_le_bytes()); // e_shoff
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        let data = b.len() as u64;
        b[64 + 8..64 + 16].copy_from_slice(&data.to_le_bytes()); // p_offset
        b[64 + 0x20..64 + 0x28].copy_from_slice(&(payload as u64).to_le_bytes()); // p_filesz
        let sh = 120 + 64;
        b[sh + 4..sh + 8].copy_from_slice(&1u32.to_le_bytes()); // PROGBITS
        b[sh + 0x18..sh + 0x20].copy_from_slice(&data.to_le_bytes());
        b[sh + 0x20..sh + 0x28].copy_from_slice(&(payload as u64).to_le_bytes());
        b.resize(b.len() + payload, 0xab);
        b
    }

    #[test]
    fn only_whole_elf_images_reach_the_driver() {
        let good = tiny_elf(100);
        assert!(elf_is_whole(&good));
        for cut in [0, 3, 16, 63, 64, 119, 200, good.len() - 1] {
            assert!(!elf_is_whole(&good[..cut]), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes()); // section headers far away
        assert!(!elf_is_whole(&huge));
        let mut wide = good.clone();
        let sh = 120 + 64;
        wide[sh + 0x20..sh + 0x28].copy_from_slice(&u64::MAX.to_le_bytes()); // overflowing size
        assert!(!elf_is_whole(&wide));
        assert!(!elf_is_whole(
            b"not an ELF image at all, just some bytes that are long enough"
        ));
    }

    #[test]
    fn the_cache_keeps_two_other_builds_of_a_part_and_nothing_older() {
        let dir = std::env::temp_dir().join(format!("bitnet-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Oldest first: each file is written a second after the one before.
        let files = [
            ("kernels-0123abcd-sm_90.ptx", false), // the one-module PTX of an old build
            ("kernels-old3-sm_90-1.cubin", false), // older builds' part 1
            ("kernels-old2-sm_90-1.ptx", true),
            ("kernels-old1-sm_90-1.cubin", true),
            ("kernels-new-sm_90-1.cubin", true), // this build's part 1
            ("kernels-old3-sm_90-11.cubin", true), // part 11: trimmed when part 11 is written
            ("kernels-old3-sm_80-1.cubin", true), // another architecture
            ("kernels-0123abcd-sm_80.ptx", true),
            ("notes.txt", true),
        ];
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, (f, _)) in files.iter().enumerate() {
            let path = dir.join(f);
            std::fs::write(&path, b"x").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        cache_prune(&dir.join("kernels-new-sm_90-1"), "sm_90", 1);
        for (f, kept) in files {
            assert_eq!(dir.join(f).exists(), kept, "{f}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every part the source names exists and none is empty, so the parts hold every kernel
    /// (the compile test checks that none is in two).
    #[test]
    fn the_kernels_source_names_every_part_and_no_other() {
        let mut seen = std::collections::BTreeSet::new();
        for l in KERNELS.lines() {
            if let Some(n) = l.strip_prefix("#if IN_PART(") {
                let n: u32 = n.trim_end_matches(')').parse().expect("a part number");
                assert!((1..=PARTS).contains(&n), "part {n} of {PARTS}");
                seen.insert(n);
            }
        }
        assert_eq!(seen.len(), PARTS as usize);
    }
}

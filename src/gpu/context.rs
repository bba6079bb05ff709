//! The device context: which adapter, which device and queue, and what they can do.
//!
//! Adapter choice follows one rule everywhere (CLI, tests, benches): an explicit backend
//! (`--backend`) wins, else `WGPU_BACKEND`, else every backend; then an explicit index into that
//! backend's adapter list (`--adapter N`, the order `ddim adapters` prints), else the best by
//! device type (discrete > integrated > virtual > CPU).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use super::kernel::{self, Dispatch, Kernel, KernelSpec, PipelineCache};
use super::memory::{mib, MemoryBudget};
use super::precision::Precision;
use super::tune::{adapter_key, default_cache_file, TuneMode, Tuner};
use super::variants::KernelChoice;

/// A graphics API wgpu can drive; `gl` means OpenGL / OpenGL ES (EGL on Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub const ALL: [BackendChoice; 4] = [Self::Vulkan, Self::Metal, Self::Dx12, Self::Gl];

    pub fn backends(self) -> wgpu::Backends {
        match self {
            Self::Vulkan => wgpu::Backends::VULKAN,
            Self::Metal => wgpu::Backends::METAL,
            Self::Dx12 => wgpu::Backends::DX12,
            Self::Gl => wgpu::Backends::GL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
            Self::Dx12 => "dx12",
            Self::Gl => "gl",
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => Ok(Self::Vulkan),
            "metal" | "mtl" => Ok(Self::Metal),
            "dx12" | "d3d12" => Ok(Self::Dx12),
            "gl" | "gles" | "opengl" => Ok(Self::Gl),
            other => bail!("unknown backend {other:?}; expected one of vulkan, metal, dx12, gl"),
        }
    }
}

/// Which adapter to open. The default honours `WGPU_BACKEND` and picks the best device type.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    pub backend: Option<BackendChoice>,
    /// Index into the adapter list of the selected backends, in enumeration order.
    pub index: Option<usize>,
    /// Kernel variants to force on the opened context.
    pub kernels: KernelChoice,
    /// Device memory budget in MiB (`--gpu-memory`); None: the adapter's own, where known.
    pub memory_mib: Option<u64>,
    /// How weights and activations of every plan on the context are stored (`--precision`);
    /// f16 needs `SHADER_F16`, checked when the context opens.
    pub precision: Precision,
    /// Whether plans time their kernel variants on this adapter (`--tune`; default off in the
    /// library, auto in the CLI).
    pub tune: TuneMode,
    /// The tuning cache file; None: [`default_cache_file`].
    pub tune_cache: Option<std::path::PathBuf>,
}

impl AdapterChoice {
    pub fn backend(backend: BackendChoice) -> Self {
        Self {
            backend: Some(backend),
            ..Self::default()
        }
    }

    /// The backends to enumerate: the explicit choice, else `WGPU_BACKEND`, else all. An
    /// unknown name in `WGPU_BACKEND` is an error that names it (wgpu would skip it).
    pub fn backends(&self) -> Result<wgpu::Backends> {
        Ok(match self.backend {
            Some(b) => b.backends(),
            None => backends_from_env()?.unwrap_or(wgpu::Backends::all()),
        })
    }
}

/// `WGPU_BACKEND` (a comma list of backend names), when set and not empty.
fn backends_from_env() -> Result<Option<wgpu::Backends>> {
    let Some(value) = std::env::var_os("WGPU_BACKEND").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .with_context(|| format!("WGPU_BACKEND={value:?} is not UTF-8"))?;
    let mut backends = wgpu::Backends::empty();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let b: BackendChoice = name
            .parse()
            .with_context(|| format!("WGPU_BACKEND={text:?}"))?;
        backends |= b.backends();
    }
    if backends.is_empty() {
        bail!("WGPU_BACKEND={text:?} names no backend; expected a list of vulkan, metal, dx12, gl");
    }
    Ok(Some(backends))
}

/// `backends` in words: "vulkan, gl", or "any backend" for all of them.
pub fn backend_names(backends: wgpu::Backends) -> String {
    let names: Vec<&str> = BackendChoice::ALL
        .iter()
        .filter(|b| backends.contains(b.backends()))
        .map(|b| b.name())
        .collect();
    if names.len() == BackendChoice::ALL.len() {
        "any backend".into()
    } else {
        names.join(", ")
    }
}

/// The backends this build can drive on this operating system.
fn platform_backends() -> wgpu::Backends {
    let mut b = wgpu::Backends::VULKAN | wgpu::Backends::GL;
    if cfg!(windows) {
        b |= wgpu::Backends::DX12;
    }
    if cfg!(any(target_os = "macos", target_os = "ios")) {
        b |= wgpu::Backends::METAL;
    }
    b
}

/// What to do when `backends` has no adapter, as it is on this machine: a backend this
/// system does not have is named as such; adapters on other backends are listed with the
/// flag that reaches them; only with no adapter anywhere is a driver to install suggested.
pub fn no_adapter_hint(backends: wgpu::Backends) -> String {
    let mut parts = Vec::new();
    let foreign = backends - platform_backends();
    if !foreign.is_empty() {
        let names: Vec<&str> = BackendChoice::ALL
            .iter()
            .filter(|b| foreign.contains(b.backends()))
            .map(|b| b.name())
            .collect();
        parts.push(format!(
            "{} {} not available on {}",
            names.join(" and "),
            if names.len() == 1 { "is" } else { "are" },
            std::env::consts::OS
        ));
    }
    let others: Vec<String> = BackendChoice::ALL
        .iter()
        .filter(|b| !backends.contains(b.backends()) && platform_backends().contains(b.backends()))
        .flat_map(|&b| {
            let instance = new_instance(b.backends());
            enumerate_adapters(&instance, b.backends())
                .into_iter()
                .map(move |a| format!("{} (--backend {b})", a.get_info().name))
        })
        .collect();
    if !others.is_empty() {
        parts.push(format!("adapters on other backends: {}", others.join(", ")));
    } else if cfg!(target_os = "linux") {
        parts.push(
            "no backend has one; without a GPU, install Mesa's Vulkan driver (apt-get install \
             mesa-vulkan-drivers)"
                .into(),
        );
    } else {
        parts.push("no backend has one; install or update the GPU driver".into());
    }
    parts.join("; ")
}

/// A new instance for `backends`, with wgpu's environment overrides (e.g. `WGPU_DX12_COMPILER`).
pub fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu sees on `backends`, in enumeration order.
pub fn enumerate_adapters(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(backends))
}

fn device_type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Optional features we use when present (profiling, subgroup reductions); never required:
/// every kernel that needs one has a fallback.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SHADER_F16
}

static NEXT_CONTEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One opened adapter: device, queue, what it is and what it allows, and the pipeline cache.
pub struct GpuContext {
    pub instance: wgpu::Instance,
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// The limits the device was created with (the adapter's own limits).
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub pipelines: PipelineCache,
    /// Kernel variants forced on every plan and kernel built on this context.
    pub kernels: KernelChoice,
    /// Storage precision of the weights and plans built on this context ([`Precision`]).
    pub precision: Precision,
    /// Chooses kernel variants per shape ([`super::tune`]); off unless the choice asked for it.
    pub tuner: Tuner,
    /// Unique in this process: identifies the context where wgpu's own ids do not (devices of
    /// different instances, e.g. Vulkan and GL, can compare equal).
    pub id: u64,
    /// What a batch may use (see `gpu::memory`); None where the adapter cannot tell.
    pub memory: Option<MemoryBudget>,
    /// Device bytes created so far ([`GpuContext::bytes_created`]).
    pub(super) created: std::sync::atomic::AtomicU64,
    /// The first error wgpu reported outside an error scope, or the device's loss.
    failure: Arc<std::sync::Mutex<Failure>>,
    /// A tiny storage buffer bound where a kernel's optional input is absent.
    placeholder: std::sync::OnceLock<wgpu::Buffer>,
}

/// What made a context unusable: its device's loss, or an error outside every error scope.
#[derive(Default)]
struct Failure {
    lost: Option<String>,
    error: Option<String>,
}

impl GpuContext {
    /// Opens the adapter described by `choice`; fails with the list of what exists otherwise.
    pub fn new(choice: &AdapterChoice) -> Result<Self> {
        if cfg!(target_arch = "wasm32") && choice.tune != TuneMode::Off {
            // Tuning times kernels with the host clock (`Instant::now` panics on
            // wasm32-unknown-unknown) and blocking waits; it comes to the browser later.
            bail!(
                "kernel tuning (mode {}) is not available on wasm32; open the context with \
                 TuneMode::Off",
                choice.tune
            );
        }
        let backends = choice.backends()?;
        let instance = new_instance(backends);
        let adapters = enumerate_adapters(&instance, backends);
        if adapters.is_empty() {
            bail!(
                "no GPU adapter found on {} ({})",
                backend_names(backends),
                no_adapter_hint(backends)
            );
        }
        let adapter = match choice.index {
            Some(i) => {
                let n = adapters.len();
                adapters.into_iter().nth(i).ok_or_else(|| {
                    anyhow!(
                        "adapter index {i} does not exist: {n} adapter(s) on {}, numbered from 0 \
                         (see `ddim adapters`)",
                        backend_names(backends)
                    )
                })?
            }
            None => adapters
                .into_iter()
                .min_by_key(|a| device_type_rank(a.get_info().device_type))
                .expect("adapter list is not empty"),
        };
        let mut ctx = Self::from_adapter(instance, adapter)?;
        ctx.kernels = choice.kernels;
        choice.precision.check(ctx.features, &ctx.describe())?;
        ctx.precision = choice.precision;
        if choice.tune != TuneMode::Off {
            let cache = choice.tune_cache.clone().or_else(default_cache_file);
            ctx.tuner = Tuner::new(choice.tune, cache, adapter_key(&ctx.info));
        }
        if choice.memory_mib.is_some() {
            ctx.memory = MemoryBudget::for_adapter(&ctx.info, choice.memory_mib);
        }
        Ok(ctx)
    }

    /// Creates the device on `adapter`, asking for the adapter's own limits so that large
    /// batches can use what the hardware offers; kernels still fit wgpu's default limits.
    pub fn from_adapter(instance: wgpu::Instance, adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features() & wanted_features();
        let desc = wgpu::DeviceDescriptor {
            label: Some("ddim-wgpu"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .with_context(|| format!("creating a device on {} ({:?})", info.name, info.backend))?;
        // wgpu's default for an error outside every scope is a panic; keep the first one and
        // fail the next wait or read with it. A lost device is kept apart: it explains the
        // errors that follow it, so it is what gets reported.
        let failure = Arc::new(std::sync::Mutex::new(Failure::default()));
        let f = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let what = format!("GPU error outside any checked operation: {e}");
            log::error!("{what}");
            let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
            slot.error.get_or_insert(what);
        }));
        let f = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            let what = match message.trim() {
                "" => format!("the GPU device was lost ({reason:?})"),
                m => format!("the GPU device was lost ({reason:?}): {m}"),
            };
            log::error!("{what}");
            let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
            slot.lost.get_or_insert(what);
        });
        let memory = MemoryBudget::for_adapter(&info, None);
        Ok(Self {
            instance,
            adapter,
            device,
            queue,
            info,
            limits,
            features,
            pipelines: PipelineCache::default(),
            kernels: KernelChoice::default(),
            precision: Precision::F32,
            tuner: Tuner::off(),
            memory,
            created: Default::default(),
            failure,
            id: NEXT_CONTEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            placeholder: std::sync::OnceLock::new(),
        })
    }

    /// A CPU implementation (lavapipe, llvmpipe, WARP): prefers kernels without workgroup barriers.
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether reductions (group-norm statistics, softmax rows) use subgroup operations: the
    /// device has `SUBGROUP` and the context does not force the fallback.
    pub fn uses_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP) && !self.kernels.no_subgroups
    }

    /// "name (backend, device type)" for log lines and test output.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// One 16-byte read-only storage buffer, shared by every binding that a kernel declares but
    /// a dispatch does not use (never bind it as a kernel's output).
    pub fn placeholder(&self) -> &wgpu::Buffer {
        self.placeholder
            .get_or_init(|| self.upload("unused binding", &[0f32; 4]))
    }

    /// Blocks until all submitted work has finished; fails if the device was lost or wgpu
    /// reported an error outside the checked operations.
    pub fn wait_idle(&self) -> Result<()> {
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check_failure()?;
        polled
            .map(|_| ())
            .map_err(|e| anyhow!("waiting for the GPU: {e}"))
    }

    /// The device's loss or an uncaptured wgpu error, once one happened: after either, no
    /// result from this device can be trusted.
    pub fn check_failure(&self) -> Result<()> {
        // A poll that does not wait delivers a pending device-lost callback.
        let _ = self.device.poll(wgpu::PollType::Poll);
        let slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match slot.lost.as_ref().or(slot.error.as_ref()) {
            Some(what) => bail!("{what} (on {})", self.describe()),
            None => Ok(()),
        }
    }

    /// The largest storage binding a kernel may use, in bytes (a u32 is enough for offsets
    /// inside one binding; wgpu reports u64).
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns a
    /// captured error (or the device's loss) into an `Err` naming `what`.
    pub fn validated<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_failure()?;
        let out = kernel::validated(&self.device, what, f)?;
        self.check_failure().with_context(|| what.to_string())?;
        Ok(out)
    }

    /// Fails when `bytes` (everything `what` needs on the device) exceed the budget, naming the
    /// budget and where it comes from; passes when no budget is known.
    pub fn ensure_fits(&self, what: &str, bytes: u64) -> Result<()> {
        match &self.memory {
            Some(budget) if bytes > budget.bytes => bail!(
                "{what} needs {} of device memory on {}, but the budget is {} ({})",
                mib(bytes),
                self.info.name,
                mib(budget.bytes),
                budget.source
            ),
            _ => Ok(()),
        }
    }

    /// Device bytes created through this context so far (never decreases): the difference
    /// around building something is what that thing allocated.
    pub fn bytes_created(&self) -> u64 {
        self.created.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn count_created(&self, bytes: u64) {
        self.created
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes back `bytes` that were freed before anything else was built (the tuning pass's
    /// inputs), so that they do not count as the plan's memory.
    pub(super) fn uncount_created(&self, bytes: u64) {
        self.created
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The pipeline for `spec`, compiled on first use (see [`PipelineCache::get`]).
    pub fn kernel(&self, spec: &KernelSpec) -> Result<Arc<Kernel>> {
        self.pipelines.get(&self.device, spec)
    }
}

/// Encodes `dispatches` into one compute pass and submits it (without waiting).
pub fn run_dispatches(ctx: &GpuContext, dispatches: &[Dispatch], step: u32) -> Result<()> {
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("dispatches"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("dispatches"),
            timestamp_writes: None,
        });
        for d in dispatches {
            d.encode(&mut pass, step);
        }
    }
    ctx.validated("submitting dispatches", || {
        ctx.queue.submit([encoder.finish()]);
    })
}

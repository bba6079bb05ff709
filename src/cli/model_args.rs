//! Arguments several commands share: which model (`--model DIR`, `--arch NAME` or the bundled
//! one) and which adapter (`--backend`, `--adapter`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use ddim_wgpu::gpu::{
    AdapterChoice, BackendChoice, ConvVariant, KernelChoice, MatmulVariant, Precision, TuneMode,
};
use ddim_wgpu::model::dir::Layout;
use ddim_wgpu::model::{Model, ModelPaths, UNet2DConfig, Weights};
use ddim_wgpu::pipeline::Pipeline;
use ddim_wgpu::schedule::SchedulerConfig;

/// A built-in architecture, for runs without a checkpoint (timing, checking kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// google/ddpm-cifar10-32 (35.7 M parameters).
    Cifar10,
    /// The bundled MNIST model's architecture (1.1 M parameters).
    #[value(alias = "mnist-like")]
    Mnist,
    /// google/ddpm-{church,cat,bedroom,celebahq}-256 (113.7 M parameters, 256×256).
    #[value(name = "ddpm-256", alias = "church-256")]
    Ddpm256,
}

impl Arch {
    pub fn config(self) -> UNet2DConfig {
        match self {
            Self::Cifar10 => UNet2DConfig::cifar10(),
            Self::Mnist => UNet2DConfig::mnist_like(),
            Self::Ddpm256 => UNet2DConfig::ddpm_256(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Mnist => "mnist",
            Self::Ddpm256 => "ddpm-256",
        }
    }
}

/// `--model DIR` or `--arch NAME`; neither means the bundled MNIST model.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory (diffusers pipeline or flat layout); default: the bundled MNIST model.
    #[arg(long, value_name = "DIR", conflicts_with = "arch")]
    pub model: Option<PathBuf>,
    /// Instead of a model: a built-in architecture with seeded random weights.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
}

/// What [`ModelArgs::load`] loaded.
pub struct Loaded {
    pub pipeline: Pipeline,
    /// For reports: the directory, `arch:NAME (random weights, seed S)` or the bundled model.
    pub label: String,
    /// The checkpoint's weight dtype, or "random" for `--arch`.
    pub dtype: String,
}

impl ModelArgs {
    /// Loads the model; `--arch` gets random weights from `seed` (and, for mnist, the bundled
    /// model's scheduler; cifar10 gets DDIM defaults).
    pub fn load(&self, seed: u64) -> Result<Loaded> {
        if let Some(dir) = &self.model {
            let pipeline = Pipeline::load(dir)?;
            let mut dtype = pipeline.model.weights.source_dtype.clone();
            let mapped = pipeline.model.weights.legacy_names_mapped;
            if mapped > 0 {
                dtype.push_str(&format!("; {mapped} legacy attention names mapped"));
            }
            let label = format!(
                "{} ({:?} layout)",
                dir.display(),
                pipeline.model.paths.layout
            );
            return Ok(Loaded {
                pipeline,
                label,
                dtype,
            });
        }
        let bundled = || ddim_wgpu::bundled::pipeline().context("loading the bundled model");
        let Some(arch) = self.arch else {
            let pipeline = bundled()?;
            let dtype = pipeline.model.weights.source_dtype.clone();
            return Ok(Loaded {
                pipeline,
                label: "bundled (weights/mnist)".to_string(),
                dtype,
            });
        };
        let config = arch.config();
        let scheduler = match arch {
            Arch::Cifar10 | Arch::Ddpm256 => SchedulerConfig::default(),
            Arch::Mnist => bundled()?.scheduler,
        };
        let weights = Weights::random(&config, seed)?;
        let label = format!("arch:{} (random weights, seed {seed})", arch.name());
        let root = PathBuf::from(&label);
        let model = Model {
            paths: ModelPaths {
                config: root.join("config.json"),
                weights: root.join("diffusion_pytorch_model.safetensors"),
                scheduler_config: None,
                layout: Layout::Flat,
                root,
            },
            config,
            weights,
        };
        Ok(Loaded {
            pipeline: Pipeline::new(model, scheduler)?,
            label,
            dtype: "random".to_string(),
        })
    }
}

/// `--backend`, `--adapter` and `--gpu-memory`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AdapterArgs {
    /// wgpu backend: vulkan, metal, dx12 or gl (default: WGPU_BACKEND, else all).
    #[arg(long)]
    pub backend: Option<BackendChoice>,
    /// Adapter index among those of the chosen backends (see `ddim adapters`).
    #[arg(long, value_parser = super::numbers::at_least::<usize, 0>)]
    pub adapter: Option<usize>,
    /// Device memory this run may use, in MiB: batches are sized to it and larger ones
    /// refused before anything is allocated (default: the host's available memory on a CPU
    /// adapter; unknown on a GPU, where wgpu cannot ask).
    #[arg(long, value_name = "MIB", value_parser = super::numbers::at_least::<u64, 1>)]
    pub gpu_memory: Option<u64>,
    /// How the GPU stores weights and activations: f32, or f16 (half the memory and traffic;
    /// products, statistics, softmax and the sampler stay f32; needs SHADER_F16).
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    pub precision: Precision,
    /// Kernel tuning: auto times each kernel shape's variants once per adapter and caches the
    /// fastest (DDIM_TUNE_CACHE, else the user's cache directory); off uses the fixed rule per
    /// device type; force times everything again.
    #[arg(long, value_name = "auto|off|force", default_value = "auto")]
    pub tune: TuneMode,
}

impl AdapterArgs {
    /// True when `--adapter` or `--backend` asks for a particular GPU adapter.
    pub fn names_one(&self) -> bool {
        self.adapter.is_some() || self.backend.is_some()
    }

    /// The adapter to open, with the kernel variants forced by `DDIM_CONV_VARIANT` and
    /// `DDIM_MATMUL_VARIANT` (the CLI reads them; the library takes them as values).
    pub fn choice(&self) -> Result<AdapterChoice> {
        let tune_cache = tune_cache_from_env();
        if let (Some(path), true) = (&tune_cache, self.tune != TuneMode::Off) {
            // An output like any other: a directory or a loop there is refused before any work.
            ddim_wgpu::output::resolve(path)
                .with_context(|| format!("DDIM_TUNE_CACHE={}", path.display()))?;
        }
        Ok(AdapterChoice {
            backend: self.backend,
            index: self.adapter,
            kernels: kernel_choice_from_env()?,
            memory_mib: self.gpu_memory,
            precision: self.precision,
            tune: self.tune,
            tune_cache,
        })
    }
}

/// `DDIM_TUNE_CACHE=FILE`: the tuning cache to read and write instead of the user's.
pub fn tune_cache_from_env() -> Option<PathBuf> {
    std::env::var_os("DDIM_TUNE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `DDIM_CONV_VARIANT=reg|tiled|tiled128` and `DDIM_MATMUL_VARIANT=strided|k4|tiled`, where set, and
/// `DDIM_NO_SUBGROUPS=1` (reductions without subgroup operations).
pub fn kernel_choice_from_env() -> Result<KernelChoice> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Ok(KernelChoice {
        inject_faulty_conv: false,
        conv: var("DDIM_CONV_VARIANT")
            .map(|v| ConvVariant::parse(&v).context("DDIM_CONV_VARIANT"))
            .transpose()?,
        matmul: var("DDIM_MATMUL_VARIANT")
            .map(|v| MatmulVariant::parse(&v).context("DDIM_MATMUL_VARIANT"))
            .transpose()?,
        no_subgroups: match var("DDIM_NO_SUBGROUPS").as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => anyhow::bail!("DDIM_NO_SUBGROUPS={other:?}: expected 1 or 0"),
        },
    })
}

//! Compute pipelines, cached by (shader, entry point, binding layout), and the `Dispatch` record
//! a plan replays into one compute pass. Only wgpu types come in here: `GpuContext` owns a
//! `PipelineCache` and builds on this module, never the other way round.
//!
//! Every kernel uses one bind group (group 0) whose bindings are numbered 0.. in the order of
//! `KernelSpec::bindings`. Layouts are explicit (not derived from the shader) so that a binding
//! can take a dynamic offset, e.g. a per-step slice of a table selected at encode time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};

/// How a kernel sees one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    Uniform,
    /// A uniform bound with a dynamic offset (one slice per step of a table).
    UniformDynamic,
    StorageRead,
    /// A read-only storage buffer bound with a dynamic offset.
    StorageReadDynamic,
    StorageReadWrite,
}

impl Binding {
    fn layout_entry(self, binding: u32) -> wgpu::BindGroupLayoutEntry {
        let (ty, has_dynamic_offset) = match self {
            Self::Uniform => (wgpu::BufferBindingType::Uniform, false),
            Self::UniformDynamic => (wgpu::BufferBindingType::Uniform, true),
            Self::StorageRead => (wgpu::BufferBindingType::Storage { read_only: true }, false),
            Self::StorageReadDynamic => {
                (wgpu::BufferBindingType::Storage { read_only: true }, true)
            }
            Self::StorageReadWrite => {
                (wgpu::BufferBindingType::Storage { read_only: false }, false)
            }
        };
        wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset,
                min_binding_size: None,
            },
            count: None,
        }
    }

    pub fn is_dynamic(self) -> bool {
        matches!(self, Self::UniformDynamic | Self::StorageReadDynamic)
    }
}

/// Everything that identifies a compiled pipeline.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    /// The shader's name, e.g. "conv2d" (also the cache key for its source).
    pub shader: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    pub bindings: Vec<Binding>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    bindings: Vec<Binding>,
}

impl KernelSpec {
    fn key(&self) -> PipelineKey {
        PipelineKey {
            shader: self.shader,
            entry: self.entry,
            bindings: self.bindings.clone(),
        }
    }
}

/// Runs `f` inside validation, out-of-memory and internal error scopes on `device` and turns
/// a captured error into an `Err` naming `what`.
pub fn validated<T>(device: &wgpu::Device, what: &str, f: impl FnOnce() -> T) -> Result<T> {
    let scopes = [
        wgpu::ErrorFilter::Internal,
        wgpu::ErrorFilter::OutOfMemory,
        wgpu::ErrorFilter::Validation,
    ]
    .map(|filter| device.push_error_scope(filter));
    let out = f();
    // Popped innermost first; the first error found wins.
    let mut first = None;
    for scope in scopes.into_iter().rev() {
        if let Some(e) = pollster::block_on(scope.pop()) {
            first.get_or_insert(e);
        }
    }
    match first {
        Some(wgpu::Error::OutOfMemory { .. }) => Err(anyhow!(
            "{what}: the GPU is out of memory (try a smaller --batch, or --gpu-memory MIB to \
             have batches sized to what it has)"
        )),
        Some(e) => Err(anyhow!("{what}: {e}")),
        None => Ok(out),
    }
}

/// A compiled pipeline with its bind-group layout.
pub struct Kernel {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub bindings: Vec<Binding>,
}

impl Kernel {
    /// One bind group over `buffers` (whole buffers, or (buffer, offset, size) slices), in
    /// binding order. Dynamic bindings must be given a slice whose size is one step's worth.
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        buffers: &[BufferSlice<'_>],
    ) -> Result<wgpu::BindGroup> {
        anyhow::ensure!(
            buffers.len() == self.bindings.len(),
            "{}: {} buffers given for {} bindings",
            self.label,
            buffers.len(),
            self.bindings.len()
        );
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: b.size.and_then(wgpu::BufferSize::new),
                }),
            })
            .collect();
        validated(device, &format!("bind group for {}", self.label), || {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&self.label),
                layout: &self.layout,
                entries: &entries,
            })
        })
    }
}

/// A buffer or a byte range of one, for binding.
#[derive(Clone, Copy)]
pub struct BufferSlice<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    /// None: to the end of the buffer.
    pub size: Option<u64>,
}

impl<'a> From<&'a wgpu::Buffer> for BufferSlice<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            size: None,
        }
    }
}

/// Pipelines compiled so far; creating one is slow, so each spec is compiled once per device.
#[derive(Default)]
pub struct PipelineCache {
    pipelines: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.pipelines.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pipeline for `spec` on `device`, compiled on first use. Shader or layout errors come
    /// back as `Err` naming the shader and entry point.
    pub fn get(&self, device: &wgpu::Device, spec: &KernelSpec) -> Result<Arc<Kernel>> {
        let key = spec.key();
        if let Some(k) = self.pipelines.lock().expect("pipeline cache").get(&key) {
            return Ok(k.clone());
        }
        let label = format!("{}::{}", spec.shader, spec.entry);
        let module = self.shader_module(device, spec)?;
        let entries: Vec<_> = spec
            .bindings
            .iter()
            .enumerate()
            .map(|(i, b)| b.layout_entry(i as u32))
            .collect();
        let kernel = validated(device, &format!("compiling {label}"), || {
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            Kernel {
                label: label.clone(),
                pipeline,
                layout,
                bindings: spec.bindings.clone(),
            }
        })
        .with_context(|| format!("shader {}.wgsl", spec.shader))?;
        let kernel = Arc::new(kernel);
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key, kernel.clone());
        Ok(kernel)
    }

    fn shader_module(
        &self,
        device: &wgpu::Device,
        spec: &KernelSpec,
    ) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().expect("shader module cache");
        if let Some(m) = modules.get(spec.shader) {
            return Ok(m.clone());
        }
        let module = validated(device, &format!("shader {}.wgsl", spec.shader), || {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(spec.shader),
                source: wgpu::ShaderSource::Wgsl(spec.source.into()),
            })
        })?;
        modules.insert(spec.shader, module.clone());
        Ok(module)
    }
}

/// One recorded kernel launch: what a plan replays into a compute pass.
pub struct Dispatch {
    pub label: String,
    pub kernel: Arc<Kernel>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// For each dynamic binding (in binding order), the byte stride per step: the offset used
    /// when encoding step `s` is `s * stride`.
    pub dynamic_strides: Vec<u32>,
    /// Useful floating-point operations and bytes moved, for benchmarks.
    pub flops: u64,
    pub bytes: u64,
}

impl Dispatch {
    /// Records this dispatch into `pass` for step `step` (ignored without dynamic bindings).
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: u32) {
        let offsets: Vec<u32> = self.dynamic_strides.iter().map(|s| s * step).collect();
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &offsets);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Splits `n` workgroups into an (x, y) grid within the per-dimension limit; the shader
/// recovers the linear index as `y * x_count + x` and must skip indices ≥ n.
pub fn grid_2d(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        [n.div_ceil(y), y, 1]
    }
}

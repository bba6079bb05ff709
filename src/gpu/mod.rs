//! The wgpu backend: device context, WGSL kernels, and the compiled U-Net plan.

pub mod buffers;
pub mod context;
pub mod kernel;
pub mod kernels;
pub mod plan;
pub mod profile;
pub mod sampler;

pub use context::{AdapterChoice, BackendChoice, GpuContext};
pub use kernel::{Binding, Dispatch, Kernel, KernelSpec};
pub use sampler::{run_table, sample_images};

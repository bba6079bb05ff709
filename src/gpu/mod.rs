//! The wgpu backend: device context, WGSL kernels, and the compiled U-Net plan.

pub mod buffers;
pub mod candidates;
pub mod choices;
pub mod context;
pub mod kernel;
pub mod kernels;
pub mod memory;
pub mod plan;
pub mod pool;
pub mod precision;
pub mod profile;
pub mod sampler;
pub mod tensor;
pub mod tune;
pub mod tuning;
pub mod variants;
pub mod weights;

pub use context::{AdapterChoice, BackendChoice, GpuContext};
pub use kernel::{Binding, Dispatch, Kernel, KernelSpec};
pub use precision::Precision;
pub use tensor::{GpuTensor, StepTable};
pub use tune::TuneMode;
pub use variants::{ConvVariant, KernelChoice, MatmulVariant, Reduction};
pub use weights::GpuWeights;

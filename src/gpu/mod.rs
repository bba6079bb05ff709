//! The wgpu backend: device context, WGSL kernels, and the compiled U-Net plan.

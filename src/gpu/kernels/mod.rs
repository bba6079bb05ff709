//! One module per kernel family: params struct, bindings, dispatch size, FLOPs and bytes.

pub mod attention;
pub mod conv2d;
pub mod ddim_step;
pub mod elementwise;
pub mod group_norm;
pub mod linear;
pub mod smoke;
pub mod time_embedding;

use crate::gpu::KernelSpec;

/// Pipeline specs that `tests/shaders_naga.rs` checks name an existing shader and entry point
/// (families whose entry point is picked per shape, plus the smoke kernel).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut specs = vec![smoke::spec()];
    specs.extend(conv2d::all_specs());
    specs
}

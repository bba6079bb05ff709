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

/// Every pipeline spec that a family compiles with `override` constants, so that
/// `tests/shaders_naga.rs` translates each shader with the constant values really used.
/// Families without overrides need not be listed (their shaders are checked as written).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut specs = vec![smoke::spec()];
    specs.extend(conv2d::all_specs());
    specs
}

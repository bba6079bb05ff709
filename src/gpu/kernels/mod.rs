//! One module per kernel family: params struct, bindings, dispatch size, FLOPs and bytes.

pub mod attention;
pub mod conv2d;
pub mod ddim_step;
pub mod elementwise;
pub mod group_norm;
pub mod linear;
pub mod multistep;
pub mod smoke;
pub mod threshold;
pub mod time_embedding;

use crate::gpu::KernelSpec;

/// Every shader module the crate compiles, by name, as compiled (conv2d is assembled from two
/// files; the sampler updates and the threshold search append predict.wgsl), for
/// tests/shaders_naga.rs and tests/shader_contracts.rs.
pub const SHADERS: [(&str, &str); 10] = [
    ("attention", attention::SOURCE),
    ("conv2d", conv2d::SOURCE),
    ("ddim_step", ddim_step::SOURCE),
    ("elementwise", elementwise::SOURCE),
    ("group_norm", group_norm::SOURCE),
    ("linear", linear::SOURCE),
    ("linear_k4", linear::SOURCE_K4),
    ("multistep", multistep::SOURCE),
    ("smoke", smoke::SOURCE),
    ("threshold", threshold::SOURCE),
];

/// Shader modules compiled only where the device has `SUBGROUP` (each the baseline shader with a
/// subgroup kernel appended; the baseline stays the fallback).
pub const SUBGROUP_SHADERS: [(&str, &str); 2] = [
    ("attention_subgroup", attention::SOURCE_SUBGROUP),
    ("group_norm_subgroup", group_norm::SOURCE_SUBGROUP),
];

/// Pipeline specs that `tests/shaders_naga.rs` checks name an existing shader and entry point
/// (families whose entry point is picked per shape, plus the smoke kernel).
pub fn all_specs() -> Vec<KernelSpec> {
    let mut specs = vec![smoke::spec()];
    specs.extend(conv2d::all_specs());
    specs
}

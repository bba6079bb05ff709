//! One module per kernel family: params struct, bindings, dispatch size, FLOPs and bytes.

pub mod attention;
pub mod consistency;
pub mod conv2d;
pub mod ddim_step;
pub mod elementwise;
pub mod group_norm;
pub mod guide;
pub mod linear;
pub mod multistep;
pub mod resample;
pub mod sigma_step;
pub mod smoke;
pub mod threshold;
pub mod time_embedding;

use crate::gpu::precision::{specialize, Precision};
use crate::gpu::KernelSpec;

/// Every shader module the crate compiles, by name, as compiled (conv2d is assembled from two
/// files; the sampler updates and the threshold search append predict.wgsl), for
/// tests/shaders_naga.rs and tests/shader_contracts.rs.
pub const SHADERS: [(&str, &str); 15] = [
    ("attention", attention::SOURCE),
    ("consistency", consistency::SOURCE),
    ("conv2d", conv2d::SOURCE),
    ("ddim_step", ddim_step::SOURCE),
    ("elementwise", elementwise::SOURCE),
    ("embedding", time_embedding::SOURCE),
    ("group_norm", group_norm::SOURCE),
    ("guide_std", guide::STD_SOURCE),
    ("linear", linear::SOURCE),
    ("linear_k4", linear::SOURCE_K4),
    ("multistep", multistep::SOURCE),
    ("resample", resample::SOURCE),
    ("sigma_step", sigma_step::SOURCE),
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

/// Every specialisation the kernels compile in half precision, for tests/shaders_naga.rs.
pub fn f16_shaders() -> Vec<(&'static str, &'static str)> {
    let h = Precision::F16;
    let f = Precision::F32;
    let mut out = vec![
        specialize("conv2d", conv2d::SOURCE, &[("act", h)]),
        specialize("group_norm", group_norm::SOURCE, &[("act", h)]),
        specialize("resample", resample::SOURCE, &[("act", h)]),
        specialize(
            "group_norm_subgroup",
            group_norm::SOURCE_SUBGROUP,
            &[("act", h)],
        ),
    ];
    for (i, o) in [(h, h), (f, h), (h, f)] {
        out.push(specialize(
            "elementwise",
            elementwise::SOURCE,
            &[("in_t", i), ("out_t", o)],
        ));
    }
    for types in linear::F16_TYPES {
        out.push(linear::specialized(linear::SOURCE, "linear", types));
        out.push(linear::specialized(linear::SOURCE_K4, "linear_k4", types));
    }
    out
}

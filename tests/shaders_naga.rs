//! Portability without a GPU: every shader the crate compiles (`kernels::SHADERS`, the source
//! exactly as compiled, so conv2d with its generated rows appended) is parsed and validated by
//! naga and translated to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL: 310 es and 430
//! core) for every entry point, so a shader error never first appears on a user's Metal or DX12
//! machine. Every `shaders/*.wgsl` file must be part of one of those sources. The subgroup kernels
//! (`kernels::SUBGROUP_SHADERS`) are validated with naga's subgroup capability, and everything
//! else without it, so no baseline shader depends on an optional feature.

use std::path::{Path, PathBuf};

use ddim_wgpu::gpu::kernels::{SHADERS, SUBGROUP_SHADERS};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shader_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    files
}

fn validate(module: &naga::Module, what: &str, caps: Capabilities) -> naga::valid::ModuleInfo {
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    if caps.contains(Capabilities::SUBGROUP) {
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    if caps.contains(Capabilities::SHADER_FLOAT16) {
        // Subgroup kernels are specialised to f16 too.
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator
        .validate(module)
        .unwrap_or_else(|e| panic!("{what}: validation failed: {}", e.emit_to_string("")))
}

/// Translates `entry` of `module` to every backend language (GLSL only without f16: naga's GLSL
/// writer has no f16, and wgpu's GL backend offers no SHADER_F16, so f16 never runs on GL).
fn translate(module: &naga::Module, info: &naga::valid::ModuleInfo, entry: &str, what: &str) {
    translate_to(module, info, entry, what, true)
}

fn translate_to(
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
    what: &str,
    glsl: bool,
) {
    let stage = naga::ShaderStage::Compute;

    let spv_pipeline = spv::PipelineOptions {
        shader_stage: stage,
        entry_point: entry.to_string(),
    };
    spv::write_vec(module, info, &spv::Options::default(), Some(&spv_pipeline))
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));

    let msl_pipeline = msl::PipelineOptions {
        entry_point: Some((stage, entry.to_string())),
        ..Default::default()
    };
    msl::write_string(module, info, &msl::Options::default(), &msl_pipeline)
        .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));

    let hlsl_options = hlsl::Options::default();
    let hlsl_pipeline = hlsl::PipelineOptions {
        entry_point: Some((stage, entry.to_string())),
    };
    let mut hlsl_out = String::new();
    hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl_pipeline)
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));

    let versions = if glsl {
        vec![glsl::Version::new_gles(310), glsl::Version::Desktop(430)]
    } else {
        vec![]
    };
    for version in versions {
        let options = glsl::Options {
            version,
            ..Default::default()
        };
        let pipeline = glsl::PipelineOptions {
            shader_stage: stage,
            entry_point: entry.to_string(),
            multiview: None,
        };
        let mut out = String::new();
        glsl::Writer::new(
            &mut out,
            module,
            info,
            &options,
            &pipeline,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write())
        .unwrap_or_else(|e| panic!("{what}: GLSL {version}: {e}"));
    }
}

#[test]
fn every_shader_file_is_part_of_a_compiled_shader() {
    let files = shader_files();
    assert!(!files.is_empty(), "no shaders found under shaders/");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            SHADERS
                .iter()
                .chain(&SUBGROUP_SHADERS)
                .any(|(_, source)| source.contains(&text)),
            "{} is in no source of ddim_wgpu::gpu::kernels::SHADERS, so nothing checks it",
            path.display()
        );
    }
}

#[test]
fn every_shader_validates_and_translates_to_every_backend() {
    // Only baseline capabilities for the required paths; subgroups only where a fallback exists.
    let sets = [
        (&SHADERS[..], Capabilities::default()),
        (&SUBGROUP_SHADERS[..], Capabilities::SUBGROUP),
    ];
    for (name, source, caps) in sets
        .iter()
        .flat_map(|(list, caps)| list.iter().map(move |(n, s)| (n, s, *caps)))
    {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        let info = validate(&module, name, caps);
        let entries: Vec<String> = module
            .entry_points
            .iter()
            .filter(|e| e.stage == naga::ShaderStage::Compute)
            .map(|e| e.name.clone())
            .collect();
        assert!(!entries.is_empty(), "{name}: no compute entry point");
        for entry in &entries {
            translate(&module, &info, entry, &format!("{name}::{entry}"));
        }
        eprintln!("{name}: {} entry point(s) OK", entries.len());
    }
}

#[test]
fn every_listed_spec_names_an_existing_shader_and_entry_point() {
    for spec in ddim_wgpu::gpu::kernels::all_specs() {
        assert!(
            SHADERS
                .iter()
                .any(|&(n, source)| n == spec.shader && source == spec.source),
            "spec for {}: no shader {} with its source in kernels::SHADERS",
            spec.entry,
            spec.shader
        );
        let module = naga::front::wgsl::parse_str(spec.source).expect("parsed above");
        assert!(
            module.entry_points.iter().any(|e| e.name == spec.entry),
            "{} has no entry point {}",
            spec.shader,
            spec.entry
        );
    }
}

/// Every half-precision specialisation the kernels compile (`gpu::kernels::f16_shaders`):
/// validated with naga's f16 capability and translated to SPIR-V, MSL and HLSL.
#[test]
fn every_f16_specialisation_validates_and_translates() {
    let shaders = ddim_wgpu::gpu::kernels::f16_shaders();
    assert!(shaders.len() >= 10, "only {} f16 shaders", shaders.len());
    for (name, source) in shaders {
        assert!(source.starts_with("enable f16;"), "{name}");
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        let caps = Capabilities::SHADER_FLOAT16
            | Capabilities::SHADER_FLOAT16_IN_FLOAT32
            | Capabilities::SUBGROUP;
        let info = validate(&module, name, caps);
        for e in module
            .entry_points
            .iter()
            .filter(|e| e.stage == naga::ShaderStage::Compute)
        {
            translate_to(
                &module,
                &info,
                &e.name,
                &format!("{name}::{}", e.name),
                false,
            );
        }
        eprintln!("{name}: OK");
    }
}

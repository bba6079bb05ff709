//! `ddim adapters`: every adapter wgpu sees, with the limits and features our kernels care about.
//! The index printed is the one `--adapter N` takes (with the same `--backend` / `WGPU_BACKEND`).

use anyhow::Result;
use ddim_wgpu::gpu::context::{enumerate_adapters, new_instance};
use ddim_wgpu::gpu::kernels::conv2d::Variant;
use ddim_wgpu::gpu::tune;
use ddim_wgpu::gpu::{AdapterChoice, BackendChoice};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Only this backend: vulkan, metal, dx12 or gl (default: `WGPU_BACKEND`, else all).
    #[arg(long)]
    backend: Option<BackendChoice>,
    /// Print a JSON array instead of text.
    #[arg(long)]
    json: bool,
}

/// Features worth knowing about for this project, by name.
const FEATURES: [(&str, wgpu::Features); 6] = [
    ("SHADER_F16", wgpu::Features::SHADER_F16),
    ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
    (
        "TIMESTAMP_QUERY_INSIDE_ENCODERS",
        wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
    ),
    (
        "TIMESTAMP_QUERY_INSIDE_PASSES",
        wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
    ),
    ("SUBGROUP", wgpu::Features::SUBGROUP),
    ("PIPELINE_CACHE", wgpu::Features::PIPELINE_CACHE),
];

/// What the tuning cache holds for this adapter: how many shapes run with which variant.
fn tuned(info: &wgpu::AdapterInfo) -> Value {
    let Some(path) = super::model_args::tune_cache_from_env().or_else(tune::default_cache_file)
    else {
        return json!(null);
    };
    match tune::cached_choices(&path, &tune::adapter_key(info)) {
        Ok(choices) => {
            let mut counts = serde_json::Map::new();
            for c in &choices {
                let key = format!("{} {}", c.kernel, c.variant);
                let n = counts.get(&key).and_then(|v| v.as_u64()).unwrap_or(0);
                counts.insert(key, json!(n + 1));
            }
            json!({"cache": path.display().to_string(), "shapes": choices.len(), "variants": counts})
        }
        Err(e) => json!({"cache": path.display().to_string(), "error": format!("{e:#}")}),
    }
}

fn describe(index: usize, adapter: &wgpu::Adapter) -> Value {
    let info = adapter.get_info();
    let l = adapter.limits();
    let f = adapter.features();
    let features: Vec<&str> = FEATURES
        .iter()
        .filter(|(_, bit)| f.contains(*bit))
        .map(|(name, _)| *name)
        .collect();
    json!({
        "index": index,
        "name": info.name,
        "backend": format!("{:?}", info.backend).to_lowercase(),
        "device_type": format!("{:?}", info.device_type),
        "vendor": format!("{:#06x}", info.vendor),
        "device": format!("{:#06x}", info.device),
        "driver": info.driver,
        "driver_info": info.driver_info,
        "subgroup_size": [info.subgroup_min_size, info.subgroup_max_size],
        "limits": {
            "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_buffer_size": l.max_buffer_size,
            "max_uniform_buffer_binding_size": l.max_uniform_buffer_binding_size,
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_size": [
                l.max_compute_workgroup_size_x,
                l.max_compute_workgroup_size_y,
                l.max_compute_workgroup_size_z
            ],
            "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            "min_storage_buffer_offset_alignment": l.min_storage_buffer_offset_alignment,
        },
        "features": features,
        // The fixed rule (--tune off, or a shape not yet tuned with the tuner paused).
        "conv_variant": Variant::default_for(info.device_type).name(),
        "tuned": tuned(&info),
        // What this crate does with the features: `--precision` values, and how group-norm
        // statistics and softmax rows are reduced.
        "precisions": if f.contains(wgpu::Features::SHADER_F16) { json!(["f32", "f16"]) } else { json!(["f32"]) },
        "reductions": if f.contains(wgpu::Features::SUBGROUP) { "subgroup" } else { "per-invocation" },
    })
}

fn mib(bytes: &Value) -> String {
    let b = bytes.as_u64().unwrap_or(0);
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

fn print_text(a: &Value) {
    let l = &a["limits"];
    println!(
        "[{}] {} ({}, {})",
        a["index"],
        a["name"].as_str().unwrap_or(""),
        a["backend"].as_str().unwrap_or(""),
        a["device_type"].as_str().unwrap_or("")
    );
    println!(
        "    driver: {} {}",
        a["driver"].as_str().unwrap_or(""),
        a["driver_info"].as_str().unwrap_or("")
    );
    println!(
        "    storage buffers/stage {}, max binding {}, max buffer {}, workgroup storage {} B, \
         invocations/workgroup {}, workgroups/dim {}",
        l["max_storage_buffers_per_shader_stage"],
        mib(&l["max_storage_buffer_binding_size"]),
        mib(&l["max_buffer_size"]),
        l["max_compute_workgroup_storage_size"],
        l["max_compute_invocations_per_workgroup"],
        l["max_compute_workgroups_per_dimension"]
    );
    let features: Vec<&str> = a["features"]
        .as_array()
        .map(|v| v.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    let tuned = &a["tuned"];
    match tuned["shapes"].as_u64() {
        Some(n) => {
            let counts: Vec<String> = tuned["variants"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}×{v}")).collect())
                .unwrap_or_default();
            println!(
                "    tuned variants (--tune auto): {n} shapes in {}{}{}",
                tuned["cache"].as_str().unwrap_or(""),
                if counts.is_empty() { "" } else { ": " },
                counts.join(", ")
            );
        }
        None if tuned["error"].is_string() => println!(
            "    tuning cache unusable (ignored): {}",
            tuned["error"].as_str().unwrap_or("")
        ),
        None => {}
    }
    println!(
        "    fixed conv rule: {} (DDIM_CONV_VARIANT=reg|tiled|tiled128 overrides); reductions: {} \
         (DDIM_NO_SUBGROUPS=1 forces per-invocation); --precision: {}",
        a["conv_variant"].as_str().unwrap_or(""),
        a["reductions"].as_str().unwrap_or(""),
        a["precisions"]
            .as_array()
            .map(|v| v
                .iter()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" or "))
            .unwrap_or_default()
    );
    println!(
        "    subgroup size {}..{}; features: {}",
        a["subgroup_size"][0],
        a["subgroup_size"][1],
        if features.is_empty() {
            "none of interest".to_string()
        } else {
            features.join(", ")
        }
    );
}

pub fn run(args: Args) -> Result<()> {
    let backends = AdapterChoice {
        backend: args.backend,
        ..AdapterChoice::default()
    }
    .backends()?;
    let instance = new_instance(backends);
    let adapters: Vec<Value> = enumerate_adapters(&instance, backends)
        .iter()
        .enumerate()
        .map(|(i, a)| describe(i, a))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&adapters)?);
    } else if adapters.is_empty() {
        println!(
            "no adapters found on {} ({})",
            ddim_wgpu::gpu::context::backend_names(backends),
            ddim_wgpu::gpu::context::no_adapter_hint(backends)
        );
    } else {
        for a in &adapters {
            print_text(a);
        }
    }
    Ok(())
}

//! `ddim bench --compare A.json B.json …`: benchmark reports from different machines side by
//! side — `ddim bench --json` documents (one object, or the array of `--all-adapters`) and
//! `tools/bench_torch.py --json` reports, which share the fields compared here — as one table,
//! and a PNG chart of each kernel's achieved GFLOP/s per adapter.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::chart::{BarChart, Group};

/// The figures of one report that the comparison shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The file it came from (its stem), to tell apart reports of the same adapter.
    pub file: String,
    /// "adapter (backend)", with the file it came from when several reports share an adapter.
    pub label: String,
    pub model: String,
    pub batch: Option<u64>,
    pub precision: String,
    pub images_per_s: Option<f64>,
    pub forward_gflops: Option<f64>,
    pub gemm_gflops: Option<f64>,
    /// Per-kernel rows of the whole-run profile: (kernel, GFLOP/s, share of the GPU time).
    pub kernels: Vec<(String, f64, f64)>,
}

fn entry(doc: &Value, file: &Path) -> Result<Entry> {
    ensure!(
        doc.is_object() && doc.get("adapter").is_some(),
        "{}: not a `ddim bench --json` or tools/bench_torch.py report (no \"adapter\")",
        file.display()
    );
    let a = &doc["adapter"];
    let name = a["name"].as_str().unwrap_or("?");
    let label = match a["backend"].as_str() {
        Some(b) => format!("{name} ({b})"),
        None => name.to_string(),
    };
    let run = &doc["run"];
    let kernels = run["kernels"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    Some((
                        r["name"].as_str()?.to_string(),
                        r["gflops"].as_f64()?,
                        r["share"].as_f64().unwrap_or(0.0),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Entry {
        file: file
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned()),
        label,
        model: doc["model"]["source"].as_str().unwrap_or("?").to_string(),
        batch: doc["settings"]["batch"].as_u64(),
        precision: doc["settings"]["precision"]
            .as_str()
            .unwrap_or("f32")
            .to_string(),
        images_per_s: run["images_per_s"].as_f64(),
        forward_gflops: doc["forward_gflops"]
            .as_f64()
            .or_else(|| run["forward_gflops"].as_f64()),
        gemm_gflops: doc["gemm_gflops"].as_f64(),
        kernels,
    })
}

/// Every report in `files`, in order (an array file gives one entry per element).
pub fn load(files: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for f in files {
        let text = ddim_wgpu::path_kind::read_text_bounded(f, "bench report", 256 << 20)?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", f.display()))?;
        let docs = match v {
            Value::Array(items) => items,
            other => vec![other],
        };
        for d in &docs {
            out.push(entry(d, f)?);
        }
    }
    ensure!(!out.is_empty(), "--compare: no reports in the files given");
    // Tell apart entries with the same label (the same adapter measured twice) by their file.
    let labels: Vec<String> = out.iter().map(|e| e.label.clone()).collect();
    for (i, e) in out.iter_mut().enumerate() {
        if labels.iter().filter(|l| **l == labels[i]).count() > 1 {
            e.label = format!("{} [{}]", e.label, e.file);
        }
    }
    Ok(out)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

/// The table: one row per report, with its three kernels that take the most time.
pub fn table(entries: &[Entry]) -> String {
    let w = entries
        .iter()
        .map(|e| e.label.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut s = format!(
        "{:<w$} {:<24} {:>5} {:>4} {:>9} {:>9} {:>9}  top kernels (GFLOP/s, share of GPU time)\n",
        "adapter", "model", "batch", "prec", "images/s", "fwd GF/s", "gemm GF/s"
    );
    for e in entries {
        let mut top = e.kernels.clone();
        top.sort_by(|a, b| b.2.total_cmp(&a.2));
        let top: Vec<String> = top
            .iter()
            .take(3)
            .map(|(k, g, sh)| format!("{k} {g:.1} ({:.0}%)", sh * 100.0))
            .collect();
        s.push_str(&format!(
            "{:<w$} {:<24} {:>5} {:>4} {:>9} {:>9} {:>9}  {}\n",
            e.label,
            e.model,
            e.batch.map_or("-".to_string(), |b| b.to_string()),
            e.precision,
            opt(e.images_per_s, 2),
            opt(e.forward_gflops, 2),
            opt(e.gemm_gflops, 2),
            top.join(", ")
        ));
    }
    s
}

/// The chart: the kernels with the largest time share in any report (at most `max_kernels`),
/// one bar per report.
pub fn chart(entries: &[Entry], max_kernels: usize) -> BarChart {
    let mut kernels: Vec<(String, f64)> = Vec::new();
    for e in entries {
        for (k, _, share) in &e.kernels {
            match kernels.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = slot.1.max(*share),
                None => kernels.push((k.clone(), *share)),
            }
        }
    }
    kernels.sort_by(|a, b| b.1.total_cmp(&a.1));
    kernels.truncate(max_kernels);
    let groups = kernels
        .iter()
        .map(|(k, _)| Group {
            // "conv2d::conv_rows16" → "conv_rows16": the entry point names the kernel.
            label: k.rsplit("::").next().unwrap_or(k).to_string(),
            values: entries
                .iter()
                .map(|e| e.kernels.iter().find(|(n, ..)| n == k).map(|r| r.1))
                .collect(),
        })
        .collect();
    BarChart {
        title: "achieved GFLOP/s per kernel".to_string(),
        y_label: "GFLOP/s".to_string(),
        series: entries
            .iter()
            .map(|e| format!("{}, {}, {}", e.label, e.model, e.precision))
            .collect(),
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, backend: &str, ips: f64, kernels: &[(&str, f64, f64)]) -> Value {
        serde_json::json!({
            "schema": "ddim-bench/1",
            "adapter": {"name": name, "backend": backend},
            "settings": {"batch": 8, "precision": "f32"},
            "model": {"source": "bundled"},
            "forward_gflops": 12.5,
            "run": {
                "images_per_s": ips,
                "kernels": kernels.iter().map(|(n, g, s)| serde_json::json!({"name": n, "gflops": g, "share": s})).collect::<Vec<_>>()
            }
        })
    }

    #[test]
    fn reads_objects_arrays_and_torch_reports() {
        let dir = std::env::temp_dir().join(format!("ddim-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.json");
        let b = dir.join("b.json");
        std::fs::write(
            &a,
            doc("llvmpipe", "gl", 2.0, &[("conv2d::conv_rows16", 14.0, 0.6)]).to_string(),
        )
        .unwrap();
        let arr = serde_json::json!([
            doc("lavapipe", "vulkan", 5.0, &[("conv2d::conv_rows16", 15.0, 0.5), ("linear_k4::matmul_k4", 9.0, 0.2)]),
            {"adapter": {"name": "cuda:0 (torch)"}, "settings": {"batch": 8}, "model": {"source": "bundled"},
             "forward_gflops": 900.0, "run": {"images_per_s": 400.0}}
        ]);
        std::fs::write(&b, arr.to_string()).unwrap();
        let entries = load(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].label, "llvmpipe (gl)");
        assert_eq!(entries[2].label, "cuda:0 (torch)");
        assert_eq!(entries[2].images_per_s, Some(400.0));
        let t = table(&entries);
        assert!(t.contains("conv2d::conv_rows16 15.0 (50%)"), "{t}");
        let c = chart(&entries, 8);
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.groups[0].label, "conv_rows16");
        assert_eq!(c.groups[0].values, vec![Some(14.0), Some(15.0), None]);
        std::fs::write(&a, "{\"not\": \"a report\"}").unwrap();
        assert!(load(&[a]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

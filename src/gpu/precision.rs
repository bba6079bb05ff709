//! Storage precision of a plan: f32 everywhere (the default, comparable with the CPU reference),
//! or f16 activations and weights where the device has `SHADER_F16`.
//!
//! Arithmetic is f32 in both: kernels convert each load to f32 and each store back, so products
//! accumulate in f32, and group-norm statistics, softmax (its scores stay f32 buffers), the
//! time-embedding tables, biases, the sampler state x_t and the fused update never leave f32.
//! Half precision halves the bytes of what dominates memory and traffic.
//!
//! A shader declares the storage type of each such binding as an alias line, `alias act = f32;`;
//! [`specialize`] rewrites those lines (and enables f16) to give the module of one combination.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Result};

/// How activations and weights are stored on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F16];

    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    /// Fails with what to do when a device with `features` (the adapter `adapter`) cannot
    /// run this precision.
    pub fn check(self, features: wgpu::Features, adapter: &str) -> Result<()> {
        if self == Self::F16 && !features.contains(wgpu::Features::SHADER_F16) {
            bail!(
                "--precision f16 needs the SHADER_F16 feature, which {adapter} does not have; use \
                 --precision f32, or another adapter (`ddim adapters` lists each one's features)"
            );
        }
        Ok(())
    }

    /// `data` in this storage type, as bytes (f16: rounded to nearest even).
    pub fn encode(self, data: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => bytemuck::cast_slice(data).to_vec(),
            Self::F16 => {
                let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
        }
    }

    /// `len` values of this storage type from the start of `bytes`, as f32.
    pub fn decode(self, bytes: &[u8], len: usize) -> Vec<f32> {
        let bytes = &bytes[..len * self.bytes()];
        match self {
            Self::F32 => bytemuck::pod_collect_to_vec(bytes),
            Self::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes)
                .into_iter()
                .map(f32::from)
                .collect(),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wgsl())
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            other => bail!("unknown precision {other:?}: expected f32 or f16"),
        }
    }
}

/// The shader `(name, source)` with each `alias NAME = f32;` line of `types` set to its
/// precision, and `enable f16;` first when any is f16. All-f32 gives the input unchanged; other
/// combinations are built once per process and named `shader[NAME=f16,…]`, so the pipeline
/// cache tells them apart.
///
/// Panics when `source` lacks one of the alias lines: the sources are constants of this crate,
/// and tests/shaders_naga.rs compiles every combination the kernels use.
pub fn specialize(
    shader: &'static str,
    source: &'static str,
    types: &[(&'static str, Precision)],
) -> (&'static str, &'static str) {
    if types.iter().all(|&(_, p)| p == Precision::F32) {
        return (shader, source);
    }
    type Key = (&'static str, Vec<(&'static str, Precision)>);
    static BUILT: OnceLock<Mutex<HashMap<Key, (&'static str, &'static str)>>> = OnceLock::new();
    let key = (shader, types.to_vec());
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    *built.entry(key).or_insert_with(|| {
        let mut text = format!("enable f16;\n{source}");
        let mut tags = Vec::new();
        for &(alias, p) in types {
            let line = format!("alias {alias} = f32;");
            assert!(
                text.contains(&line),
                "shader {shader} has no line {line:?} to specialise"
            );
            text = text.replace(&line, &format!("alias {alias} = {};", p.wgsl()));
            if p != Precision::F32 {
                tags.push(format!("{alias}={p}"));
            }
        }
        let name = format!("{shader}[{}]", tags.join(","));
        // Leaked once per combination (a handful per process): pipelines keep &'static names.
        (
            Box::leak(name.into_boxed_str()) as &'static str,
            Box::leak(text.into_boxed_str()) as &'static str,
        )
    })
}

//! Named f32 weight tensors: loaded from a diffusers safetensors file (f32, f16, bf16 or f64 on
//! disk, legacy attention names mapped to current ones, every name and shape checked against
//! what the config needs), or synthesized with seeded random values for tests and benchmarks.

use crate::model::config::UNet2DConfig;
use crate::model::tensor_io::{bytes_to_f32, explain_safetensors_error};
use crate::model::unet::{UNet, WeightSpec};
use crate::Tensor;
use anyhow::{bail, Context, Result};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Largest safetensors header accepted (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// What a weight tensor is, for choosing a sensible synthetic value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitKind {
    /// GroupNorm scale (γ).
    NormScale,
    /// GroupNorm shift (β).
    NormShift,
    /// Convolution or linear weight or bias; `fan_in` = input channels × kernel area.
    Dense { fan_in: usize },
}

/// A complete, validated set of weights for one model, all converted to f32.
#[derive(Clone, Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// The on-disk element type(s), e.g. `"f32"`, `"f16"`, or `"f16 (320 tensors), f32 (8 tensors)"`;
    /// `"random"` for synthesized weights.
    pub source_dtype: String,
    /// How many tensors carried legacy attention names (`query`, `key`, `value`, `proj_attn`).
    pub legacy_names_mapped: usize,
}

/// Maps a legacy attention key (`{path}.query.weight`, `.key.`, `.value.`, `.proj_attn.`) to the
/// current name (`to_q`, `to_k`, `to_v`, `to_out.0`), as diffusers' `_fix_state_dict_keys_on_load`.
pub fn canonical_name(name: &str) -> Option<String> {
    let (rest, param) = name.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let (path, module) = rest.rsplit_once('.')?;
    if !path.contains("attentions.") {
        return None;
    }
    let new = match module {
        "query" => "to_q",
        "key" => "to_k",
        "value" => "to_v",
        "proj_attn" => "to_out.0",
        _ => return None,
    };
    Some(format!("{path}.{new}.{param}"))
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

impl Weights {
    /// Loads and validates the safetensors weights of the model described by `config`.
    pub fn load(path: &Path, config: &UNet2DConfig) -> Result<Self> {
        let expected = UNet::expected_weights(config)?;
        crate::path_kind::require_file(path, "weights file")?;
        let file_len = std::fs::metadata(path)
            .with_context(|| format!("reading weights {}", path.display()))?
            .len();
        // The file can hold at most 8 bytes per expected parameter (f64) plus a header; anything
        // bigger cannot be this model, so refuse before reading it into memory.
        let params: u64 = expected
            .iter()
            .map(|s| s.shape.iter().product::<usize>() as u64)
            .sum();
        let limit = 8 + MAX_HEADER_BYTES + 8 * params;
        if file_len > limit {
            bail!(
                "{}: {file_len} bytes is far more than a model with {params} parameters needs; refusing to read it",
                path.display()
            );
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("reading weights {}", path.display()))?;
        Self::from_safetensors_bytes(&bytes, &expected)
            .with_context(|| format!("in weights file {}", path.display()))
    }

    /// Parses a safetensors buffer and checks it holds exactly the `expected` tensors.
    pub fn from_safetensors_bytes(bytes: &[u8], expected: &[WeightSpec]) -> Result<Self> {
        if bytes.len() < 8 {
            bail!(
                "not a safetensors file: only {} bytes (truncated?)",
                bytes.len()
            );
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_BYTES || header_len > bytes.len() as u64 - 8 {
            bail!(
                "not a valid safetensors file: the header claims {header_len} bytes but the file has {} \
                 (truncated file or broken header)",
                bytes.len()
            );
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            anyhow::anyhow!(
                "not a valid safetensors file: {}",
                explain_safetensors_error(bytes, &e)
            )
        })?;

        let wanted: HashMap<&str, &WeightSpec> =
            expected.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut tensors = HashMap::with_capacity(expected.len());
        let mut unexpected = Vec::new();
        let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
        let mut legacy = 0;
        let mut names: Vec<&str> = st.names();
        names.sort_unstable();
        for name in names {
            let view = st.tensor(name).expect("name listed by the file");
            let canonical = match canonical_name(name) {
                Some(c) => {
                    legacy += 1;
                    c
                }
                None => name.to_string(),
            };
            let Some(spec) = wanted.get(canonical.as_str()) else {
                unexpected.push(name.to_string());
                continue;
            };
            if view.shape() != spec.shape.as_slice() {
                bail!(
                    "tensor {name:?} has shape {:?}, the config needs {:?}",
                    view.shape(),
                    spec.shape
                );
            }
            let data = bytes_to_f32(name, view.dtype(), view.data())?;
            let bad = data.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                bail!(
                    "tensor {name:?} has {bad} non-finite value(s) (NaN or ±Inf) among {}: \
                     the checkpoint is corrupt or diverged",
                    data.len()
                );
            }
            *dtypes
                .entry(format!("{:?}", view.dtype()).to_lowercase())
                .or_default() += 1;
            let tensor = Tensor::new(spec.shape.clone(), data)?;
            if tensors.insert(canonical.clone(), tensor).is_some() {
                bail!(
                    "tensor {canonical:?} is stored twice (under its legacy and its current name)"
                );
            }
        }
        if !unexpected.is_empty() {
            bail!(
                "{} unexpected tensor(s) that this config does not use: {} \
                 (does config.json belong to these weights?)",
                unexpected.len(),
                list(&unexpected)
            );
        }
        let missing: Vec<String> = expected
            .iter()
            .filter(|s| !tensors.contains_key(&s.name))
            .map(|s| format!("{} {:?}", s.name, s.shape))
            .collect();
        if !missing.is_empty() {
            bail!("{} tensor(s) missing: {}", missing.len(), list(&missing));
        }
        let source_dtype = if dtypes.len() == 1 {
            dtypes.keys().next().cloned().unwrap_or_default()
        } else {
            dtypes
                .iter()
                .map(|(d, n)| format!("{d} ({n} tensors)"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Ok(Self {
            tensors,
            source_dtype,
            legacy_names_mapped: legacy,
        })
    }

    /// Seeded random weights for `config`, deterministic for a given seed. Convolution and linear
    /// weights and biases are uniform in ±1/√fan_in (PyTorch's default initialisation); norm
    /// scales are 1 ± 0.1 and norm shifts ±0.1 (perturbed from 1 and 0 so that tests notice if
    /// either is ignored).
    pub fn random(config: &UNet2DConfig, seed: u64) -> Result<Self> {
        let mut rng: Option<(String, SplitMix64)> = None;
        let mut w = Self::from_fn(config, |spec, kind, _| {
            if rng.as_ref().is_none_or(|(n, _)| *n != spec.name) {
                rng = Some((spec.name.clone(), SplitMix64::new(seed ^ fnv1a(&spec.name))));
            }
            let r = rng.as_mut().expect("set above").1.symmetric();
            match kind {
                InitKind::NormScale => 1.0 + 0.1 * r,
                InitKind::NormShift => 0.1 * r,
                InitKind::Dense { fan_in } => r / (fan_in as f32).sqrt(),
            }
        })?;
        w.source_dtype = "random".into();
        Ok(w)
    }

    /// Weights for `config` with every value given by `value(spec, kind, index)`, called for the
    /// tensors in [`UNet::expected_weights`] order and, within a tensor, in index order.
    pub fn from_fn(
        config: &UNet2DConfig,
        mut value: impl FnMut(&WeightSpec, InitKind, usize) -> f32,
    ) -> Result<Self> {
        let expected = UNet::expected_weights(config)?;
        let shapes: HashMap<&str, &[usize]> = expected
            .iter()
            .map(|s| (s.name.as_str(), s.shape.as_slice()))
            .collect();
        let mut tensors = HashMap::with_capacity(expected.len());
        for spec in &expected {
            let (prefix, param) = spec.name.rsplit_once('.').unwrap_or(("", &spec.name));
            let weight_shape = shapes
                .get(format!("{prefix}.weight").as_str())
                .copied()
                .unwrap_or(&spec.shape);
            let kind = match (weight_shape.len(), param) {
                (1, "weight") => InitKind::NormScale,
                (1, _) => InitKind::NormShift,
                _ => InitKind::Dense {
                    fan_in: weight_shape[1..].iter().product(),
                },
            };
            let n: usize = spec.shape.iter().product();
            let data = (0..n).map(|i| value(spec, kind, i)).collect();
            tensors.insert(spec.name.clone(), Tensor::new(spec.shape.clone(), data)?);
        }
        Ok(Self {
            tensors,
            source_dtype: "synthesized".into(),
            legacy_names_mapped: 0,
        })
    }

    /// Builds weights from already-named f32 tensors (no validation against a config).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            source_dtype: "f32".into(),
            legacy_names_mapped: 0,
        }
    }

    /// Checks that every weight in `specs` is present with its exact shape (cheap: lookups only),
    /// so that weights of another model are reported instead of being indexed out of bounds.
    pub fn check(&self, specs: &[WeightSpec]) -> Result<()> {
        for spec in specs {
            let t = self.get(&spec.name)?;
            if t.shape != spec.shape {
                bail!(
                    "weight {:?} has shape {:?}, the model needs {:?} (weights of another model?)",
                    spec.name,
                    t.shape,
                    spec.shape
                );
            }
        }
        Ok(())
    }

    /// The tensor stored under its current diffusers name.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("weight {name:?} is not loaded"))
    }

    /// The tensor's values as a flat slice (biases, norm parameters).
    pub fn slice(&self, name: &str) -> Result<&[f32]> {
        Ok(&self.get(name)?.data)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// All tensors by name (unordered).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// SHA-256 over every tensor in name order (name, shape, f32 values little-endian): the
    /// same for the same values whatever file, dtype or layout they came from.
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut h = Sha256::new();
        for name in names {
            let t = &self.tensors[name];
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((t.shape.len() as u64).to_le_bytes());
            for &d in &t.shape {
                h.update((d as u64).to_le_bytes());
            }
            for v in &t.data {
                h.update(v.to_le_bytes());
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Total number of values.
    pub fn params(&self) -> u64 {
        self.tensors.values().map(|t| t.numel() as u64).sum()
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A tiny seeded generator (SplitMix64) for synthesized weights; not the sampler's noise source.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * unit - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_map_to_current_ones() {
        assert_eq!(
            canonical_name("mid_block.attentions.0.proj_attn.bias").as_deref(),
            Some("mid_block.attentions.0.to_out.0.bias")
        );
        assert_eq!(
            canonical_name("down_blocks.1.attentions.1.query.weight").as_deref(),
            Some("down_blocks.1.attentions.1.to_q.weight")
        );
        assert_eq!(canonical_name("down_blocks.1.resnets.0.conv1.weight"), None);
    }

    #[test]
    fn random_weights_are_deterministic_and_complete() {
        let c = UNet2DConfig::mnist_like();
        let a = Weights::random(&c, 7).unwrap();
        let b = Weights::random(&c, 7).unwrap();
        let d = Weights::random(&c, 8).unwrap();
        let name = "conv_in.weight";
        assert_eq!(a.get(name).unwrap(), b.get(name).unwrap());
        assert_ne!(a.get(name).unwrap(), d.get(name).unwrap());
        assert_eq!(a.params(), UNet::from_config(&c).unwrap().params());
    }
}

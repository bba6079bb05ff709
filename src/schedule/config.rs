//! `SchedulerConfig`: diffusers' `DDIMScheduler` options, read from any diffusers
//! `scheduler_config.json` the way `DDIMPipeline` does (`DDIMScheduler.from_config`): keys DDIM does
//! not know are ignored, keys it knows but the file lacks take DDIM's defaults, and a JSON `null`
//! counts as missing. A value of the wrong type or outside the allowed set is an error naming the
//! key and what is allowed.

use std::path::{Path, PathBuf};

/// Largest scheduler_config.json read: diffusers' are under 1 KB.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::sigma_keys::SigmaKeys;
use super::solver_options::SolverKeys;

/// How the betas are built from `beta_start` / `beta_end` (ignored when `trained_betas` is given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `torch.linspace(beta_start, beta_end, T)` in f32.
    Linear,
    /// `torch.linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2` in f32.
    ScaledLinear,
    /// Nichol & Dhariwal's cosine schedule, betas capped at 0.999.
    SquaredcosCapV2,
}

/// What the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε.
    Epsilon,
    /// The clean sample x0.
    Sample,
    /// v = sqrt(ā)·ε − sqrt(1−ā)·x0.
    VPrediction,
}

/// How the inference timesteps are picked from `0..T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// diffusers: `arange(n) * (T // n)` (+ `steps_offset`), descending.
    Leading,
    /// diffusers: `round(arange(T, 0, -T/n)) - 1`.
    Trailing,
    /// diffusers: `round(linspace(0, T-1, n))`, descending.
    Linspace,
    /// ermongroup/ddim `--skip_type uniform`: `range(0, T, T // n)`, descending. May give more
    /// than n steps when n does not divide T. The previous timestep is the next array element.
    Uniform,
    /// ermongroup/ddim `--skip_type quad`: `int(linspace(0, sqrt(0.8 T), n) ** 2)`, descending.
    /// Tops out at 0.8 T and may repeat values. The previous timestep is the next array element.
    Quad,
}

/// Allowed names and values of one option, in the spelling diffusers uses.
trait Named: Sized + Copy + PartialEq + 'static {
    const NAMES: &'static [(&'static str, Self)];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    fn parse(key: &str, s: &str) -> Result<Self> {
        match Self::NAMES.iter().find(|(n, _)| *n == s) {
            Some((_, v)) => Ok(*v),
            None => bail!(
                "`{key}`: unknown value {s:?}; allowed: {}",
                Self::NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl Named for BetaSchedule {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("linear", Self::Linear),
        ("scaled_linear", Self::ScaledLinear),
        ("squaredcos_cap_v2", Self::SquaredcosCapV2),
    ];
}

impl Named for PredictionType {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("epsilon", Self::Epsilon),
        ("sample", Self::Sample),
        ("v_prediction", Self::VPrediction),
    ];
}

impl Named for TimestepSpacing {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("leading", Self::Leading),
        ("trailing", Self::Trailing),
        ("linspace", Self::Linspace),
        ("uniform", Self::Uniform),
        ("quad", Self::Quad),
    ];
}

macro_rules! named_api {
    ($t:ty) => {
        impl $t {
            /// The diffusers spelling of this value.
            pub fn as_str(self) -> &'static str {
                <Self as Named>::name(self)
            }
            /// Parses the diffusers spelling; the error names `key` and lists the allowed values.
            pub fn parse_for(key: &str, s: &str) -> Result<Self> {
                <Self as Named>::parse(key, s)
            }
            /// Every allowed spelling.
            pub fn names() -> Vec<&'static str> {
                <Self as Named>::NAMES.iter().map(|(n, _)| *n).collect()
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
named_api!(BetaSchedule);
named_api!(PredictionType);
named_api!(TimestepSpacing);

/// Every `DDIMScheduler` option (diffusers 0.42), plus DDPMScheduler's `variance_type` kept raw.
/// `Default` gives `DDIMScheduler()`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// T, the number of training timesteps (1000).
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas; when present they replace `beta_schedule` and must number T.
    pub trained_betas: Option<Vec<f64>>,
    /// Clamp predicted x0 to ±`clip_sample_range` (default true).
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// ā used after the last step (prev_t < 0): 1 if true, else ā\[0\]. Also the inverse
    /// scheduler's starting ā.
    pub set_alpha_to_one: bool,
    /// Added to every timestep, for `leading` spacing only.
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    /// Imagen dynamic thresholding of x0 (takes precedence over `clip_sample`).
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    /// Rescale betas to zero terminal SNR (arXiv 2305.08891, Algorithm 1).
    pub rescale_betas_zero_snr: bool,
    /// DDPMScheduler's `variance_type`, unparsed: DDIM ignores it; only the DDPM sampler reads it
    /// (see `DdpmVariance::from_config`).
    pub variance_type: Option<String>,
    /// Whether `timestep_spacing` was given: the multistep solvers default to linspace, DDIM to
    /// leading, so a config that leaves it out means different things to each.
    pub timestep_spacing_given: bool,
    /// The config's `_class_name` (DDPMScheduler, DPMSolverMultistepScheduler, …), if any.
    pub class_name: Option<String>,
    /// The keys of the multistep solvers (DPM-Solver, UniPC) the config gives.
    pub solver_keys: SolverKeys,
    /// The keys of the σ-space samplers (Euler, Euler ancestral, Heun, LMS) the config gives.
    pub sigma_keys: SigmaKeys,
    /// Every key of the config object as read (JSON `null` dropped), for the schedulers whose
    /// own keys or defaults differ from DDIM's (PNDM's `set_alpha_to_one`, the consistency
    /// models' σ range).
    pub keys: Map<String, Value>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
            variance_type: None,
            timestep_spacing_given: false,
            class_name: None,
            solver_keys: SolverKeys::default(),
            sigma_keys: SigmaKeys::default(),
            keys: Map::new(),
        }
    }
}

/// Typed access to one JSON object, with errors that name the key.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The value under `key`, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(x),
                _ => bail!("`{key}`: expected a finite number, got {v}"),
            },
        }
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64().and_then(|x| usize::try_from(x).ok()) {
                Some(x) => Ok(x),
                None => bail!("`{key}`: expected a non-negative integer, got {v}"),
            },
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => bail!("`{key}`: expected true or false, got {v}"),
        }
    }

    fn named<T: Named>(&self, key: &str, default: T) -> Result<T> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::String(s)) => T::parse(key, s),
            Some(v) => bail!(
                "`{key}`: expected a string, one of {}; got {v}",
                T::NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Some(items) = v.as_array() else {
            bail!("`{key}`: expected a list of numbers or null, got {v}");
        };
        let list = items
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_f64() {
                Some(f) if f.is_finite() => Ok(f),
                _ => bail!("`{key}`[{i}]: expected a finite number, got {x}"),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(list))
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => bail!("`{key}`: expected a string, got {v}"),
        }
    }
}

impl SchedulerConfig {
    /// Reads a diffusers `scheduler_config.json` (of any scheduler class).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::path_kind::read_text_bounded(path, "scheduler config", MAX_CONFIG_BYTES)?;
        Self::from_json_str(&text)
            .with_context(|| format!("in scheduler config {}", path.display()))
    }

    /// The scheduler config of a diffusers model directory: `DIR/scheduler/scheduler_config.json`
    /// (pipeline layout) or `DIR/scheduler_config.json` (flat layout). `Ok(None)` when neither exists.
    pub fn from_model_dir(dir: &Path) -> Result<Option<(Self, PathBuf)>> {
        for path in [
            dir.join("scheduler").join("scheduler_config.json"),
            dir.join("scheduler_config.json"),
        ] {
            if !matches!(
                crate::path_kind::kind_of(&path),
                crate::path_kind::PathKind::Missing
            ) {
                return Ok(Some((Self::from_file(&path)?, path)));
            }
        }
        Ok(None)
    }

    /// Parses the text of a `scheduler_config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(&quote_python_infinities(text)).context("not valid JSON")?;
        Self::from_json(&value)
    }

    /// Builds the config from a JSON object, as `DDIMScheduler.from_config` would.
    pub fn from_json(value: &Value) -> Result<Self> {
        let Some(map) = value.as_object() else {
            bail!("a scheduler config must be a JSON object, got {value}");
        };
        let f = Fields(map);
        let d = Self::default();
        let cfg = Self {
            num_train_timesteps: f.usize("num_train_timesteps", d.num_train_timesteps)?,
            beta_start: f.f64("beta_start", d.beta_start)?,
            beta_end: f.f64("beta_end", d.beta_end)?,
            beta_schedule: f.named("beta_schedule", d.beta_schedule)?,
            trained_betas: f.f64_list("trained_betas")?,
            clip_sample: f.bool("clip_sample", d.clip_sample)?,
            clip_sample_range: f.f64("clip_sample_range", d.clip_sample_range)?,
            set_alpha_to_one: f.bool("set_alpha_to_one", d.set_alpha_to_one)?,
            steps_offset: f.usize("steps_offset", d.steps_offset)?,
            prediction_type: f.named("prediction_type", d.prediction_type)?,
            thresholding: f.bool("thresholding", d.thresholding)?,
            dynamic_thresholding_ratio: f
                .f64("dynamic_thresholding_ratio", d.dynamic_thresholding_ratio)?,
            sample_max_value: f.f64("sample_max_value", d.sample_max_value)?,
            timestep_spacing: f.named("timestep_spacing", d.timestep_spacing)?,
            rescale_betas_zero_snr: f.bool("rescale_betas_zero_snr", d.rescale_betas_zero_snr)?,
            variance_type: f.string("variance_type")?,
            timestep_spacing_given: f.get("timestep_spacing").is_some(),
            class_name: f.string("_class_name")?,
            solver_keys: SolverKeys::from_json(map)?,
            sigma_keys: SigmaKeys::from_json(map)?,
            keys: map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether the config file gives `key` (not null).
    pub fn given(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// A number under `key`, or `default` when the config does not give it.
    pub fn number_or(&self, key: &str, default: f64) -> Result<f64> {
        Fields(&self.keys).f64(key, default)
    }

    /// A whole number under `key`, or `default`.
    pub fn count_or(&self, key: &str, default: usize) -> Result<usize> {
        Fields(&self.keys).usize(key, default)
    }

    /// A boolean under `key`, or `default`.
    pub fn flag_or(&self, key: &str, default: bool) -> Result<bool> {
        Fields(&self.keys).bool(key, default)
    }

    /// Checks ranges that diffusers leaves unchecked but that would give NaN or nonsense.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000_000).contains(&self.num_train_timesteps) {
            bail!(
                "`num_train_timesteps` must be between 1 and 10000000, got {}",
                self.num_train_timesteps
            );
        }
        if self.clip_sample_range <= 0.0 {
            bail!(
                "`clip_sample_range` must be > 0, got {}",
                self.clip_sample_range
            );
        }
        if !(0.0..=1.0).contains(&self.dynamic_thresholding_ratio) {
            bail!(
                "`dynamic_thresholding_ratio` must be in [0, 1], got {}",
                self.dynamic_thresholding_ratio
            );
        }
        if self.sample_max_value <= 0.0 {
            bail!(
                "`sample_max_value` must be > 0, got {}",
                self.sample_max_value
            );
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                bail!(
                    "`trained_betas` has {} values but `num_train_timesteps` is {}",
                    b.len(),
                    self.num_train_timesteps
                );
            }
        }
        Ok(())
    }

    /// The config as a JSON object with diffusers' key names (`trained_betas` summarised by its
    /// length, to keep printed tables short).
    pub fn to_json(&self) -> Value {
        json!({
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule.as_str(),
            "trained_betas": self.trained_betas.as_ref().map(|b| format!("<{} values>", b.len())),
            "clip_sample": self.clip_sample,
            "clip_sample_range": self.clip_sample_range,
            "set_alpha_to_one": self.set_alpha_to_one,
            "steps_offset": self.steps_offset,
            "prediction_type": self.prediction_type.as_str(),
            "thresholding": self.thresholding,
            "dynamic_thresholding_ratio": self.dynamic_thresholding_ratio,
            "sample_max_value": self.sample_max_value,
            "timestep_spacing": self.timestep_spacing.as_str(),
            "rescale_betas_zero_snr": self.rescale_betas_zero_snr,
            "variance_type": self.variance_type,
        })
    }
}

/// Python's `json` writes `-Infinity`, `Infinity` and `NaN` (diffusers saves
/// `lambda_min_clipped: -Infinity`), which JSON lacks. Outside strings they become the strings
/// "-Infinity", "Infinity" and "NaN", so the keys that allow them can read them by name.
fn quote_python_infinities(text: &str) -> std::borrow::Cow<'_, str> {
    if !(text.contains("Infinity") || text.contains("NaN")) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push('"');
            out.push_str(word);
            out.push('"');
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_infinities_become_strings_outside_strings_only() {
        let text = r#"{"a": -Infinity, "b": "NaN -Infinity \" x", "c": [Infinity, NaN]}"#;
        let v: Value = serde_json::from_str(&quote_python_infinities(text)).unwrap();
        assert_eq!(v["a"], "-Infinity");
        assert_eq!(v["b"], "NaN -Infinity \" x");
        assert_eq!(v["c"][0], "Infinity");
        assert_eq!(v["c"][1], "NaN");
    }
}

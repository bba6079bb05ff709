//! The options of the σ-space samplers (Euler, Euler ancestral, Heun, LMS) as given: a
//! scheduler config's keys or the command line's. Resolved against a config in
//! `sigma::SigmaOptions`.

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

/// Options of the σ-space samplers as given (a config file's keys or the command line's);
/// `None` = not given. `use_karras_sigmas` and `final_sigmas_type` are shared with the multistep
/// solvers and live in [`SolverKeys`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SigmaKeys {
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    /// Euler: "linear" | "log_linear".
    pub interpolation_type: Option<String>,
    /// Euler: the range of the karras / exponential / beta schedules.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Euler: "discrete" | "continuous" (with v_prediction: t = 0.25·ln σ).
    pub timestep_type: Option<String>,
    /// Euler's `step()` arguments (not config keys): churn and its range and noise scale.
    pub s_churn: Option<f64>,
    pub s_tmin: Option<f64>,
    pub s_tmax: Option<f64>,
    pub s_noise: Option<f64>,
    /// Config facts whose class defaults differ from DDIM's (Heun: clip_sample false, betas
    /// 0.00085…0.012): whether and how the config sets them.
    pub clip_sample: Option<bool>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
}

impl SigmaKeys {
    /// The σ-sampler keys of a scheduler config object (other keys are ignored; JSON null counts
    /// as absent). The `s_*` step arguments are never read from a config.
    pub fn from_json(map: &Map<String, Value>) -> Result<Self> {
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());
        let bool_of = |k: &str| -> Result<Option<bool>> {
            match get(k) {
                None => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => bail!("`{k}`: expected true or false, got {v}"),
            }
        };
        let string_of = |k: &str| -> Result<Option<String>> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => bail!("`{k}`: expected a string, got {v}"),
            }
        };
        let number_of = |k: &str| -> Result<Option<f64>> {
            match get(k) {
                None => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => Ok(Some(x)),
                    _ => bail!("`{k}`: expected a finite number, got {v}"),
                },
            }
        };
        Ok(Self {
            use_exponential_sigmas: bool_of("use_exponential_sigmas")?,
            use_beta_sigmas: bool_of("use_beta_sigmas")?,
            interpolation_type: string_of("interpolation_type")?,
            sigma_min: number_of("sigma_min")?,
            sigma_max: number_of("sigma_max")?,
            timestep_type: string_of("timestep_type")?,
            clip_sample: bool_of("clip_sample")?,
            beta_start: number_of("beta_start")?,
            beta_end: number_of("beta_end")?,
            ..Self::default()
        })
    }

    /// The options given (not the config facts), as `(name, value)` in diffusers' spelling.
    pub fn given(&self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let mut put = |k: &'static str, v: Option<Value>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put(
            "use_exponential_sigmas",
            self.use_exponential_sigmas.map(|v| json!(v)),
        );
        put("use_beta_sigmas", self.use_beta_sigmas.map(|v| json!(v)));
        put(
            "interpolation_type",
            self.interpolation_type.as_ref().map(|v| json!(v)),
        );
        put("sigma_min", self.sigma_min.map(|v| json!(v)));
        put("sigma_max", self.sigma_max.map(|v| json!(v)));
        put(
            "timestep_type",
            self.timestep_type.as_ref().map(|v| json!(v)),
        );
        put("s_churn", self.s_churn.map(|v| json!(v)));
        put("s_tmin", self.s_tmin.map(|v| json!(v)));
        put("s_tmax", self.s_tmax.map(|v| json!(v)));
        put("s_noise", self.s_noise.map(|v| json!(v)));
        out
    }
}

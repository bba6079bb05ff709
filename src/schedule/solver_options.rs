//! The options of the two multistep solvers, diffusers' `DPMSolverMultistepScheduler` and
//! `UniPCMultistepScheduler`, as they are read: keys of a `scheduler_config.json` (of any class,
//! like `from_config`), then single-key overrides from the caller, then each solver's defaults.
//! Unsupported options that change the result (learned variances, flow or exponential sigmas, …)
//! are refused by name rather than ignored. `PNDMScheduler` runs on the same machinery
//! (`schedule::pndm`); its one option here is `skip_prk_steps`.

use anyhow::{bail, ensure, Result};
use serde_json::{json, Map, Value};

/// Which multistep solver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SolverFamily {
    /// DPM-Solver / DPM-Solver++ (Lu et al. 2022), multistep.
    DpmSolver,
    /// UniPC (Zhao et al. 2023): a multistep predictor with a corrector.
    UniPc,
    /// PNDM (Liu et al. 2022): Runge–Kutta warm-up steps, then linear multistep (PLMS).
    Pndm,
}

impl SolverFamily {
    /// diffusers' class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::DpmSolver => "DPMSolverMultistepScheduler",
            Self::UniPc => "UniPCMultistepScheduler",
            Self::Pndm => "PNDMScheduler",
        }
    }

    /// The family a diffusers `_class_name` selects, if it is one of the two.
    pub fn from_class_name(name: &str) -> Option<Self> {
        [Self::DpmSolver, Self::UniPc, Self::Pndm]
            .into_iter()
            .find(|f| f.class_name() == name)
    }
}

/// DPM-Solver's `algorithm_type`: what the model output is turned into before the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// Data prediction (x0): "dpmsolver++".
    DpmSolverPlusPlus,
    /// Noise prediction (ε): "dpmsolver".
    DpmSolver,
    /// Data prediction with the SDE solver's noise at every step: "sde-dpmsolver++" (DPM++ 2M
    /// SDE at order 2).
    SdeDpmSolverPlusPlus,
    /// Noise prediction with the SDE solver's noise: "sde-dpmsolver" (orders 1 and 2 only).
    SdeDpmSolver,
}

impl DpmAlgorithm {
    /// Whether the model output is converted to the data prediction x0 (else ε).
    pub fn predicts_x0(self) -> bool {
        matches!(self, Self::DpmSolverPlusPlus | Self::SdeDpmSolverPlusPlus)
    }

    /// Whether each step adds fresh noise (the SDE variants).
    pub fn is_sde(self) -> bool {
        matches!(self, Self::SdeDpmSolverPlusPlus | Self::SdeDpmSolver)
    }
}

/// `solver_type`: midpoint | heun for DPM-Solver, bh1 | bh2 for UniPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
    Bh1,
    Bh2,
}

/// `final_sigmas_type`: the noise level after the last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalSigmas {
    /// σ = 0: the last step returns the data prediction.
    Zero,
    /// σ at timestep 0 (UniPC with Karras sigmas: the smallest Karras σ).
    SigmaMin,
}

fn names<T: Copy>(table: &[(&'static str, T)]) -> String {
    table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn lookup<T: Copy>(key: &str, s: &str, table: &[(&'static str, T)]) -> Result<T> {
    match table.iter().find(|(n, _)| *n == s) {
        Some((_, v)) => Ok(*v),
        None => bail!("`{key}`: unknown value {s:?}; allowed: {}", names(table)),
    }
}

const ALGORITHMS: &[(&str, DpmAlgorithm)] = &[
    ("dpmsolver++", DpmAlgorithm::DpmSolverPlusPlus),
    ("dpmsolver", DpmAlgorithm::DpmSolver),
    ("sde-dpmsolver++", DpmAlgorithm::SdeDpmSolverPlusPlus),
    ("sde-dpmsolver", DpmAlgorithm::SdeDpmSolver),
];
const DPM_TYPES: &[(&str, SolverType)] = &[
    ("midpoint", SolverType::Midpoint),
    ("heun", SolverType::Heun),
];
const UNIPC_TYPES: &[(&str, SolverType)] = &[("bh1", SolverType::Bh1), ("bh2", SolverType::Bh2)];
const FINAL_SIGMAS: &[(&str, FinalSigmas)] = &[
    ("zero", FinalSigmas::Zero),
    ("sigma_min", FinalSigmas::SigmaMin),
];

impl DpmAlgorithm {
    pub fn as_str(self) -> &'static str {
        ALGORITHMS
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }
}

impl SolverType {
    pub fn as_str(self) -> &'static str {
        DPM_TYPES
            .iter()
            .chain(UNIPC_TYPES)
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }
}

impl FinalSigmas {
    pub fn as_str(self) -> &'static str {
        FINAL_SIGMAS
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    /// Parses `final_sigmas_type`.
    pub fn parse(key: &str, s: &str) -> Result<Self> {
        lookup(key, s, FINAL_SIGMAS)
    }
}

/// Solver keys as given (a config file's or the command line's); `None` = not given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SolverKeys {
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub final_sigmas_type: Option<String>,
    pub lambda_min_clipped: Option<f64>,
    pub use_karras_sigmas: Option<bool>,
    pub predict_x0: Option<bool>,
    pub disable_corrector: Option<Vec<usize>>,
    /// PNDM only: plain PLMS from the start, without the Runge–Kutta warm-up.
    pub skip_prk_steps: Option<bool>,
    /// Options that are set in a config file and change the result but are not supported here,
    /// as `key = value`; using a solver with any of them is refused.
    pub unsupported: Vec<String>,
}

/// Keys that change a solver's result and are not implemented: refused when set to anything but
/// their default.
const UNSUPPORTED_FLAGS: &[&str] = &[
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "use_dynamic_shifting",
];

impl SolverKeys {
    /// The solver keys of a scheduler config object (other keys are ignored). JSON `null` counts
    /// as absent. `-Infinity` (which Python writes for `lambda_min_clipped`) arrives as the string
    /// "-Infinity" (see `config::parse_python_json`).
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
        let solver_order = match get("solver_order") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n as usize),
                None => bail!("`solver_order`: expected 1, 2 or 3, got {v}"),
            },
        };
        let lambda_min_clipped = match get("lambda_min_clipped") {
            None => None,
            Some(Value::String(s)) if s == "-Infinity" => Some(f64::NEG_INFINITY),
            Some(v) => match v.as_f64() {
                Some(x) if !x.is_nan() => Some(x),
                _ => bail!("`lambda_min_clipped`: expected a number or -Infinity, got {v}"),
            },
        };
        let disable_corrector = match get("disable_corrector") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|x| match x.as_u64() {
                        Some(i) => Ok(i as usize),
                        None => bail!("`disable_corrector`: expected step indices, got {x}"),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(v) => bail!("`disable_corrector`: expected a list of step indices, got {v}"),
        };
        let mut unsupported = Vec::new();
        for key in UNSUPPORTED_FLAGS {
            if bool_of(key)? == Some(true) {
                unsupported.push(format!("{key} = true"));
            }
        }
        if let Some(v) = string_of("variance_type")? {
            if v.starts_with("learned") {
                unsupported.push(format!("variance_type = {v:?}"));
            }
        }
        if get("solver_p").is_some() {
            unsupported.push("solver_p".into());
        }
        Ok(Self {
            solver_order,
            algorithm_type: string_of("algorithm_type")?,
            solver_type: string_of("solver_type")?,
            lower_order_final: bool_of("lower_order_final")?,
            euler_at_final: bool_of("euler_at_final")?,
            final_sigmas_type: string_of("final_sigmas_type")?,
            lambda_min_clipped,
            use_karras_sigmas: bool_of("use_karras_sigmas")?,
            predict_x0: bool_of("predict_x0")?,
            disable_corrector,
            skip_prk_steps: bool_of("skip_prk_steps")?,
            unsupported,
        })
    }

    /// The keys that are given, as `(name, value)` in diffusers' spelling.
    pub fn given(&self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let mut put = |k: &'static str, v: Option<Value>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put("solver_order", self.solver_order.map(|v| json!(v)));
        put(
            "algorithm_type",
            self.algorithm_type.as_ref().map(|v| json!(v)),
        );
        put("solver_type", self.solver_type.as_ref().map(|v| json!(v)));
        put(
            "lower_order_final",
            self.lower_order_final.map(|v| json!(v)),
        );
        put("euler_at_final", self.euler_at_final.map(|v| json!(v)));
        put(
            "final_sigmas_type",
            self.final_sigmas_type.as_ref().map(|v| json!(v)),
        );
        put(
            "lambda_min_clipped",
            self.lambda_min_clipped.map(|v| json!(v.to_string())),
        );
        put(
            "use_karras_sigmas",
            self.use_karras_sigmas.map(|v| json!(v)),
        );
        put("predict_x0", self.predict_x0.map(|v| json!(v)));
        put(
            "disable_corrector",
            self.disable_corrector.as_ref().map(|v| json!(v)),
        );
        put("skip_prk_steps", self.skip_prk_steps.map(|v| json!(v)));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.given().is_empty()
    }

    /// `self` with every key `over` gives replaced by that value.
    pub fn overridden_by(&self, over: &SolverKeys) -> SolverKeys {
        SolverKeys {
            solver_order: over.solver_order.or(self.solver_order),
            algorithm_type: over.algorithm_type.clone().or(self.algorithm_type.clone()),
            solver_type: over.solver_type.clone().or(self.solver_type.clone()),
            lower_order_final: over.lower_order_final.or(self.lower_order_final),
            euler_at_final: over.euler_at_final.or(self.euler_at_final),
            final_sigmas_type: over
                .final_sigmas_type
                .clone()
                .or(self.final_sigmas_type.clone()),
            lambda_min_clipped: over.lambda_min_clipped.or(self.lambda_min_clipped),
            use_karras_sigmas: over.use_karras_sigmas.or(self.use_karras_sigmas),
            predict_x0: over.predict_x0.or(self.predict_x0),
            disable_corrector: over
                .disable_corrector
                .clone()
                .or(self.disable_corrector.clone()),
            skip_prk_steps: over.skip_prk_steps.or(self.skip_prk_steps),
            unsupported: self.unsupported.clone(),
        }
    }
}

/// The resolved options of one multistep solver.
#[derive(Clone, Debug, PartialEq)]
pub struct SolverOptions {
    pub family: SolverFamily,
    /// 1, 2 or 3.
    pub order: usize,
    /// DPM-Solver only (UniPC: `predict_x0`).
    pub algorithm: DpmAlgorithm,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    /// DPM-Solver only: first order at the last step.
    pub euler_at_final: bool,
    pub final_sigmas: FinalSigmas,
    /// DPM-Solver only: timesteps whose λ lies below this are not used.
    pub lambda_min_clipped: f64,
    pub use_karras_sigmas: bool,
    /// UniPC only: data prediction (true) or noise prediction.
    pub predict_x0: bool,
    /// UniPC only: steps after which the corrector is not applied.
    pub disable_corrector: Vec<usize>,
    /// PNDM only: no Runge–Kutta warm-up.
    pub skip_prk_steps: bool,
}

impl SolverOptions {
    /// The defaults of diffusers' class for `family`.
    pub fn defaults(family: SolverFamily) -> Self {
        Self {
            family,
            order: 2,
            algorithm: DpmAlgorithm::DpmSolverPlusPlus,
            solver_type: match family {
                SolverFamily::DpmSolver | SolverFamily::Pndm => SolverType::Midpoint,
                SolverFamily::UniPc => SolverType::Bh2,
            },
            lower_order_final: true,
            euler_at_final: false,
            final_sigmas: FinalSigmas::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            use_karras_sigmas: false,
            predict_x0: true,
            disable_corrector: Vec::new(),
            skip_prk_steps: false,
        }
    }

    /// Resolves the options: `config` keys (a scheduler config, possibly of another class), then
    /// `overrides` (the caller's single keys), then the defaults. A config's `solver_type` of the
    /// other family is mapped as diffusers maps it (bh1/bh2 → midpoint; midpoint/heun → bh2); an
    /// override must name one of this solver's own values.
    pub fn resolve(
        family: SolverFamily,
        config: &SolverKeys,
        overrides: &SolverKeys,
    ) -> Result<Self> {
        if let Some(bad) = config.unsupported.first() {
            bail!(
                "the scheduler config sets {bad}, which {} here does not support",
                family.class_name()
            );
        }
        if family == SolverFamily::Pndm {
            return Self::resolve_pndm(config, overrides);
        }
        let dpm = family == SolverFamily::DpmSolver;
        let only_for = |key: &str, given: bool, ok: bool, which: &str| -> Result<()> {
            ensure!(!given || ok, "`{key}` is an option of {which} only");
            Ok(())
        };
        only_for(
            "algorithm_type",
            overrides.algorithm_type.is_some(),
            dpm,
            "dpm-solver++",
        )?;
        only_for(
            "euler_at_final",
            overrides.euler_at_final.is_some(),
            dpm,
            "dpm-solver++",
        )?;
        only_for(
            "lambda_min_clipped",
            overrides.lambda_min_clipped.is_some(),
            dpm,
            "dpm-solver++",
        )?;
        only_for("predict_x0", overrides.predict_x0.is_some(), !dpm, "unipc")?;
        only_for(
            "disable_corrector",
            overrides.disable_corrector.is_some(),
            !dpm,
            "unipc",
        )?;
        only_for(
            "skip_prk_steps",
            overrides.skip_prk_steps.is_some(),
            false,
            "pndm",
        )?;
        let keys = config.overridden_by(overrides);
        let mut o = Self::defaults(family);
        if let Some(n) = keys.solver_order {
            ensure!(
                (1..=3).contains(&n),
                "`solver_order`: {n} is not supported; allowed: 1, 2, 3"
            );
            o.order = n;
        }
        if dpm {
            if let Some(a) = &keys.algorithm_type {
                o.algorithm = match a.as_str() {
                    // diffusers registers "deis" as dpmsolver++.
                    "deis" => DpmAlgorithm::DpmSolverPlusPlus,
                    _ => lookup("algorithm_type", a, ALGORITHMS)?,
                };
            }
        }
        let (own, other, mapped) = if dpm {
            (
                DPM_TYPES,
                &["logrho", "bh1", "bh2"][..],
                SolverType::Midpoint,
            )
        } else {
            (
                UNIPC_TYPES,
                &["logrho", "midpoint", "heun"][..],
                SolverType::Bh2,
            )
        };
        if let Some(t) = &overrides.solver_type {
            o.solver_type = lookup("solver_type", t, own)?;
        } else if let Some(t) = &config.solver_type {
            o.solver_type = if other.contains(&t.as_str()) {
                mapped
            } else {
                lookup("solver_type", t, own)?
            };
        }
        if let Some(v) = keys.lower_order_final {
            o.lower_order_final = v;
        }
        if let Some(v) = keys.euler_at_final {
            o.euler_at_final = v;
        }
        if let Some(f) = &keys.final_sigmas_type {
            o.final_sigmas = FinalSigmas::parse("final_sigmas_type", f)?;
        }
        if let Some(v) = keys.lambda_min_clipped {
            o.lambda_min_clipped = v;
        }
        if let Some(v) = keys.use_karras_sigmas {
            o.use_karras_sigmas = v;
        }
        if let Some(v) = keys.predict_x0 {
            o.predict_x0 = v;
        }
        if let Some(v) = &keys.disable_corrector {
            o.disable_corrector = v.clone();
        }
        o.check()?;
        Ok(o)
    }

    /// PNDM's options: `skip_prk_steps` from the overrides or the config; any other solver key
    /// given by the caller is refused (a config's keys of other classes are ignored, as
    /// `from_config` does).
    fn resolve_pndm(config: &SolverKeys, overrides: &SolverKeys) -> Result<Self> {
        let other = SolverKeys {
            skip_prk_steps: None,
            ..overrides.clone()
        };
        if let Some((key, _)) = other.given().first() {
            bail!(
                "`{key}` is an option of the multistep solvers (dpm-solver++, unipc), not of pndm"
            );
        }
        let mut o = Self::defaults(SolverFamily::Pndm);
        o.order = 4;
        o.skip_prk_steps = overrides
            .skip_prk_steps
            .or(config.skip_prk_steps)
            .unwrap_or(false);
        Ok(o)
    }

    /// Combinations diffusers refuses, or for which it gives NaN at the last step.
    fn check(&self) -> Result<()> {
        let zero = self.final_sigmas == FinalSigmas::Zero;
        match self.family {
            SolverFamily::DpmSolver => {
                ensure!(
                    !zero || self.algorithm.predicts_x0(),
                    "`final_sigmas_type` zero is not supported with `algorithm_type` {} \
                     (diffusers refuses it); use final_sigmas_type sigma_min",
                    self.algorithm.as_str()
                );
                ensure!(
                    !(self.algorithm == DpmAlgorithm::SdeDpmSolver && self.order == 3),
                    "`solver_order` 3 is not supported with `algorithm_type` sde-dpmsolver \
                     (diffusers has no third-order update for it); use solver_order 1 or 2, or \
                     sde-dpmsolver++"
                );
            }
            SolverFamily::Pndm => {}
            SolverFamily::UniPc => {
                ensure!(
                    !zero || self.predict_x0,
                    "`final_sigmas_type` zero with `predict_x0` false divides by zero at the last \
                     step (diffusers returns NaN); use final_sigmas_type sigma_min or predict_x0 true"
                );
                ensure!(
                    !(zero && self.solver_type == SolverType::Bh1),
                    "`final_sigmas_type` zero with `solver_type` bh1 multiplies infinity by zero at \
                     the last step (diffusers returns NaN); use solver_type bh2 or final_sigmas_type \
                     sigma_min"
                );
            }
        }
        Ok(())
    }

    /// The options as a JSON object in diffusers' key names (only those of this family).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("_class_name".into(), json!(self.family.class_name()));
        m.insert("solver_order".into(), json!(self.order));
        m.insert("solver_type".into(), json!(self.solver_type.as_str()));
        m.insert("lower_order_final".into(), json!(self.lower_order_final));
        m.insert(
            "final_sigmas_type".into(),
            json!(self.final_sigmas.as_str()),
        );
        m.insert("use_karras_sigmas".into(), json!(self.use_karras_sigmas));
        match self.family {
            SolverFamily::DpmSolver => {
                m.insert("algorithm_type".into(), json!(self.algorithm.as_str()));
                m.insert("euler_at_final".into(), json!(self.euler_at_final));
                m.insert(
                    "lambda_min_clipped".into(),
                    if self.lambda_min_clipped.is_finite() {
                        json!(self.lambda_min_clipped)
                    } else {
                        json!(self.lambda_min_clipped.to_string())
                    },
                );
            }
            SolverFamily::UniPc => {
                m.insert("predict_x0".into(), json!(self.predict_x0));
                m.insert("disable_corrector".into(), json!(self.disable_corrector));
            }
            SolverFamily::Pndm => {
                let mut p = Map::new();
                p.insert("_class_name".into(), json!(self.family.class_name()));
                p.insert("skip_prk_steps".into(), json!(self.skip_prk_steps));
                return Value::Object(p);
            }
        }
        Value::Object(m)
    }

    /// Whether the converted model output is the data prediction x0 (else the noise ε).
    pub fn predicts_x0(&self) -> bool {
        match self.family {
            SolverFamily::DpmSolver => self.algorithm.predicts_x0(),
            SolverFamily::UniPc => self.predict_x0,
            SolverFamily::Pndm => false,
        }
    }
}

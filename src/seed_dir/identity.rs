//! What a seed folder's images are made of: every setting that determines their pixels, as sorted
//! `key → value` text. Two runs share a folder only when their identities are equal; a refusal
//! names each key that differs with both values.
//!
//! The settings structs are taken apart field by field with exhaustive patterns, so a field added
//! to any of them does not compile until it is given its one line here. Values are written with
//! Rust's shortest round-trip float formatting and fixed spellings (never `Debug` output), so the
//! text stays the same across builds and versions.

use crate::gpu::Precision;
use crate::model::UNet2DConfig;
use crate::rng::RngKind;
use crate::sampling::{SampleSettings, SeedSet};
use crate::schedule::{SchedulerConfig, SigmaKeys, SolverKeys};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The settings of one seed-folder run, borrowed from where they live.
pub struct RunSettings<'a> {
    /// The model's parsed `config.json`.
    pub model_config: &'a UNet2DConfig,
    /// `Weights::sha256`: of the values, whatever file or path they came from.
    pub weights_sha256: &'a str,
    /// The scheduler after the command line's overrides.
    pub scheduler: &'a SchedulerConfig,
    pub settings: &'a SampleSettings,
    pub rng: RngKind,
    /// How the U-Net stores activations and weights (the CPU reference is f32).
    pub precision: Precision,
    /// Channels, height, width of one image.
    pub image: [usize; 3],
    /// The whole seed set, all shards together.
    pub seeds: &'a SeedSet,
    /// How many shards make the set.
    pub shards: u64,
    /// `--class` as given (one label for all seeds, or one per seed of the set); None for an
    /// unconditional model.
    pub class: Option<&'a crate::model::ClassLabels>,
    /// Classifier-free guidance when on (None when off, so folders made before guidance
    /// existed keep their identity).
    pub guidance: Option<&'a crate::sampling::Guided>,
}

/// Sorted `key → value`; serialised as a JSON object with sorted keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Identity(BTreeMap<String, String>);

/// One value as identity text.
trait Text {
    fn text(&self) -> String;
}

macro_rules! display_text {
    ($($t:ty),*) => {$(
        impl Text for $t {
            fn text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
// Display of f32/f64 is the shortest text that reads back to the same value ("0.0001", "-inf").
display_text!(bool, usize, u64, f32, f64, str, String);

impl<T: Text + ?Sized> Text for &T {
    fn text(&self) -> String {
        (**self).text()
    }
}

impl<T: Text> Text for Option<T> {
    fn text(&self) -> String {
        self.as_ref().map_or_else(|| "none".to_string(), Text::text)
    }
}

impl<T: Text> Text for Vec<T> {
    fn text(&self) -> String {
        let items: Vec<String> = self.iter().map(Text::text).collect();
        format!("[{}]", items.join(","))
    }
}

impl Identity {
    /// The identity of `run`.
    pub fn of(run: &RunSettings<'_>) -> Self {
        let mut id = Self::default();
        let RunSettings {
            model_config,
            weights_sha256,
            scheduler,
            settings,
            rng,
            precision,
            image: [c, h, w],
            seeds,
            shards,
            class,
            guidance,
        } = run;
        id.put("run.seeds", seeds.to_string());
        // Only class-conditional runs have the key, so folders made before it existed still match.
        if let Some(class) = class {
            id.put("run.class", class.describe());
        }
        if let Some(g) = guidance {
            id.put("run.guidance_scale", g.scale);
            id.put("run.guidance_rescale", g.rescale);
            id.put("run.null_class", g.null as u64);
        }
        id.put("run.shards", shards);
        id.put("image", format!("{c}x{h}x{w}"));
        id.put("model.weights_sha256", weights_sha256);
        id.model_config(model_config);
        id.scheduler(scheduler);
        id.sampler(settings);
        id.put(
            "rng",
            match rng {
                RngKind::Torch => "torch",
                RngKind::Philox => "philox",
            },
        );
        id.put(
            "precision",
            match precision {
                Precision::F32 => "f32",
                Precision::F16 => "f16",
            },
        );
        id
    }

    fn put(&mut self, key: &str, value: impl Text) {
        self.0.insert(key.to_string(), value.text());
    }

    /// Every key of the model's config (its serde form, so a new config field is covered by
    /// its derive), as compact JSON.
    fn model_config(&mut self, config: &UNet2DConfig) {
        match serde_json::to_value(config) {
            Ok(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    self.put(&format!("model.config.{k}"), v.to_string());
                }
            }
            // Unreachable for a derived Serialize of a struct; kept whole rather than lost.
            other => self.put("model.config", format!("{other:?}")),
        }
    }

    fn scheduler(&mut self, cfg: &SchedulerConfig) {
        let SchedulerConfig {
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            clip_sample,
            clip_sample_range,
            set_alpha_to_one,
            steps_offset,
            prediction_type,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
            timestep_spacing,
            rescale_betas_zero_snr,
            variance_type,
            timestep_spacing_given,
            class_name,
            solver_keys,
            sigma_keys,
            keys,
        } = cfg;
        let s = |k: &str| format!("scheduler.{k}");
        self.put(&s("num_train_timesteps"), num_train_timesteps);
        self.put(&s("beta_start"), beta_start);
        self.put(&s("beta_end"), beta_end);
        self.put(&s("beta_schedule"), beta_schedule.as_str());
        self.put(
            &s("trained_betas"),
            trained_betas.as_ref().map(|b| {
                let text = Text::text(b);
                format!(
                    "{} values, sha256 {}",
                    b.len(),
                    super::sha256_hex(text.as_bytes())
                )
            }),
        );
        self.put(&s("clip_sample"), clip_sample);
        self.put(&s("clip_sample_range"), clip_sample_range);
        self.put(&s("set_alpha_to_one"), set_alpha_to_one);
        self.put(&s("steps_offset"), steps_offset);
        self.put(&s("prediction_type"), prediction_type.as_str());
        self.put(&s("thresholding"), thresholding);
        self.put(&s("dynamic_thresholding_ratio"), dynamic_thresholding_ratio);
        self.put(&s("sample_max_value"), sample_max_value);
        self.put(&s("timestep_spacing"), timestep_spacing.as_str());
        self.put(&s("rescale_betas_zero_snr"), rescale_betas_zero_snr);
        self.put(&s("variance_type"), variance_type);
        self.put(&s("timestep_spacing_given"), timestep_spacing_given);
        self.put(&s("_class_name"), class_name);
        self.solver_keys("scheduler", solver_keys);
        self.sigma_keys("scheduler", sigma_keys);
        // Keys read by one sampler only (PNDM's set_alpha_to_one default, the consistency
        // models' σ range): the file's own values.
        self.put(
            &s("keys"),
            serde_json::Value::Object(keys.clone()).to_string(),
        );
    }

    fn sampler(&mut self, settings: &SampleSettings) {
        let SampleSettings {
            sampler,
            steps,
            eta,
            use_clipped_model_output,
            solver,
            sigma,
            timesteps,
        } = settings;
        self.put("sampler", sampler.as_str());
        self.put("sampler.steps", steps);
        self.put("sampler.eta", eta);
        self.put("sampler.use_clipped_model_output", use_clipped_model_output);
        self.solver_keys("sampler", solver);
        self.sigma_keys("sampler", sigma);
        self.put("sampler.timesteps", timesteps);
    }

    /// σ-sampler options under `prefix.sigma.*`, only those given: a folder made before these
    /// samplers existed keeps its identity. (Whether a config gives clip_sample or the betas
    /// is not recorded: their values are, under `scheduler.*`.)
    fn sigma_keys(&mut self, prefix: &str, keys: &SigmaKeys) {
        for (name, value) in keys.given() {
            self.put(&format!("{prefix}.sigma.{name}"), value.to_string());
        }
    }

    /// Solver options under `prefix.solver.*` (the config's and the command line's both count).
    fn solver_keys(&mut self, prefix: &str, keys: &SolverKeys) {
        let SolverKeys {
            solver_order,
            algorithm_type,
            solver_type,
            lower_order_final,
            euler_at_final,
            final_sigmas_type,
            lambda_min_clipped,
            use_karras_sigmas,
            predict_x0,
            disable_corrector,
            skip_prk_steps,
            unsupported,
        } = keys;
        let k = |name: &str| format!("{prefix}.solver.{name}");
        self.put(&k("solver_order"), solver_order);
        self.put(&k("algorithm_type"), algorithm_type);
        self.put(&k("solver_type"), solver_type);
        self.put(&k("lower_order_final"), lower_order_final);
        self.put(&k("euler_at_final"), euler_at_final);
        self.put(&k("final_sigmas_type"), final_sigmas_type);
        self.put(&k("lambda_min_clipped"), lambda_min_clipped);
        self.put(&k("use_karras_sigmas"), use_karras_sigmas);
        self.put(&k("predict_x0"), predict_x0);
        self.put(&k("disable_corrector"), disable_corrector);
        self.put(&k("skip_prk_steps"), skip_prk_steps);
        self.put(&k("unsupported"), unsupported);
    }

    /// One line per key whose value differs between this run and `folder`'s, with both values.
    pub fn differences(&self, folder: &Self) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(folder.0.keys()).collect();
        keys.into_iter()
            .filter(|k| self.0.get(*k) != folder.0.get(*k))
            .map(|k| {
                let show = |v: Option<&String>| {
                    v.map_or("(not recorded)".to_string(), |v| format!("{v:?}"))
                };
                format!(
                    "{k}: the folder has {}, this run {}",
                    show(folder.0.get(k)),
                    show(self.0.get(k))
                )
            })
            .collect()
    }

    /// The value of `key`, if recorded.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

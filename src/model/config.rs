//! `config.json` of a diffusers `UNet2DModel`.
//!
//! Missing keys take the defaults of `UNet2DModel.__init__` (diffusers 0.42), so a config written by
//! any diffusers version means what it means there. Every configuration `UNet2DModel` builds
//! without cross-attention is accepted; anything else (other block types, other embeddings, ...)
//! is refused with an "unsupported" error that lists what is allowed, and sizes are bounded
//! before anything is allocated.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest channel count accepted anywhere (block channels, in/out channels, embedding width).
/// Largest config.json read: diffusers' are about 2 KB.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
pub const MAX_CHANNELS: usize = 1 << 16;
/// Largest number of down (and up) blocks.
pub const MAX_BLOCKS: usize = 16;
/// Largest `layers_per_block`.
pub const MAX_LAYERS_PER_BLOCK: usize = 64;
/// Largest parameter count accepted: 1 G parameters, i.e. 4 GiB of f32 weights.
pub const MAX_PARAMETERS: u64 = 1 << 30;
/// Largest image side (`sample_size`) accepted: far above any pixel-space model, and small
/// enough that sizes and FLOP counts stay within 64 bits.
pub const MAX_SAMPLE_SIZE: usize = 1 << 14;
/// Largest `num_train_timesteps` of a `learned` time embedding (its table's rows).
pub const MAX_TIMESTEP_ROWS: usize = 1 << 20;

/// `sample_size` may be an integer, a `[height, width]` pair, or absent.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

/// The fields of `UNet2DModel`'s config that this crate reads, with diffusers' defaults.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct UNet2DConfig {
    pub sample_size: Option<SampleSize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    /// Width of the time embedding MLP; `None` means `4 * block_out_channels[0]`.
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f32,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f32,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    /// Training-only; ignored.
    pub dropout: f32,
    pub act_fn: String,
    /// `None` (JSON null) means one head per block (head dim = block channels).
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: Option<usize>,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f32,
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    /// Rows of the `learned` time embedding table (only read by `time_embedding_type = "learned"`).
    pub num_train_timesteps: Option<usize>,
    /// The label of the unconditional half under classifier-free guidance, as this crate's
    /// models declare it (`"_null_class_label": N`; diffusers ignores keys starting with `_`).
    /// Left out of the serialised config when absent, so seed-folder identities of models
    /// without it are unchanged.
    #[serde(rename = "_null_class_label", skip_serializing_if = "Option::is_none")]
    pub null_class_label: Option<u32>,
}

impl Default for UNet2DConfig {
    /// The defaults of `UNet2DModel.__init__`.
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: s(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: s(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
            null_class_label: None,
        }
    }
}

/// Keys of `config.json` that are understood (read above, or irrelevant at inference).
const KNOWN_KEYS: &[&str] = &[
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
    "num_train_timesteps",
];

/// A down block: resnets (optionally each followed by an attention), then a downsampler unless
/// last. How it downsamples is fixed by the kind, except for `AttnDown` (`downsample_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownBlockKind {
    /// `DownBlock2D`: a 3×3 stride-2 conv (whatever `downsample_type` says).
    Down,
    /// `AttnDownBlock2D`: a conv or a resnet with average pooling, per `downsample_type`.
    AttnDown,
    /// `ResnetDownsampleBlock2D`: always a resnet with average pooling.
    ResnetDownsample,
    /// `SkipDownBlock2D`: a FIR resnet plus the image path (NCSN++).
    SkipDown,
    /// `AttnSkipDownBlock2D`: as `SkipDown`, with an attention after each resnet.
    AttnSkipDown,
}

/// An up block: `layers_per_block + 1` resnets (optionally with attentions), then an upsampler
/// unless last; the kinds mirror [`DownBlockKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpBlockKind {
    Up,
    AttnUp,
    ResnetUpsample,
    SkipUp,
    /// `AttnSkipUpBlock2D`: one attention after all resnets.
    AttnSkipUp,
}

impl DownBlockKind {
    /// The skip (NCSN++) blocks: fixed group counts, FIR resampling, the image path.
    pub fn is_skip(self) -> bool {
        matches!(self, Self::SkipDown | Self::AttnSkipDown)
    }
}

impl UpBlockKind {
    pub fn is_skip(self) -> bool {
        matches!(self, Self::SkipUp | Self::AttnSkipUp)
    }
}

/// How the time embedding's input is made from t (`time_embedding_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeEmbeddingType {
    /// The sinusoidal `Timesteps` projection, width `block_out_channels[0]`.
    Positional,
    /// `GaussianFourierProjection` of ln t, width `2·block_out_channels[0]`.
    Fourier,
    /// A `num_train_timesteps × block_out_channels[0]` table indexed by an integer t.
    Learned,
}

/// The class embedding added to the time embedding (`num_class_embeds` / `class_embed_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassEmbedType {
    /// `class_embed_type` null with `num_class_embeds = K`: a `K × time_embed_dim` table.
    Table { classes: usize },
    /// `"timestep"`: the label goes through the time projection and its own MLP.
    Timestep,
    /// `"identity"`: the caller gives a `time_embed_dim`-wide vector per image.
    Identity,
}

impl UNet2DConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::path_kind::read_text_bounded(path, "model config", MAX_CONFIG_BYTES)?;
        Self::from_json(&text).with_context(|| format!("in model config {}", path.display()))
    }

    /// Parses and validates the JSON text of `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).context("config.json is not valid JSON")?;
        let object = value
            .as_object()
            .context("config.json must hold a JSON object")?;
        if let Some(class) = object.get("_class_name").and_then(|v| v.as_str()) {
            ensure!(
                class == "UNet2DModel",
                "unsupported _class_name {class:?} in config.json (allowed: \"UNet2DModel\")"
            );
        }
        for key in object.keys() {
            if !key.starts_with('_') && !KNOWN_KEYS.contains(&key.as_str()) {
                log::warn!("config.json: ignoring unknown key {key:?}");
            }
        }
        let config: Self = match serde_json::from_value(value.clone()) {
            Ok(c) => c,
            Err(e) => {
                // serde's message lacks the field; find it by parsing each key on its own.
                let culprit = object.iter().find(|(k, v)| {
                    let single = serde_json::json!({ k.as_str(): v });
                    serde_json::from_value::<Self>(single).is_err()
                });
                match culprit {
                    Some((k, v)) => bail!("config.json: invalid value {v} for {k:?}: {e}"),
                    None => bail!("config.json does not match the UNet2DModel config format: {e}"),
                }
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every field against what this crate implements and bounds every size.
    pub fn validate(&self) -> Result<()> {
        fn allowed(field: &str, value: &str, options: &[&str]) -> Result<()> {
            ensure!(
                options.contains(&value),
                "unsupported {field} {value:?} in config.json (allowed: {})",
                options.join(", ")
            );
            Ok(())
        }
        allowed(
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional", "fourier", "learned"],
        )?;
        allowed("act_fn", &self.act_fn, &["silu", "swish"])?;
        allowed(
            "downsample_type",
            &self.downsample_type,
            &["conv", "resnet"],
        )?;
        allowed("upsample_type", &self.upsample_type, &["conv", "resnet"])?;
        allowed(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default", "scale_shift"],
        )?;
        if let Some(mid) = &self.mid_block_type {
            allowed("mid_block_type", mid, &["UNetMidBlock2D"])?;
        }
        if let Some(c) = &self.class_embed_type {
            ensure!(
                c == "timestep" || c == "identity",
                "unsupported class_embed_type {c:?} in config.json (allowed: null, timestep, identity)"
            );
        }
        ensure!(
            self.num_class_embeds != Some(0),
            "num_class_embeds in config.json must be positive"
        );
        if self.time_embedding() == TimeEmbeddingType::Learned {
            let rows = self.num_train_timesteps.context(
                "time_embedding_type \"learned\" in config.json needs num_train_timesteps (the rows of its table)",
            )?;
            ensure!(
                (1..=MAX_TIMESTEP_ROWS).contains(&rows),
                "num_train_timesteps = {rows} in config.json is out of range (1..={MAX_TIMESTEP_ROWS})"
            );
        }
        let down = self.down_blocks()?;
        let up = self.up_blocks()?;
        let any_skip = down.iter().any(|k| k.is_skip()) || up.iter().any(|k| k.is_skip());
        ensure!(
            !any_skip || (self.in_channels == 3 && self.out_channels == 3),
            "config.json has skip blocks with in_channels = {} and out_channels = {}; diffusers' skip \
             blocks hard-wire the image path to 3 channels, so both must be 3",
            self.in_channels,
            self.out_channels
        );

        let n = self.block_out_channels.len();
        ensure!(n > 0, "block_out_channels in config.json is empty");
        ensure!(
            n <= MAX_BLOCKS,
            "config.json has {n} blocks; at most {MAX_BLOCKS} are supported"
        );
        ensure!(
            self.down_block_types.len() == n && self.up_block_types.len() == n,
            "config.json has {} down_block_types, {} up_block_types and {n} block_out_channels; all three must match",
            self.down_block_types.len(),
            self.up_block_types.len()
        );
        let mut channels = vec![
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ];
        channels.extend(
            self.block_out_channels
                .iter()
                .map(|&c| ("block_out_channels", c)),
        );
        if let Some(d) = self.time_embedding_dim {
            channels.push(("time_embedding_dim", d));
        }
        for (field, c) in channels {
            ensure!(c > 0, "{field} in config.json must be positive");
            ensure!(
                c <= MAX_CHANNELS,
                "{field} = {c} in config.json is absurdly large (at most {MAX_CHANNELS} channels are \
                 supported; the weights alone would need far more memory than a GPU has)"
            );
        }
        ensure!(
            (1..=MAX_LAYERS_PER_BLOCK).contains(&self.layers_per_block),
            "layers_per_block = {} in config.json is out of range (1..={MAX_LAYERS_PER_BLOCK})",
            self.layers_per_block
        );
        match self.norm_num_groups {
            Some(groups) => ensure!(
                groups > 0,
                "norm_num_groups in config.json must be positive"
            ),
            None => {
                // Skip blocks choose their own groups; every other block would build GroupNorm(None).
                let down_other = (self.down_block_types.iter().zip(&down))
                    .find(|(_, k)| !k.is_skip())
                    .map(|(t, _)| t);
                let up_other = (self.up_block_types.iter().zip(&up))
                    .find(|(_, k)| !k.is_skip())
                    .map(|(t, _)| t);
                let other = down_other.or(up_other);
                if let Some(t) = other {
                    bail!(
                        "unsupported norm_num_groups null in config.json with block type {t:?} \
                         (null is allowed only when every block is a skip block: SkipDownBlock2D, \
                         AttnSkipDownBlock2D, SkipUpBlock2D, AttnSkipUpBlock2D)"
                    );
                }
            }
        }
        ensure!(
            self.attention_head_dim != Some(0),
            "attention_head_dim in config.json must be positive"
        );
        ensure!(
            self.attn_norm_num_groups != Some(0),
            "attn_norm_num_groups in config.json must be positive"
        );
        ensure!(
            self.norm_eps.is_finite() && self.norm_eps >= 0.0,
            "norm_eps in config.json must be a non-negative number"
        );
        ensure!(
            self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor != 0.0,
            "mid_block_scale_factor in config.json must be a non-zero number"
        );
        ensure!(
            self.freq_shift.is_finite()
                && (self.freq_shift as f64) < (self.time_proj_dim() / 2) as f64,
            "freq_shift = {} in config.json must be below half the embedding width ({})",
            self.freq_shift,
            self.time_proj_dim() / 2
        );
        ensure!(
            self.downsample_padding <= 2,
            "downsample_padding = {} in config.json is not supported (allowed: 0, 1, 2)",
            self.downsample_padding
        );
        if let Some(SampleSize::Square(0) | SampleSize::HeightWidth([0, _] | [_, 0])) =
            self.sample_size
        {
            bail!("sample_size in config.json must be positive");
        }
        let sides = match self.sample_size {
            Some(SampleSize::Square(s)) => [s, s],
            Some(SampleSize::HeightWidth(hw)) => hw,
            None => [0, 0],
        };
        ensure!(
            sides.iter().all(|&s| s <= MAX_SAMPLE_SIZE),
            "sample_size {sides:?} in config.json is absurdly large (at most {MAX_SAMPLE_SIZE} \
             pixels a side are supported)"
        );
        Ok(())
    }

    /// The down block kinds, in order (a `UNetRes` prefix is dropped, as diffusers does).
    pub fn down_blocks(&self) -> Result<Vec<DownBlockKind>> {
        self.down_block_types
            .iter()
            .map(|t| match t.strip_prefix("UNetRes").unwrap_or(t) {
                "DownBlock2D" => Ok(DownBlockKind::Down),
                "AttnDownBlock2D" => Ok(DownBlockKind::AttnDown),
                "ResnetDownsampleBlock2D" => Ok(DownBlockKind::ResnetDownsample),
                "SkipDownBlock2D" => Ok(DownBlockKind::SkipDown),
                "AttnSkipDownBlock2D" => Ok(DownBlockKind::AttnSkipDown),
                other => bail!(
                    "unsupported down block type {other:?} in config.json (allowed: DownBlock2D, \
                     AttnDownBlock2D, ResnetDownsampleBlock2D, SkipDownBlock2D, AttnSkipDownBlock2D)"
                ),
            })
            .collect()
    }

    /// The up block kinds, in order.
    pub fn up_blocks(&self) -> Result<Vec<UpBlockKind>> {
        self.up_block_types
            .iter()
            .map(|t| match t.strip_prefix("UNetRes").unwrap_or(t) {
                "UpBlock2D" => Ok(UpBlockKind::Up),
                "AttnUpBlock2D" => Ok(UpBlockKind::AttnUp),
                "ResnetUpsampleBlock2D" => Ok(UpBlockKind::ResnetUpsample),
                "SkipUpBlock2D" => Ok(UpBlockKind::SkipUp),
                "AttnSkipUpBlock2D" => Ok(UpBlockKind::AttnSkipUp),
                other => bail!(
                    "unsupported up block type {other:?} in config.json (allowed: UpBlock2D, \
                     AttnUpBlock2D, ResnetUpsampleBlock2D, SkipUpBlock2D, AttnSkipUpBlock2D)"
                ),
            })
            .collect()
    }

    /// The time projection (validated: anything else was refused).
    pub fn time_embedding(&self) -> TimeEmbeddingType {
        match self.time_embedding_type.as_str() {
            "fourier" => TimeEmbeddingType::Fourier,
            "learned" => TimeEmbeddingType::Learned,
            _ => TimeEmbeddingType::Positional,
        }
    }

    /// The class embedding, if the model is class-conditional. As in diffusers, a null
    /// `class_embed_type` without `num_class_embeds` means none.
    pub fn class_embedding(&self) -> Option<ClassEmbedType> {
        match (self.class_embed_type.as_deref(), self.num_class_embeds) {
            (Some("timestep"), _) => Some(ClassEmbedType::Timestep),
            (Some("identity"), _) => Some(ClassEmbedType::Identity),
            (_, Some(classes)) => Some(ClassEmbedType::Table { classes }),
            _ => None,
        }
    }

    /// Width of the time projection that feeds the time MLP: `block_out_channels[0]`, doubled
    /// for Fourier ([sin | cos] of `block_out_channels[0]` frequencies).
    pub fn time_proj_dim(&self) -> usize {
        let c = self.block_out_channels.first().copied().unwrap_or(0);
        match self.time_embedding() {
            TimeEmbeddingType::Fourier => 2 * c,
            _ => c,
        }
    }

    /// Width of the time embedding MLP output fed to every resnet.
    pub fn time_embed_dim(&self) -> usize {
        let c0 = self.block_out_channels.first().copied().unwrap_or(0);
        self.time_embedding_dim.unwrap_or(4 * c0)
    }

    /// The configured image size (height, width), if any.
    pub fn sample_hw(&self) -> Option<(usize, usize)> {
        match self.sample_size {
            Some(SampleSize::Square(s)) => Some((s, s)),
            Some(SampleSize::HeightWidth([h, w])) => Some((h, w)),
            None => None,
        }
    }

    /// Whether resnets use `scale_shift` time conditioning (norm2(h)·(1+scale)+shift).
    pub fn scale_shift(&self) -> bool {
        self.resnet_time_scale_shift == "scale_shift"
    }

    /// The google/ddpm-cifar10-32 architecture (35.7 M parameters).
    pub fn cifar10() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: Some(SampleSize::Square(32)),
            in_channels: 3,
            out_channels: 3,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            down_block_types: s(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: s(&["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![128, 256, 256, 256],
            layers_per_block: 2,
            downsample_padding: 0,
            attention_head_dim: None,
            norm_eps: 1e-6,
            ..Self::default()
        }
    }

    /// google/ddpm-{church,cat,bedroom,celebahq}-256 (113.7 M parameters): 3 channels at 256×256,
    /// six levels (128, 128, 256, 256, 512, 512), attention at 16×16 and in the mid block.
    pub fn ddpm_256() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: Some(SampleSize::Square(256)),
            in_channels: 3,
            out_channels: 3,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            down_block_types: s(&[
                "DownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
                "AttnDownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: s(&[
                "UpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![128, 128, 256, 256, 512, 512],
            layers_per_block: 2,
            downsample_padding: 0,
            attention_head_dim: None,
            norm_eps: 1e-6,
            ..Self::default()
        }
    }

    /// The architecture of the bundled MNIST model (tools/train_mnist.py `UNET_CONFIG`): 1 channel
    /// at 32×32, block channels (32, 64, 64), one layer per block, 8 norm groups, one-head
    /// attention in the middle (16×16) blocks and the mid block; other fields at diffusers defaults.
    pub fn mnist_like() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: Some(SampleSize::Square(32)),
            in_channels: 1,
            out_channels: 1,
            down_block_types: s(&["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]),
            up_block_types: s(&["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![32, 64, 64],
            layers_per_block: 1,
            attention_head_dim: None,
            norm_num_groups: Some(8),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_diffusers_and_cifar10_validates() {
        let c = UNet2DConfig::from_json(r#"{"block_out_channels":[32,64,64,64]}"#).unwrap();
        assert_eq!(c.attention_head_dim, Some(8));
        assert!(c.flip_sin_to_cos);
        assert_eq!(c.norm_eps, 1e-5);
        let n = UNet2DConfig::from_json(
            r#"{"attention_head_dim":null,"block_out_channels":[32,64,64,64]}"#,
        )
        .unwrap();
        assert_eq!(n.attention_head_dim, None);
        UNet2DConfig::cifar10().validate().unwrap();
        UNet2DConfig::mnist_like().validate().unwrap();
    }

    #[test]
    fn unsupported_values_are_named() {
        let e = UNet2DConfig::from_json(r#"{"time_embedding_type":"sinusoidal"}"#).unwrap_err();
        assert!(
            format!("{e:#}").contains("unsupported time_embedding_type"),
            "{e:#}"
        );
        let e =
            UNet2DConfig::from_json(r#"{"block_out_channels":[2000000000,1,1,1]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("absurdly large"), "{e:#}");
    }
}

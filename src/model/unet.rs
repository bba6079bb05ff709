//! The U-Net as an explicit, static program: one list of layers built once from the config, for a
//! given image size, and walked unchanged by the CPU reference (`cpu::forward`) and the GPU plan.
//!
//! # Execution model
//! A forward pass keeps one current activation `h` (per image `[C, H, W]`, batch chosen at run
//! time) plus the time embedding `emb` `[B, time_embed_dim]` computed once up front by
//! [`TimeEmbedding`]. [`UNet::layers`] are applied in order, each reading `h` and replacing it:
//!
//! * [`Op::PushSkip`] stores the current `h` in skip slot `slot` (no arithmetic: a GPU plan keeps
//!   that buffer alive until the matching [`Op::ConcatSkip`]);
//! * [`Op::ConcatSkip`] sets `h = cat([h, skip[slot]], channels)` (h first), releasing the slot;
//! * [`Op::Resnet`] reads `emb` as well;
//! * the skip (NCSN++) blocks' image path is a second activation `s` (3 channels) that only the
//!   `SkipImage*` ops read and write: [`Op::SkipImageCapture`] sets it from `h` before `conv_in`,
//!   [`Op::SkipImageDown`] / [`Op::SkipImageUp`] resample it per block (and add it to `h`, or a
//!   projection of `h` to it), [`Op::SkipImageAdd`] adds it to the output;
//! * [`Op::DivideBySigma`] reads the timesteps (Fourier models: the output becomes the score);
//! * every other op is a function of `h` alone.
//!
//! `emb` is [`TimeEmbedding`]: the time projection ([`TimeProj`]) through its MLP, plus the
//! class embedding ([`ClassEmbedding`]) of the image's label when the model has one.
//!
//! Slots are numbered in push order and consumed in reverse (a stack), exactly as diffusers'
//! `down_block_res_samples`. Each layer records its per-image input and output shape, its FLOPs
//! per image and its parameter count, and names its weights by their (new-style) diffusers
//! state-dict keys, so a planner can allocate buffers and emit dispatches without re-deriving the
//! architecture.
//!
//! # Layer order (cifar10 architecture, abridged)
//! ```text
//! conv_in, skip.0,
//! down_blocks.0.resnets.0, skip.1, down_blocks.0.resnets.1, skip.2, down_blocks.0.downsamplers.0.conv, skip.3,
//! down_blocks.1.resnets.0, down_blocks.1.attentions.0, skip.4, ...            (attention right after its resnet)
//! mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1,
//! up_blocks.0.resnets.0.concat, up_blocks.0.resnets.0, ...,                  (concat pops the newest skip)
//! up_blocks.0.upsamplers.0.interpolate, up_blocks.0.upsamplers.0.conv, ...,
//! conv_norm_out (group norm + SiLU), conv_out
//! ```
//! `ddim info --layers` (or `--json`) prints the full list for any model.
//!
//! # FLOP convention
//! 2 × multiply-adds of convolutions, linear layers and attention matmuls (q/k/v/out projections,
//! q·kᵀ and p·v); norms, activations and additions are not counted. Convolution:
//! 2·OH·OW·Cout·KH·KW·Cin per image.

use crate::model::config::{
    ClassEmbedType, DownBlockKind, TimeEmbeddingType, UNet2DConfig, UpBlockKind, MAX_PARAMETERS,
};
use anyhow::{bail, ensure, Result};

/// Zero padding added around the input of a convolution, in pixels per side.
/// Asymmetric padding is needed for diffusers' `Downsample2D` with `downsample_padding=0`
/// (pad right and bottom by one, then a stride-2 convolution without padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Padding {
    /// The same padding `p` on all four sides (torch's `Conv2d(padding=p)`).
    pub fn same(p: usize) -> Self {
        Self {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }
}

/// Output height and width of a convolution; panics when the kernel does not fit the padded input.
pub fn conv2d_output_size(
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: Padding,
) -> (usize, usize) {
    assert!(stride > 0, "conv2d stride must be positive");
    let ph = h + pad.top + pad.bottom;
    let pw = w + pad.left + pad.right;
    assert!(
        ph >= kh && pw >= kw,
        "conv2d kernel {kh}x{kw} larger than padded input {ph}x{pw}"
    );
    ((ph - kh) / stride + 1, (pw - kw) / stride + 1)
}

/// Expands `timesteps` to one per batch element: a single value is used for the whole batch,
/// otherwise there must be exactly `batch` values.
pub fn broadcast_timesteps(timesteps: &[f32], batch: usize) -> Result<Vec<f32>> {
    match timesteps.len() {
        1 => Ok(vec![timesteps[0]; batch]),
        n if n == batch => Ok(timesteps.to_vec()),
        n => anyhow::bail!(
            "got {n} timesteps for a batch of {batch}: give one timestep for the whole batch or one per element"
        ),
    }
}

/// Per-image activation shape; the batch dimension is chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// One named weight tensor the model needs, with its exact shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// torch `Conv2d` with bias. Weight `[out, in, kernel, kernel]`, bias `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    pub weight: String,
    pub bias: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
}

/// torch `GroupNorm` with affine weight and bias `[channels]`.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupNorm {
    pub weight: String,
    pub bias: String,
    pub channels: usize,
    pub groups: usize,
    pub eps: f32,
}

/// torch `Linear` with bias: weight `[out, in]`, bias `[out]`, y = x Wᵀ + b.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub weight: String,
    pub bias: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// How a resnet resamples both of its paths (diffusers `ResnetBlock2D(up/down=True)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// 2×2 average pooling, stride 2 (`ResnetDownsampleBlock2D`, `downsample_type: "resnet"`).
    AvgPool2x2,
    /// Nearest-neighbour ×2 (`ResnetUpsampleBlock2D`, `upsample_type: "resnet"`).
    Nearest2x,
    /// The (1, 3, 3, 1) FIR filter, ×½ (skip blocks' `resnet_down`).
    FirDown2,
    /// The (1, 3, 3, 1) FIR filter, ×2 (skip blocks' `resnet_up`).
    FirUp2,
}

impl Resample {
    /// Output height and width for an input of `h × w` (downsampling floors odd sizes).
    pub fn output_hw(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Self::AvgPool2x2 | Self::FirDown2 => (h / 2, w / 2),
            Self::Nearest2x | Self::FirUp2 => (2 * h, 2 * w),
        }
    }
}

/// diffusers `ResnetBlock2D` (pre-norm, SiLU):
/// ```text
/// t   = time_emb_proj(silu(emb))                               [B, out] (or [B, 2·out])
/// a   = silu(norm1(x))
/// with `resample` R: x = R(x); a = R(a)                         (both paths, after norm1 + SiLU)
/// y   = conv1(a)
/// default:     y = silu(norm2(y + t[:, :, None, None]))
/// scale_shift: (scale, shift) = split(t); y = silu(norm2(y) * (1 + scale) + shift)
/// y   = conv2(y)
/// out = (shortcut(x) or x) + y, divided by output_scale_factor
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Resnet {
    pub in_channels: usize,
    pub out_channels: usize,
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    /// `out_features` is `out_channels`, or `2·out_channels` with `scale_shift`.
    pub time_emb_proj: Linear,
    pub scale_shift: bool,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1×1 convolution (on the resampled x), present when `in_channels != out_channels` and
    /// always in the skip blocks' `resnet_down` / `resnet_up`.
    pub shortcut: Option<Conv2d>,
    pub output_scale_factor: f32,
    /// Resampling of both paths after norm1 + SiLU; `None` keeps the size.
    pub resample: Option<Resample>,
}

/// diffusers `Attention` as built by the Attn*Block2D / UNetMidBlock2D (self-attention over the
/// H·W tokens, token index y·W + x):
/// ```text
/// t = tokens(norm(x) or x)                  [B, HW, C]
/// q, k, v = to_q(t), to_k(t), to_v(t)       [B, HW, heads·head_dim]
/// o = per head softmax(q kᵀ / √head_dim) v  (head h = channels h·head_dim ..)
/// out = (image(to_out(o)) + x) / rescale_output_factor
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Absent only in a `scale_shift` mid block without `attn_norm_num_groups` (as in diffusers).
    pub norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub rescale_output_factor: f32,
}

impl Attention {
    /// Width of q, k and v: `heads · head_dim` (equal to `channels` unless it is not divisible).
    pub fn inner_dim(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// The projection of t (or of a `"timestep"` class label) that feeds an embedding MLP.
#[derive(Clone, Debug, PartialEq)]
pub enum TimeProj {
    /// diffusers `Timesteps`: the sinusoid of f32(t), width `dim`.
    Positional {
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    },
    /// `GaussianFourierProjection`: p = ln(t)·w·2π with w `[frequencies]` (`time_proj.weight`),
    /// output `[sin p | cos p]` of width `2·frequencies` (the config's `flip_sin_to_cos` is not
    /// applied, as in diffusers). t must be σ > 0.
    Fourier { weight: String, frequencies: usize },
    /// `nn.Embedding(rows, dim)` (`time_proj.weight`): row t of the table; t must be an integer
    /// in `0..rows`.
    Learned {
        weight: String,
        rows: usize,
        dim: usize,
    },
}

impl TimeProj {
    /// Width of the projection.
    pub fn dim(&self) -> usize {
        match self {
            Self::Positional { dim, .. } | Self::Learned { dim, .. } => *dim,
            Self::Fourier { frequencies, .. } => 2 * frequencies,
        }
    }

    pub fn weights(&self) -> Vec<WeightSpec> {
        match self {
            Self::Positional { .. } => Vec::new(),
            Self::Fourier {
                weight,
                frequencies,
            } => vec![WeightSpec {
                name: weight.clone(),
                shape: vec![*frequencies],
            }],
            Self::Learned { weight, rows, dim } => vec![WeightSpec {
                name: weight.clone(),
                shape: vec![*rows, *dim],
            }],
        }
    }
}

/// The class embedding, added to the time embedding after its MLP (diffusers `class_embedding`).
#[derive(Clone, Debug, PartialEq)]
pub enum ClassEmbedding {
    /// `nn.Embedding(classes, embed_dim)`: `class_embedding.weight` `[classes, embed_dim]`.
    Table { weight: String, classes: usize },
    /// `"timestep"`: the label goes through the model's own time projection, then this MLP
    /// (`class_embedding.linear_1/2`).
    Timestep { linear_1: Linear, linear_2: Linear },
    /// `"identity"`: the caller's `[B, embed_dim]` vectors are added as they are.
    Identity,
}

/// The time embedding `emb = linear_2(silu(linear_1(proj(t)))) (+ class embedding)`, computed
/// once per forward and read by every resnet.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeEmbedding {
    pub proj: TimeProj,
    pub linear_1: Linear,
    pub linear_2: Linear,
    pub class: Option<ClassEmbedding>,
}

impl TimeEmbedding {
    pub fn embed_dim(&self) -> usize {
        self.linear_2.out_features
    }

    /// Every weight of the embeddings, in diffusers' module order.
    pub fn weights(&self) -> Vec<WeightSpec> {
        let mut v = self.proj.weights();
        v.extend(self.linear_1.weights());
        v.extend(self.linear_2.weights());
        match &self.class {
            Some(ClassEmbedding::Table { weight, classes }) => v.push(WeightSpec {
                name: weight.clone(),
                shape: vec![*classes, self.embed_dim()],
            }),
            Some(ClassEmbedding::Timestep { linear_1, linear_2 }) => {
                v.extend(linear_1.weights());
                v.extend(linear_2.weights());
            }
            Some(ClassEmbedding::Identity) | None => {}
        }
        v
    }

    /// FLOPs per image (the MLPs; projections and lookups are not counted).
    pub fn flops(&self) -> u64 {
        let class = match &self.class {
            Some(ClassEmbedding::Timestep { linear_1, linear_2 }) => {
                linear_1.flops() + linear_2.flops()
            }
            _ => 0,
        };
        self.linear_1.flops() + self.linear_2.flops() + class
    }
}

/// What one layer does to the current activation `h`.
// The list is built once per model and walked, so variant size does not matter; unboxed variants
// keep matching on it simple.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `h = 2·h − 1` (config `center_input_sample`).
    CenterInput,
    Conv(Conv2d),
    Resnet(Resnet),
    Attention(Attention),
    /// Nearest-neighbour 2× upsampling (always followed by the upsampler's 3×3 conv).
    UpsampleNearest2x,
    /// `GroupNorm` then SiLU (`conv_norm_out` + `conv_act`).
    GroupNormSilu(GroupNorm),
    /// Keep the current `h` as skip `slot`.
    PushSkip {
        slot: usize,
    },
    /// `h = cat([h, skip[slot]])` along channels.
    ConcatSkip {
        slot: usize,
    },
    /// Skip blocks' image path: `s = h` (the input after centering, before `conv_in`). `h` is
    /// unchanged; nothing is reported.
    SkipImageCapture,
    /// A skip down block's end: `s = fir_down2(s)`, then `h = h + skip_conv(s)` (a 1×1 conv,
    /// 3 → C). Reports `h`.
    SkipImageDown(Conv2d),
    /// A skip up block's image path: `s = fir_up2(s)` (`upsample`) or `s = 0` (the path was
    /// reset before the up blocks), then with `project`: `s = s + skip_conv(silu(skip_norm(h)))`
    /// (a 3×3 conv, C → 3). `h` is unchanged; reports `s` (`[B, 3, H, W]`, the size of `h`).
    SkipImageUp {
        upsample: bool,
        project: Option<SkipProject>,
    },
    /// After `conv_out`: `h = h + s`.
    SkipImageAdd,
    /// Fourier-embedded models: `h = h / t` per image (t is σ, so the output is the score).
    DivideBySigma,
}

/// The projection of `h` onto the image path in a non-final skip up block.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipProject {
    pub norm: GroupNorm,
    pub conv: Conv2d,
}

/// One step of the program.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The diffusers module path (`down_blocks.1.attentions.0`), or for the ops diffusers does not
    /// name: `<resnet path>.concat` and `<upsampler path>.interpolate`, `skip.<slot>`,
    /// `center_input`, `skip_sample` (the image path's capture), `skip_sample.add` and
    /// `divide_by_sigma`. A skip up block's image path is `up_blocks.<i>.skip_conv` (or
    /// `up_blocks.<i>.upsampler` in the final block, which only upsamples it).
    pub name: String,
    pub op: Op,
    pub input: Shape,
    pub output: Shape,
    /// FLOPs per image (see the module docs for the convention).
    pub flops: u64,
    pub params: u64,
}

/// The whole network for one image size.
#[derive(Clone, Debug, PartialEq)]
pub struct UNet {
    pub input: Shape,
    pub output: Shape,
    pub time: TimeEmbedding,
    pub layers: Vec<Layer>,
    /// Shape of each skip slot, indexed by slot.
    pub skips: Vec<Shape>,
}

fn conv(
    prefix: &str,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
) -> Conv2d {
    Conv2d {
        weight: format!("{prefix}.weight"),
        bias: format!("{prefix}.bias"),
        in_channels: cin,
        out_channels: cout,
        kernel,
        stride,
        padding,
    }
}

fn linear(prefix: &str, inp: usize, out: usize) -> Linear {
    Linear {
        weight: format!("{prefix}.weight"),
        bias: format!("{prefix}.bias"),
        in_features: inp,
        out_features: out,
    }
}

fn group_norm(prefix: &str, channels: usize, groups: usize, eps: f32) -> Result<GroupNorm> {
    ensure!(
        channels % groups == 0,
        "{prefix}: {channels} channels cannot be split into {groups} groups \
         (norm_num_groups / attn_norm_num_groups in config.json must divide every block's channels)"
    );
    Ok(GroupNorm {
        weight: format!("{prefix}.weight"),
        bias: format!("{prefix}.bias"),
        channels,
        groups,
        eps,
    })
}

impl Conv2d {
    pub fn output_shape(&self, input: Shape) -> Shape {
        let (h, w) = conv2d_output_size(
            input.h,
            input.w,
            self.kernel,
            self.kernel,
            self.stride,
            self.padding,
        );
        Shape {
            c: self.out_channels,
            h,
            w,
        }
    }

    /// FLOPs per image (saturating: an absurd config, refused later, must not overflow).
    pub fn flops(&self, input: Shape) -> u64 {
        let o = self.output_shape(input);
        [
            o.h,
            o.w,
            self.out_channels,
            self.kernel,
            self.kernel,
            self.in_channels,
        ]
        .iter()
        .fold(2u64, |acc, &v| acc.saturating_mul(v as u64))
    }

    pub fn weights(&self) -> Vec<WeightSpec> {
        let k = self.kernel;
        vec![
            WeightSpec {
                name: self.weight.clone(),
                shape: vec![self.out_channels, self.in_channels, k, k],
            },
            WeightSpec {
                name: self.bias.clone(),
                shape: vec![self.out_channels],
            },
        ]
    }
}

impl GroupNorm {
    pub fn weights(&self) -> Vec<WeightSpec> {
        vec![
            WeightSpec {
                name: self.weight.clone(),
                shape: vec![self.channels],
            },
            WeightSpec {
                name: self.bias.clone(),
                shape: vec![self.channels],
            },
        ]
    }
}

impl Linear {
    /// FLOPs for one input row.
    pub fn flops(&self) -> u64 {
        2 * (self.in_features * self.out_features) as u64
    }

    pub fn weights(&self) -> Vec<WeightSpec> {
        vec![
            WeightSpec {
                name: self.weight.clone(),
                shape: vec![self.out_features, self.in_features],
            },
            WeightSpec {
                name: self.bias.clone(),
                shape: vec![self.out_features],
            },
        ]
    }
}

impl Op {
    /// Every weight this op reads, in diffusers' state-dict order.
    pub fn weights(&self) -> Vec<WeightSpec> {
        match self {
            Op::Conv(c) => c.weights(),
            Op::GroupNormSilu(n) => n.weights(),
            Op::Resnet(r) => {
                let mut v = r.norm1.weights();
                v.extend(r.conv1.weights());
                v.extend(r.time_emb_proj.weights());
                v.extend(r.norm2.weights());
                v.extend(r.conv2.weights());
                if let Some(s) = &r.shortcut {
                    v.extend(s.weights());
                }
                v
            }
            Op::SkipImageDown(c) => c.weights(),
            Op::SkipImageUp { project, .. } => project
                .as_ref()
                .map(|p| {
                    let mut v = p.norm.weights();
                    v.extend(p.conv.weights());
                    v
                })
                .unwrap_or_default(),
            Op::Attention(a) => {
                let mut v = a.norm.as_ref().map(GroupNorm::weights).unwrap_or_default();
                for l in [&a.to_q, &a.to_k, &a.to_v, &a.to_out] {
                    v.extend(l.weights());
                }
                v
            }
            Op::CenterInput
            | Op::UpsampleNearest2x
            | Op::PushSkip { .. }
            | Op::ConcatSkip { .. }
            | Op::SkipImageCapture
            | Op::SkipImageAdd
            | Op::DivideBySigma => Vec::new(),
        }
    }

    /// FLOPs per image for input shape `x`.
    fn flops(&self, x: Shape) -> u64 {
        match self {
            Op::Conv(c) => c.flops(x),
            Op::Resnet(r) => {
                // conv1, conv2 and the shortcut all run at the resampled size.
                let (h, w) = r.resample.map_or((x.h, x.w), |s| s.output_hw(x.h, x.w));
                let x = Shape { h, w, ..x };
                let mid = r.conv1.output_shape(x);
                r.conv1
                    .flops(x)
                    .saturating_add(r.conv2.flops(mid))
                    .saturating_add(r.shortcut.as_ref().map_or(0, |s| s.flops(x)))
                    .saturating_add(r.time_emb_proj.flops())
            }
            // The 1×1 conv reads the image path at the size of h.
            Op::SkipImageDown(c) => c.flops(Shape {
                c: c.in_channels,
                ..x
            }),
            Op::SkipImageUp {
                project: Some(p), ..
            } => p.conv.flops(x),
            Op::Attention(a) => {
                let tokens = (x.h * x.w) as u64;
                let projections = tokens.saturating_mul(
                    a.to_q.flops() + a.to_k.flops() + a.to_v.flops() + a.to_out.flops(),
                );
                let scores = [tokens, tokens, a.inner_dim() as u64]
                    .iter()
                    .fold(4u64, |acc, &v| acc.saturating_mul(v));
                projections.saturating_add(scores)
            }
            _ => 0,
        }
    }
}

fn params(specs: &[WeightSpec]) -> u64 {
    specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>() as u64)
        .sum()
}

/// Builds the layer list while tracking the current shape and the skip stack.
struct Builder {
    layers: Vec<Layer>,
    shape: Shape,
    skips: Vec<Shape>,
    stack: Vec<usize>,
    /// The shape of the skip blocks' image path, while it holds a tensor.
    image: Option<Shape>,
}

impl Builder {
    fn push(&mut self, name: String, op: Op) -> Result<()> {
        let input = self.shape;
        let output = match &op {
            Op::Conv(c) => {
                ensure!(
                    c.in_channels == input.c,
                    "{name}: expects {} channels, gets {}",
                    c.in_channels,
                    input.c
                );
                c.output_shape(input)
            }
            Op::Resnet(r) => {
                ensure!(
                    r.in_channels == input.c,
                    "{name}: expects {} channels, gets {}",
                    r.in_channels,
                    input.c
                );
                let (h, w) = r
                    .resample
                    .map_or((input.h, input.w), |s| s.output_hw(input.h, input.w));
                ensure!(h > 0 && w > 0, "{name}: downsamples {input} to nothing");
                Shape {
                    c: r.out_channels,
                    h,
                    w,
                }
            }
            Op::SkipImageCapture => {
                self.image = Some(input);
                input
            }
            Op::SkipImageDown(conv) => {
                let Some(s) = self.image else {
                    bail!("{name}: the image path was never captured")
                };
                let s = Shape {
                    h: s.h / 2,
                    w: s.w / 2,
                    ..s
                };
                let added = conv.output_shape(s);
                ensure!(
                    conv.in_channels == s.c && added == input,
                    "{name}: the image path ({s}) through skip_conv gives {added}, which cannot be added \
                     to the activation {input} (down blocks that are not skip blocks between skip blocks?)"
                );
                self.image = Some(s);
                input
            }
            Op::SkipImageUp { upsample, project } => {
                let upsampled = self.image.filter(|_| *upsample).map(|s| Shape {
                    h: 2 * s.h,
                    w: 2 * s.w,
                    ..s
                });
                let projected = project.as_ref().map(|p| p.conv.output_shape(input));
                let result = projected.or(upsampled);
                if let (Some(a), Some(b)) = (upsampled, projected) {
                    ensure!(
                        a == b,
                        "{name}: the image path ({a}) does not match skip_conv's output ({b}) \
                         (up blocks that are not skip blocks between skip blocks?)"
                    );
                }
                self.image = result;
                input
            }
            Op::SkipImageAdd => {
                let s = self.image.unwrap_or(input);
                ensure!(
                    s == input,
                    "{name}: the image path {s} cannot be added to the output {input} \
                     (is the final up block a skip block?)"
                );
                input
            }
            Op::UpsampleNearest2x => Shape {
                h: 2 * input.h,
                w: 2 * input.w,
                ..input
            },
            Op::ConcatSkip { slot } => {
                let s = self.skips[*slot];
                ensure!(
                    s.h == input.h && s.w == input.w,
                    "{name}: skip {s} does not match activation {input} (image size not divisible by 2^(blocks-1)?)"
                );
                Shape {
                    c: input.c + s.c,
                    ..input
                }
            }
            _ => input,
        };
        let weights = op.weights();
        self.layers.push(Layer {
            flops: op.flops(input),
            params: params(&weights),
            name,
            op,
            input,
            output,
        });
        self.shape = output;
        Ok(())
    }

    fn push_skip(&mut self) -> Result<()> {
        let slot = self.skips.len();
        self.skips.push(self.shape);
        self.stack.push(slot);
        self.push(format!("skip.{slot}"), Op::PushSkip { slot })
    }

    fn concat_skip(&mut self, name: String, expected_channels: usize) -> Result<()> {
        let Some(slot) = self.stack.pop() else {
            bail!("{name}: no skip connection left to concatenate")
        };
        ensure!(
            self.skips[slot].c == expected_channels,
            "{name}: skip {slot} has {} channels, the block expects {expected_channels}",
            self.skips[slot].c
        );
        self.push(name, Op::ConcatSkip { slot })
    }
}

/// The group count skip blocks (and a null `norm_num_groups`) use for `channels`: `min(C / 4, 32)`.
fn skip_groups(channels: usize) -> usize {
    (channels / 4).min(32)
}

/// The time embedding, its projection and the class embedding of a (validated) config.
fn time_embedding(config: &UNet2DConfig) -> TimeEmbedding {
    let temb = config.time_embed_dim();
    let c0 = config.block_out_channels[0];
    let proj = match config.time_embedding() {
        TimeEmbeddingType::Positional => TimeProj::Positional {
            dim: c0,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        },
        TimeEmbeddingType::Fourier => TimeProj::Fourier {
            weight: "time_proj.weight".into(),
            frequencies: c0,
        },
        TimeEmbeddingType::Learned => TimeProj::Learned {
            weight: "time_proj.weight".into(),
            rows: config.num_train_timesteps.unwrap_or(0),
            dim: c0,
        },
    };
    let class = config.class_embedding().map(|kind| match kind {
        ClassEmbedType::Table { classes } => ClassEmbedding::Table {
            weight: "class_embedding.weight".into(),
            classes,
        },
        ClassEmbedType::Timestep => ClassEmbedding::Timestep {
            linear_1: linear("class_embedding.linear_1", proj.dim(), temb),
            linear_2: linear("class_embedding.linear_2", temb, temb),
        },
        ClassEmbedType::Identity => ClassEmbedding::Identity,
    });
    TimeEmbedding {
        linear_1: linear("time_embedding.linear_1", proj.dim(), temb),
        linear_2: linear("time_embedding.linear_2", temb, temb),
        proj,
        class,
    }
}

/// The building blocks of one config: resnets and attentions with the config's widths, eps and
/// time conditioning, and each block kind as diffusers builds it.
struct Nets<'a> {
    config: &'a UNet2DConfig,
    eps: f32,
    temb: usize,
}

/// The group counts of a resnet's two norms.
#[derive(Clone, Copy)]
struct Groups {
    norm1: usize,
    norm2: usize,
}

impl Groups {
    fn same(g: usize) -> Self {
        Self { norm1: g, norm2: g }
    }
}

/// Output scale factor of every resnet and attention inside skip blocks (diffusers `np.sqrt(2.0)`).
const SKIP_SCALE: f32 = std::f32::consts::SQRT_2;
/// The skip blocks' attention GroupNorm always has 32 groups.
const SKIP_ATTENTION_GROUPS: usize = 32;
/// The skip blocks' image path has 3 channels (diffusers hard-wires it).
const IMAGE_CHANNELS: usize = 3;

impl<'a> Nets<'a> {
    fn new(config: &'a UNet2DConfig) -> Self {
        Self {
            config,
            eps: config.norm_eps,
            temb: config.time_embed_dim(),
        }
    }

    /// The groups of blocks that follow `norm_num_groups` (validated present unless every block is a skip block).
    fn groups(&self) -> usize {
        self.config.norm_num_groups.unwrap_or(32)
    }

    #[allow(clippy::too_many_arguments)]
    fn resnet(
        &self,
        prefix: &str,
        cin: usize,
        cout: usize,
        groups: Groups,
        scale: f32,
        resample: Option<Resample>,
        force_shortcut: bool,
    ) -> Result<Resnet> {
        let scale_shift = self.config.scale_shift();
        let t_out = if scale_shift { 2 * cout } else { cout };
        let p = |part: &str| format!("{prefix}.{part}");
        Ok(Resnet {
            in_channels: cin,
            out_channels: cout,
            norm1: group_norm(&p("norm1"), cin, groups.norm1, self.eps)?,
            conv1: conv(&p("conv1"), cin, cout, 3, 1, Padding::same(1)),
            time_emb_proj: linear(&p("time_emb_proj"), self.temb, t_out),
            scale_shift,
            norm2: group_norm(&p("norm2"), cout, groups.norm2, self.eps)?,
            conv2: conv(&p("conv2"), cout, cout, 3, 1, Padding::same(1)),
            shortcut: (force_shortcut || cin != cout)
                .then(|| conv(&p("conv_shortcut"), cin, cout, 1, 1, Padding::same(0))),
            output_scale_factor: scale,
            resample,
        })
    }

    fn attention(
        &self,
        prefix: &str,
        c: usize,
        norm_groups: Option<usize>,
        scale: f32,
    ) -> Result<Attention> {
        let head_dim = self.config.attention_head_dim.unwrap_or(c);
        let heads = c / head_dim;
        ensure!(
            heads >= 1,
            "{prefix}: attention_head_dim {head_dim} in config.json exceeds the block's {c} channels"
        );
        let inner = heads * head_dim;
        Ok(Attention {
            channels: c,
            heads,
            head_dim,
            norm: norm_groups
                .map(|g| group_norm(&format!("{prefix}.group_norm"), c, g, self.eps))
                .transpose()?,
            to_q: linear(&format!("{prefix}.to_q"), c, inner),
            to_k: linear(&format!("{prefix}.to_k"), c, inner),
            to_v: linear(&format!("{prefix}.to_v"), c, inner),
            to_out: linear(&format!("{prefix}.to_out.0"), inner, c),
            rescale_output_factor: scale,
        })
    }

    /// One down block: its resnets (each with an attention in the attention kinds), each output
    /// kept as a skip, then the downsampler diffusers routes to this kind (§10.3), also kept.
    fn down_block(
        &self,
        b: &mut Builder,
        i: usize,
        kind: DownBlockKind,
        in_ch: usize,
        out_ch: usize,
        last: bool,
    ) -> Result<()> {
        use DownBlockKind::*;
        let skip = kind.is_skip();
        let scale = if skip { SKIP_SCALE } else { 1.0 };
        for j in 0..self.config.layers_per_block {
            let p = format!("down_blocks.{i}.resnets.{j}");
            let cin = if j == 0 { in_ch } else { out_ch };
            let groups = if skip {
                Groups {
                    norm1: skip_groups(cin),
                    norm2: skip_groups(out_ch),
                }
            } else {
                Groups::same(self.groups())
            };
            let r = self.resnet(&p, cin, out_ch, groups, scale, None, false)?;
            b.push(p, Op::Resnet(r))?;
            let attn_groups = match kind {
                AttnDown => Some(self.groups()),
                AttnSkipDown => Some(SKIP_ATTENTION_GROUPS),
                _ => None,
            };
            if let Some(g) = attn_groups {
                let p = format!("down_blocks.{i}.attentions.{j}");
                let a = self.attention(&p, out_ch, Some(g), scale)?;
                b.push(p, Op::Attention(a))?;
            }
            b.push_skip()?;
        }
        if last {
            return Ok(());
        }
        let resnet_down = kind == ResnetDownsample
            || (kind == AttnDown && self.config.downsample_type == "resnet");
        if skip {
            let p = format!("down_blocks.{i}.resnet_down");
            let g = Groups::same(skip_groups(out_ch));
            let r = self.resnet(&p, out_ch, out_ch, g, scale, Some(Resample::FirDown2), true)?;
            b.push(p, Op::Resnet(r))?;
            let p = format!("down_blocks.{i}.skip_conv");
            let c = conv(&p, IMAGE_CHANNELS, out_ch, 1, 1, Padding::same(0));
            b.push(p, Op::SkipImageDown(c))?;
        } else if resnet_down {
            let p = format!("down_blocks.{i}.downsamplers.0");
            let g = Groups::same(self.groups());
            let r = self.resnet(
                &p,
                out_ch,
                out_ch,
                g,
                1.0,
                Some(Resample::AvgPool2x2),
                false,
            )?;
            b.push(p, Op::Resnet(r))?;
        } else {
            let pad = match self.config.downsample_padding {
                0 => Padding {
                    top: 0,
                    left: 0,
                    bottom: 1,
                    right: 1,
                },
                p => Padding::same(p),
            };
            let p = format!("down_blocks.{i}.downsamplers.0.conv");
            b.push(p.clone(), Op::Conv(conv(&p, out_ch, out_ch, 3, 2, pad)))?;
        }
        b.push_skip()
    }

    /// `UNetMidBlock2D`: resnet, [attention,] resnet, all scaled by `mid_block_scale_factor`.
    fn mid_block(&self, b: &mut Builder, c: usize) -> Result<()> {
        let config = self.config;
        let scale = config.mid_block_scale_factor;
        let groups = config.norm_num_groups.unwrap_or_else(|| skip_groups(c));
        let resnet = |p: &str| self.resnet(p, c, c, Groups::same(groups), scale, None, false);
        b.push(
            "mid_block.resnets.0".into(),
            Op::Resnet(resnet("mid_block.resnets.0")?),
        )?;
        if config.add_attention {
            // diffusers: attn_norm_num_groups, else the resnets' groups unless scale_shift, where
            // the attention has no GroupNorm at all.
            let norm_groups = config
                .attn_norm_num_groups
                .or((!config.scale_shift()).then_some(groups));
            let p = "mid_block.attentions.0";
            b.push(
                p.into(),
                Op::Attention(self.attention(p, c, norm_groups, scale)?),
            )?;
        }
        b.push(
            "mid_block.resnets.1".into(),
            Op::Resnet(resnet("mid_block.resnets.1")?),
        )
    }

    /// One up block: `layers_per_block + 1` resnets on `cat([h, skip])`, the attentions of its
    /// kind, the skip blocks' image path, then the upsampler diffusers routes to this kind.
    #[allow(clippy::too_many_arguments)]
    fn up_block(
        &self,
        b: &mut Builder,
        i: usize,
        kind: UpBlockKind,
        prev: usize,
        in_ch: usize,
        out_ch: usize,
        last: bool,
    ) -> Result<()> {
        use UpBlockKind::*;
        let skip = kind.is_skip();
        let scale = if skip { SKIP_SCALE } else { 1.0 };
        let layers = self.config.layers_per_block + 1;
        for j in 0..layers {
            let skip_ch = if j + 1 == layers { in_ch } else { out_ch };
            let res_in = if j == 0 { prev } else { out_ch };
            let p = format!("up_blocks.{i}.resnets.{j}");
            b.concat_skip(format!("{p}.concat"), skip_ch)?;
            let groups = match kind {
                SkipUp => Groups {
                    norm1: skip_groups(res_in + skip_ch),
                    norm2: skip_groups(out_ch),
                },
                // diffusers writes `min(resnet_in_channels + res_skip_channels // 4, 32)`: the
                // division binds to the skip channels only. Real checkpoints depend on it.
                AttnSkipUp => Groups {
                    norm1: (res_in + skip_ch / 4).min(32),
                    norm2: skip_groups(out_ch),
                },
                _ => Groups::same(self.groups()),
            };
            let r = self.resnet(&p, res_in + skip_ch, out_ch, groups, scale, None, false)?;
            b.push(p, Op::Resnet(r))?;
            if kind == AttnUp {
                let p = format!("up_blocks.{i}.attentions.{j}");
                let a = self.attention(&p, out_ch, Some(self.groups()), 1.0)?;
                b.push(p, Op::Attention(a))?;
            }
        }
        if kind == AttnSkipUp {
            let p = format!("up_blocks.{i}.attentions.0");
            let a = self.attention(&p, out_ch, Some(SKIP_ATTENTION_GROUPS), scale)?;
            b.push(p, Op::Attention(a))?;
        }
        if skip {
            let upsample = b.image.is_some();
            let project = if last {
                None
            } else {
                let norm = group_norm(
                    &format!("up_blocks.{i}.skip_norm"),
                    out_ch,
                    skip_groups(out_ch),
                    self.eps,
                )?;
                let conv = conv(
                    &format!("up_blocks.{i}.skip_conv"),
                    out_ch,
                    IMAGE_CHANNELS,
                    3,
                    1,
                    Padding::same(1),
                );
                Some(SkipProject { norm, conv })
            };
            let name = if last { "upsampler" } else { "skip_conv" };
            if upsample || project.is_some() {
                b.push(
                    format!("up_blocks.{i}.{name}"),
                    Op::SkipImageUp { upsample, project },
                )?;
            }
        }
        if last {
            return Ok(());
        }
        let resnet_up =
            kind == ResnetUpsample || (kind == AttnUp && self.config.upsample_type == "resnet");
        if skip {
            let p = format!("up_blocks.{i}.resnet_up");
            let g = Groups::same(skip_groups(out_ch));
            let r = self.resnet(&p, out_ch, out_ch, g, scale, Some(Resample::FirUp2), true)?;
            b.push(p, Op::Resnet(r))
        } else if resnet_up {
            let p = format!("up_blocks.{i}.upsamplers.0");
            let g = Groups::same(self.groups());
            let r = self.resnet(&p, out_ch, out_ch, g, 1.0, Some(Resample::Nearest2x), false)?;
            b.push(p, Op::Resnet(r))
        } else {
            b.push(
                format!("up_blocks.{i}.upsamplers.0.interpolate"),
                Op::UpsampleNearest2x,
            )?;
            let p = format!("up_blocks.{i}.upsamplers.0.conv");
            b.push(
                p.clone(),
                Op::Conv(conv(&p, out_ch, out_ch, 3, 1, Padding::same(1))),
            )
        }
    }
}

impl UNet {
    /// The network for images of `height × width`. Both must be divisible by 2^(blocks − 1) so
    /// that every skip connection matches after downsampling and upsampling.
    pub fn new(config: &UNet2DConfig, height: usize, width: usize) -> Result<Self> {
        config.validate()?;
        let boc = &config.block_out_channels;
        let n = boc.len();
        let factor = 1usize << (n - 1);
        ensure!(
            height > 0 && width > 0 && height % factor == 0 && width % factor == 0,
            "image size {height}x{width} is not supported by this model: with {n} blocks both sides must be \
             positive multiples of {factor}"
        );
        let input = Shape {
            c: config.in_channels,
            h: height,
            w: width,
        };
        let nets = Nets::new(config);
        let mut b = Builder {
            layers: Vec::new(),
            shape: input,
            skips: Vec::new(),
            stack: Vec::new(),
            image: None,
        };
        let down_kinds = config.down_blocks()?;
        let up_kinds = config.up_blocks()?;
        if config.center_input_sample {
            b.push("center_input".into(), Op::CenterInput)?;
        }
        if down_kinds.iter().any(|k| k.is_skip()) {
            b.push("skip_sample".into(), Op::SkipImageCapture)?;
        }
        let conv_in = conv(
            "conv_in",
            config.in_channels,
            boc[0],
            3,
            1,
            Padding::same(1),
        );
        b.push("conv_in".into(), Op::Conv(conv_in))?;
        b.push_skip()?;

        let mut out_ch = boc[0];
        for (i, kind) in down_kinds.into_iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            nets.down_block(&mut b, i, kind, in_ch, out_ch, i + 1 == n)?;
        }
        if config.mid_block_type.is_some() {
            nets.mid_block(&mut b, boc[n - 1])?;
        }
        // diffusers resets the image path before the up blocks: the first skip up block starts from 0.
        b.image = None;
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut out_ch = rev[0];
        for (i, kind) in up_kinds.into_iter().enumerate() {
            let prev = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            nets.up_block(&mut b, i, kind, prev, in_ch, out_ch, i + 1 == n)?;
        }
        ensure!(
            b.stack.is_empty(),
            "internal error: {} skip connections left unused",
            b.stack.len()
        );

        let out_groups = config
            .norm_num_groups
            .unwrap_or_else(|| skip_groups(boc[0]));
        b.push(
            "conv_norm_out".into(),
            Op::GroupNormSilu(group_norm("conv_norm_out", boc[0], out_groups, nets.eps)?),
        )?;
        let conv_out = conv(
            "conv_out",
            boc[0],
            config.out_channels,
            3,
            1,
            Padding::same(1),
        );
        b.push("conv_out".into(), Op::Conv(conv_out))?;
        if b.image.is_some() {
            b.push("skip_sample.add".into(), Op::SkipImageAdd)?;
        }
        if config.time_embedding() == TimeEmbeddingType::Fourier {
            b.push("divide_by_sigma".into(), Op::DivideBySigma)?;
        }

        let unet = UNet {
            input,
            output: b.shape,
            time: time_embedding(config),
            layers: b.layers,
            skips: b.skips,
        };
        let total = unet.params();
        ensure!(
            total <= MAX_PARAMETERS,
            "the model in config.json would have {total} parameters ({:.1} GiB as f32); at most {MAX_PARAMETERS} are supported",
            total as f64 * 4.0 / (1u64 << 30) as f64
        );
        Ok(unet)
    }

    /// The network at the config's `sample_size`, or at the smallest valid size when it has none.
    pub fn from_config(config: &UNet2DConfig) -> Result<Self> {
        let (h, w) = config.sample_hw().unwrap_or_else(|| {
            let f = 1 << config.block_out_channels.len().saturating_sub(1).min(16);
            (f, f)
        });
        Self::new(config, h, w)
    }

    /// The weights a config needs (independent of the image size).
    pub fn expected_weights(config: &UNet2DConfig) -> Result<Vec<WeightSpec>> {
        config.validate()?;
        let f = 1 << (config.block_out_channels.len() - 1);
        Ok(Self::new(config, f, f)?.weights())
    }

    /// Every weight, in diffusers' state-dict order of modules (time embedding first).
    pub fn weights(&self) -> Vec<WeightSpec> {
        let mut v = self.time.weights();
        for l in &self.layers {
            v.extend(l.op.weights());
        }
        v
    }

    /// Total parameter count.
    pub fn params(&self) -> u64 {
        params(&self.weights())
    }

    /// FLOPs of one forward pass per image, including the time embedding MLP.
    pub fn flops(&self) -> u64 {
        self.time.flops()
            + self
                .layers
                .iter()
                .fold(0u64, |acc, l| acc.saturating_add(l.flops))
    }

    /// For every skip slot, the index in [`UNet::layers`] of its [`Op::PushSkip`] and of the
    /// [`Op::ConcatSkip`] that consumes it: the slot's buffer must live from the first to the
    /// second (a GPU plan can alias it with the producing layer's output).
    pub fn skip_lifetimes(&self) -> Vec<(usize, usize)> {
        let mut spans = vec![(usize::MAX, usize::MAX); self.skips.len()];
        for (i, l) in self.layers.iter().enumerate() {
            match l.op {
                Op::PushSkip { slot } => spans[slot].0 = i,
                Op::ConcatSkip { slot } => spans[slot].1 = i,
                _ => {}
            }
        }
        spans
    }

    /// Largest per-image activation (elements) produced by any layer.
    pub fn max_activation(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.output.numel())
            .max()
            .unwrap_or(0)
            .max(self.input.numel())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar10_matches_published_counts() {
        let u = UNet::from_config(&UNet2DConfig::cifar10()).unwrap();
        assert_eq!(u.params(), 35_746_307);
        assert_eq!(u.weights().len(), 328);
        assert_eq!(u.skips.len(), 12);
        let conv: u64 = u
            .layers
            .iter()
            .filter(|l| matches!(l.op, Op::Conv(_)))
            .map(|l| l.flops)
            .sum();
        assert!(conv > 0);
        let total = u.flops() as f64 / 1e9;
        assert!((total - 12.44).abs() < 0.05, "{total} GFLOP");
        assert_eq!(u.output, Shape { c: 3, h: 32, w: 32 });
    }

    #[test]
    fn skips_are_consumed_newest_first_with_matching_shapes() {
        let u = UNet::from_config(&UNet2DConfig::cifar10()).unwrap();
        let spans = u.skip_lifetimes();
        let mut stack = Vec::new();
        for (i, l) in u.layers.iter().enumerate() {
            match l.op {
                Op::PushSkip { slot } => {
                    assert_eq!(spans[slot].0, i);
                    assert_eq!(u.skips[slot], l.input);
                    stack.push(slot);
                }
                Op::ConcatSkip { slot } => {
                    assert_eq!(stack.pop(), Some(slot));
                    assert_eq!(spans[slot].1, i);
                    assert_eq!(l.output.c, l.input.c + u.skips[slot].c);
                }
                _ => {}
            }
        }
        assert!(stack.is_empty());
        // Channel bookkeeping from the semantics reference: up_blocks.2.resnets.2 is 384 -> 256.
        let r = u
            .layers
            .iter()
            .find(|l| l.name == "up_blocks.2.resnets.2")
            .unwrap();
        assert_eq!((r.input.c, r.output.c, r.input.h), (384, 256, 16));
    }

    #[test]
    fn bad_sizes_are_refused() {
        let c = UNet2DConfig::cifar10();
        assert!(UNet::new(&c, 30, 32).is_err());
        let mut c = UNet2DConfig::cifar10();
        c.norm_num_groups = Some(7);
        let e = UNet::new(&c, 32, 32).unwrap_err();
        assert!(e.to_string().contains("groups"), "{e}");
    }

    /// Tensor and parameter counts of diffusers' state dicts (`UNet2DModel(**config)`,
    /// diffusers 0.42.1): the consistency-model test config, cd_imagenet64_l2 and NCSN++
    /// church-256.
    #[test]
    fn resnet_and_skip_block_models_match_diffusers_counts() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cm = UNet2DConfig {
            sample_size: Some(crate::model::config::SampleSize::Square(32)),
            layers_per_block: 1,
            block_out_channels: vec![32, 64],
            attention_head_dim: Some(8),
            down_block_types: s(&["ResnetDownsampleBlock2D", "AttnDownBlock2D"]),
            up_block_types: s(&["AttnUpBlock2D", "ResnetUpsampleBlock2D"]),
            resnet_time_scale_shift: "scale_shift".into(),
            attn_norm_num_groups: Some(32),
            upsample_type: "resnet".into(),
            downsample_type: "resnet".into(),
            num_class_embeds: Some(10),
            ..UNet2DConfig::default()
        };
        let u = UNet::from_config(&cm).unwrap();
        assert_eq!((u.weights().len(), u.params()), (161, 828_771));
        // openai/diffusers-cd_imagenet64_l2 at full width.
        let cm64 = UNet2DConfig {
            sample_size: Some(crate::model::config::SampleSize::Square(64)),
            layers_per_block: 3,
            block_out_channels: vec![192, 384, 576, 768],
            attention_head_dim: Some(64),
            down_block_types: s(&[
                "ResnetDownsampleBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            up_block_types: s(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "ResnetUpsampleBlock2D",
            ]),
            num_class_embeds: Some(1000),
            ..cm
        };
        let u = UNet::from_config(&cm64).unwrap();
        assert_eq!((u.weights().len(), u.params()), (629, 295_899_267));

        let ncsnpp = UNet2DConfig {
            sample_size: Some(crate::model::config::SampleSize::Square(256)),
            time_embedding_type: "fourier".into(),
            center_input_sample: true,
            norm_num_groups: None,
            norm_eps: 1e-6,
            // What NCSN++'s config.json holds: close to √2, not √2.
            #[allow(clippy::excessive_precision, clippy::approx_constant)]
            mid_block_scale_factor: 1.41421356237,
            attention_head_dim: None,
            block_out_channels: vec![128, 128, 256, 256, 256, 256, 256],
            down_block_types: s(&[
                "SkipDownBlock2D",
                "SkipDownBlock2D",
                "SkipDownBlock2D",
                "SkipDownBlock2D",
                "AttnSkipDownBlock2D",
                "SkipDownBlock2D",
                "SkipDownBlock2D",
            ]),
            up_block_types: s(&[
                "SkipUpBlock2D",
                "SkipUpBlock2D",
                "AttnSkipUpBlock2D",
                "SkipUpBlock2D",
                "SkipUpBlock2D",
                "SkipUpBlock2D",
                "SkipUpBlock2D",
            ]),
            ..UNet2DConfig::default()
        };
        let u = UNet::from_config(&ncsnpp).unwrap();
        assert_eq!((u.weights().len(), u.params()), (645, 65_574_549));
        // The image path: captured after centering, added after conv_out, then divided by σ.
        let names: Vec<&str> = u.layers.iter().map(|l| l.name.as_str()).collect();
        let at = |n: &str| names.iter().position(|&x| x == n).unwrap();
        assert!(at("center_input") < at("skip_sample") && at("skip_sample") < at("conv_in"));
        assert_eq!(
            &names[names.len() - 3..],
            ["conv_out", "skip_sample.add", "divide_by_sigma"]
        );
        assert_eq!(
            u.output,
            Shape {
                c: 3,
                h: 256,
                w: 256
            }
        );
    }
}

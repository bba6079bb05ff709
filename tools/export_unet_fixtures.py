#!/usr/bin/env python3
"""Write small random-weight diffusers UNet2DModel checkpoints, inputs and PyTorch outputs to
tests/fixtures/unet/<case>/ for the Rust CPU reference tests (no Python is needed to run those).

Each case directory holds the model in the layout named by the case (diffusers pipeline layout:
model_index.json, unet/, scheduler/; or flat: config.json, diffusion_pytorch_model.safetensors,
scheduler_config.json), plus
  input.safetensors     {"sample": [B, C, H, W] f32}
  expected.safetensors  {"sample": PyTorch f32 output, "sample_f64": PyTorch float64 output rounded
                         to f32, "<layer>": every layer's f32 output under the Rust layer names}
  case.json             timesteps, layout, weight dtype, legacy names, torch f32-vs-f64 rel L2.
For f16/bf16 checkpoints the reference runs in f32 (and f64) on the upcast stored weights.
The model is reloaded with UNet2DModel.from_pretrained before computing the reference, so the files
are known to load in diffusers (this checks the legacy-name files too).

Also writes tests/fixtures/unet/cifar10_formula/ (the full google/ddpm-cifar10-32 architecture with
formula weights, see formula_weights) and tests/fixtures/unet/ops.safetensors with per-op inputs and torch outputs; the op
parameters are listed in OPS below and repeated in tests/cpu_ops.rs.

Usage: /work/venv/bin/python tools/export_unet_fixtures.py [--out tests/fixtures/unet]
"""

import argparse
import json
import math
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.models.embeddings import get_timestep_embedding
from safetensors.torch import save_file

BASE = dict(act_fn="silu", dropout=0.0)

CASES = [
    # Attention in down, up and mid blocks; several heads (8/4 = 2, 16/4 = 4); padding 1; flip.
    dict(
        name="attn_heads_pipeline", layout="pipeline", dtype="f32", legacy=False,
        timesteps=[10, 999], hw=(16, 16), seed=1,
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=[8, 16],
            layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "UpBlock2D"], attention_head_dim=4,
            norm_num_groups=4, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
            norm_eps=1e-5,
        ),
    ),
    # cifar10-like: asymmetric downsample padding, one head per block, [sin | cos], shift 1,
    # 2 layers per block, 3 levels; flat layout.
    dict(
        name="cifar_like_flat", layout="flat", dtype="f32", legacy=False,
        timesteps=[0, 537], hw=(16, 16), seed=2,
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=[8, 16, 16],
            layers_per_block=2, down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None,
            norm_num_groups=4, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
            norm_eps=1e-6,
        ),
    ),
    # 1 input channel, 2 output channels, f16 weights stored under legacy attention names,
    # attention in every block, 4-wide heads, no mid attention.
    dict(
        name="gray_f16_legacy", layout="pipeline", dtype="f16", legacy=True,
        timesteps=[999, 1], hw=(8, 8), seed=3,
        config=dict(
            sample_size=8, in_channels=1, out_channels=2, block_out_channels=[8, 16],
            layers_per_block=1, down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"], attention_head_dim=4,
            norm_num_groups=2, downsample_padding=0, flip_sin_to_cos=True, freq_shift=0,
            add_attention=False, norm_eps=1e-6,
        ),
    ),
    # bf16 weights; scale_shift resnets (mid attention then has no group norm); centred input;
    # explicit time_embedding_dim; mid_block_scale_factor != 1; non-square 8x12 images.
    dict(
        name="bf16_scale_shift_flat", layout="flat", dtype="bf16", legacy=False,
        timesteps=[250, 750], hw=(8, 12), seed=4,
        config=dict(
            sample_size=[8, 12], in_channels=3, out_channels=3, block_out_channels=[16, 24],
            layers_per_block=2, down_block_types=["AttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "AttnUpBlock2D"], attention_head_dim=8,
            norm_num_groups=4, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
            resnet_time_scale_shift="scale_shift", center_input_sample=True,
            time_embedding_dim=40, mid_block_scale_factor=1.5, norm_eps=1e-5,
        ),
    ),
    # No mid block at all; batch 1.
    dict(
        name="no_mid_pipeline", layout="pipeline", dtype="f32", legacy=False,
        timesteps=[123], hw=(8, 8), seed=5,
        config=dict(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16],
            layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "UpBlock2D"], mid_block_type=None,
            attention_head_dim=None, norm_num_groups=4, downsample_padding=1,
            flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
        ),
    ),
    # Channels not divisible by the head width (12 // 8 = 1 head of 8, 24 // 8 = 3 heads), and a
    # separate attn_norm_num_groups for the mid attention.
    dict(
        name="uneven_heads_flat", layout="flat", dtype="f32", legacy=False,
        timesteps=[5, 900], hw=(8, 8), seed=6,
        config=dict(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=[12, 24],
            layers_per_block=1, down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"], attention_head_dim=8,
            norm_num_groups=4, attn_norm_num_groups=2, downsample_padding=1,
            flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
        ),
    ),
]

SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": True,
    "prediction_type": "epsilon",
}

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def perturb_norms(model, gen):
    """GroupNorm scale 1 + 0.2·N(0,1) and shift 0.2·N(0,1), so ignoring either shows up."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))


def legacy_name(key):
    for new, old in LEGACY.items():
        marker = f".{new}."
        if ".attentions." in key and marker in key:
            return key.replace(marker, f".{old}.")
    return key


def layer_hooks(model, store):
    """Record module outputs under the Rust layer names (see src/model/unet.rs)."""
    handles = []

    def record(name):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            store[name] = out.detach().float().clone()

        return hook

    for name, module in model.named_modules():
        parts = name.split(".")
        rust = None
        if name in ("conv_in", "conv_out", "time_embedding"):
            rust = name
        elif name == "conv_act":
            rust = "conv_norm_out"  # Rust fuses the norm and the SiLU
        elif len(parts) == 4 and parts[2] in ("resnets", "attentions") and parts[0].endswith("blocks"):
            rust = name
        elif len(parts) == 3 and parts[0] == "mid_block":
            rust = name
        elif len(parts) == 4 and parts[2] in ("downsamplers", "upsamplers"):
            rust = name + ".conv"
        if rust is not None and module is not None:
            handles.append(module.register_forward_hook(record(rust)))
    return handles


def write_model(case, model, root):
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[case["dtype"]]
    stored = {k: v.to(dtype) for k, v in sd.items()}
    on_disk = {legacy_name(k) if case["legacy"] else k: v for k, v in stored.items()}
    config = dict(model.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["_class_name"] = "UNet2DModel"
    config["_diffusers_version"] = "0.42.0"
    if case["layout"] == "pipeline":
        unet_dir = os.path.join(root, "unet")
        sched_dir = os.path.join(root, "scheduler")
        os.makedirs(unet_dir)
        os.makedirs(sched_dir)
        with open(os.path.join(root, "model_index.json"), "w") as f:
            json.dump({"_class_name": "DDIMPipeline", "_diffusers_version": "0.42.0",
                       "scheduler": ["diffusers", "DDIMScheduler"],
                       "unet": ["diffusers", "UNet2DModel"]}, f, indent=2)
        sched_path = os.path.join(sched_dir, "scheduler_config.json")
    else:
        unet_dir = root
        os.makedirs(unet_dir, exist_ok=True)
        sched_path = os.path.join(root, "scheduler_config.json")
    with open(os.path.join(unet_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(sched_path, "w") as f:
        json.dump(SCHEDULER, f, indent=2)
    save_file(on_disk, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    return unet_dir


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def export_case(case, out_dir):
    root = os.path.join(out_dir, case["name"])
    shutil.rmtree(root, ignore_errors=True)
    torch.manual_seed(case["seed"])
    model = UNet2DModel(**BASE, **case["config"]).eval()
    perturb_norms(model, torch.Generator().manual_seed(case["seed"] + 100))
    unet_dir = write_model(case, model, root)

    # Reload exactly as diffusers would (legacy names, f16/bf16 upcast to f32).
    loaded = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(case["seed"] + 200)
    b = len(case["timesteps"])
    h, w = case["hw"]
    x = torch.randn(b, case["config"]["in_channels"], h, w, generator=gen)
    t = torch.tensor(case["timesteps"], dtype=torch.long)
    layers = {}
    handles = layer_hooks(loaded, layers)
    with torch.no_grad():
        y = loaded(x, t).sample
    for hd in handles:
        hd.remove()
    with torch.no_grad():
        y64 = loaded.double()(x.double(), t).sample

    save_file({"sample": x.contiguous()}, os.path.join(root, "input.safetensors"))
    expected = {"sample": y.contiguous(), "sample_f64": y64.float().contiguous()}
    expected.update({k: v.contiguous() for k, v in layers.items()})
    save_file(expected, os.path.join(root, "expected.safetensors"))
    info = dict(
        timesteps=case["timesteps"], layout=case["layout"], weights_dtype=case["dtype"],
        legacy_names=case["legacy"], torch_f32_vs_f64_rel_l2=rel_l2(y, y64),
        layers=sorted(layers),
    )
    with open(os.path.join(root, "case.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"{case['name']}: out {tuple(y.shape)}, torch f32 vs f64 rel L2 {info['torch_f32_vs_f64_rel_l2']:.2e}")


CIFAR10_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[128, 256, 256, 256], layers_per_block=2, mid_block_scale_factor=1,
    downsample_padding=0, act_fn="silu", attention_head_dim=None, norm_num_groups=32,
    norm_eps=1e-6, resnet_time_scale_shift="default", add_attention=True,
)


def formula_uniform(h, n):
    """n values in [-1, 1) from an integer hash of (h, i), exact in any language:
    z = i·0x9E3779B97F4A7C15 + h·0xBF58476D1CE4E5B9 (mod 2^64); z ^= z >> 29;
    z *= 0x94D049BB133111EB; z ^= z >> 32; s = 2·(z >> 11)/2^53 − 1."""
    i = np.arange(n, dtype=np.uint64)
    z = i * np.uint64(0x9E3779B97F4A7C15) + np.uint64((h * 0xBF58476D1CE4E5B9) % 2**64)
    z ^= z >> np.uint64(29)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(32)
    return 2.0 * (z >> np.uint64(11)).astype(np.float64) / float(2**53) - 1.0


def formula_weights(model):
    """The google/ddpm-cifar10-32 architecture with weights given by a formula that
    tests/cpu_cifar10_arch.rs repeats, so its 143 MB of weights need not be stored:
    h = sum((k+1)·byte_k of the name), s = formula_uniform(h, numel) (PyTorch-like uniform init),
    norm scale 1 + 0.1·s, norm shift 0.1·s, conv/linear weight and bias s/sqrt(fan_in)."""
    sd = model.state_dict()
    out = {}
    for name, tensor in sd.items():
        prefix, param = name.rsplit(".", 1)
        weight_shape = sd[prefix + ".weight"].shape
        h = sum((k + 1) * b for k, b in enumerate(name.encode()))
        s = formula_uniform(h, tensor.numel())
        if len(weight_shape) == 1:
            v = 1 + 0.1 * s if param == "weight" else 0.1 * s
        else:
            v = s / math.sqrt(math.prod(weight_shape[1:]))
        out[name] = torch.from_numpy(v.astype(np.float32)).reshape(tensor.shape)
    return out


def export_cifar10_formula(out_dir):
    root = os.path.join(out_dir, "cifar10_formula")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    model = UNet2DModel(**CIFAR10_CONFIG).eval()
    model.load_state_dict(formula_weights(model))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    t = torch.tensor([500], dtype=torch.long)
    with torch.no_grad():
        y = model(x, t).sample
        y64 = model.double()(x.double(), t).sample
    save_file({"sample": x.contiguous()}, os.path.join(root, "input.safetensors"))
    save_file({"sample": y.contiguous(), "sample_f64": y64.float().contiguous()},
              os.path.join(root, "expected.safetensors"))
    with open(os.path.join(root, "case.json"), "w") as f:
        json.dump(dict(timesteps=[500], torch_f32_vs_f64_rel_l2=rel_l2(y, y64),
                       output_std=y.std().item()), f, indent=2)
    print(f"cifar10_formula: output std {y.std().item():.3f}, torch f32 vs f64 rel L2 {rel_l2(y, y64):.2e}")


def export_ops(out_dir):
    """Per-op fixtures; the parameters here are repeated in tests/cpu_ops.rs."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = {}
    # conv 3x3, stride 2, padding right/bottom by 1 (diffusers downsample_padding=0).
    t["conv_s2_asym.x"], t["conv_s2_asym.w"], t["conv_s2_asym.b"] = r(2, 3, 9, 8), r(5, 3, 3, 3), r(5)
    t["conv_s2_asym.y"] = F.conv2d(F.pad(t["conv_s2_asym.x"], (0, 1, 0, 1)), t["conv_s2_asym.w"], t["conv_s2_asym.b"], stride=2)
    # conv 3x3 stride 2 padding 1 (downsample_padding=1).
    t["conv_s2_p1.x"], t["conv_s2_p1.w"], t["conv_s2_p1.b"] = r(1, 4, 7, 10), r(6, 4, 3, 3), r(6)
    t["conv_s2_p1.y"] = F.conv2d(t["conv_s2_p1.x"], t["conv_s2_p1.w"], t["conv_s2_p1.b"], stride=2, padding=1)
    # conv 3x3 stride 1 padding 1.
    t["conv_3x3.x"], t["conv_3x3.w"], t["conv_3x3.b"] = r(2, 5, 6, 6), r(8, 5, 3, 3), r(8)
    t["conv_3x3.y"] = F.conv2d(t["conv_3x3.x"], t["conv_3x3.w"], t["conv_3x3.b"], padding=1)
    # conv 1x1.
    t["conv_1x1.x"], t["conv_1x1.w"], t["conv_1x1.b"] = r(2, 6, 5, 7), r(4, 6, 1, 1), r(4)
    t["conv_1x1.y"] = F.conv2d(t["conv_1x1.x"], t["conv_1x1.w"], t["conv_1x1.b"])
    # group norm: 12 channels in 4 groups, eps 1e-5.
    t["group_norm.x"], t["group_norm.gamma"], t["group_norm.beta"] = 3 * r(2, 12, 5, 3) + 1, r(12), r(12)
    t["group_norm.y"] = F.group_norm(t["group_norm.x"], 4, t["group_norm.gamma"], t["group_norm.beta"], eps=1e-5)
    # linear 7 -> 5.
    t["linear.x"], t["linear.w"], t["linear.b"] = r(3, 7), r(5, 7), r(5)
    t["linear.y"] = F.linear(t["linear.x"], t["linear.w"], t["linear.b"])
    # SiLU.
    t["silu.x"] = 4 * r(50)
    t["silu.y"] = F.silu(t["silu.x"])
    # attention: q, k, v [2, 10, 12], 3 heads of 4 channels.
    q, k, v = r(2, 10, 12), r(2, 10, 12), r(2, 10, 12)
    t["attention.q"], t["attention.k"], t["attention.v"] = q, k, v
    split = lambda a: a.view(2, 10, 3, 4).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    t["attention.y"] = o.transpose(1, 2).reshape(2, 10, 12)
    # timestep embeddings (as UNet2DModel calls them: scale 1, max_period 10000).
    steps = torch.tensor([0, 1, 17, 500, 999])
    t["temb.t"] = steps.float()
    t["temb_128_noflip_shift1.y"] = get_timestep_embedding(steps, 128, flip_sin_to_cos=False, downscale_freq_shift=1)
    t["temb_32_flip_shift0.y"] = get_timestep_embedding(steps, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    t["temb_33_flip_shift1.y"] = get_timestep_embedding(steps, 33, flip_sin_to_cos=True, downscale_freq_shift=1)
    # nearest 2x upsampling.
    t["upsample.x"] = r(2, 3, 3, 4)
    t["upsample.y"] = F.interpolate(t["upsample.x"], scale_factor=2.0, mode="nearest")
    save_file({k: v.float().contiguous() for k, v in t.items()}, os.path.join(out_dir, "ops.safetensors"))
    print(f"ops: {len(t)} tensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "unet"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for case in CASES:
        export_case(case, args.out)
    export_cifar10_formula(args.out)
    export_ops(args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write small random-weight diffusers UNet2DModel checkpoints for the configurations beyond the
DDPM ones (issue 28 §1): resnet down/upsampling, scale_shift with class tables, the NCSN++ skip
blocks with a Fourier embedding, "timestep" and "identity" class embeddings, a learned time
embedding, fractional timesteps. Each goes to tests/fixtures/unet/<case>/ in the format of
tools/export_unet_fixtures.py (model files, input.safetensors, expected.safetensors with every
layer under the Rust layer names, case.json), plus in case.json the class labels given to the
model (`class_labels`: one int per image, or `class_vectors: true` when input.safetensors holds
`class_labels` [B, time_embed_dim] floats for an identity embedding).

Layer names as src/model/unet.rs gives them: diffusers module paths, with
  down_blocks.i.skip_conv     h after `skip_conv(FIRdown(skip)) + h` (the down block's output)
  up_blocks.i.skip_conv       the image path after the block (its second output);
  up_blocks.i.upsampler       the same in the final block, which only upsamples it
  skip_sample.add             conv_out's output plus the image path
  class_embedding             the class embedding module's output (added to time_embedding)

Usage: /work/venv/bin/python tools/export_unet_model_coverage_fixtures.py [--out tests/fixtures/unet]
"""

import argparse
import json
import os
import shutil
import sys

import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from export_unet_fixtures import BASE, perturb_norms, rel_l2, write_model  # noqa: E402

CASES = [
    # openai/diffusers-cd_imagenet64_l2's block structure with reduced widths: a
    # ResnetDownsampleBlock2D then AttnDownBlock2Ds downsampling with resnets (avg pool), mirrored
    # up with ResnetUpsampleBlock2D last (nearest); scale_shift; a class table; a separate group
    # count for the mid attention; 8-wide heads; CM-style fractional timesteps (250·ln σ, one of
    # them negative); non-square.
    dict(
        name="cd_imagenet64_like", layout="pipeline", dtype="f32", seed=11,
        timesteps=[1095.5066, -188.76679], labels=[3, 7], hw=(8, 16),
        config=dict(
            sample_size=[8, 16], in_channels=3, out_channels=3, block_out_channels=[8, 16, 16, 24],
            layers_per_block=2,
            down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                              "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                            "ResnetUpsampleBlock2D"],
            downsample_type="resnet", upsample_type="resnet", attention_head_dim=8,
            norm_num_groups=4, attn_norm_num_groups=8, resnet_time_scale_shift="scale_shift",
            num_class_embeds=10, norm_eps=1e-5,
        ),
    ),
    # NCSN++ (score-SDE) in miniature: skip blocks with and without attention, the FIR image
    # path, Fourier σ embedding, centred input, group counts min(C/4, 32), the AttnSkipUp
    # group-count quirk, mid_block_scale_factor 1.41421356237, eps 1e-6; σ inputs; non-square.
    dict(
        name="ncsnpp_skip_fourier", layout="flat", dtype="f16", seed=12,
        timesteps=[0.5, 12.3], labels=None, hw=(8, 12),
        config=dict(
            sample_size=[8, 12], in_channels=3, out_channels=3, block_out_channels=[32, 32],
            layers_per_block=1, down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D"],
            up_block_types=["AttnSkipUpBlock2D", "SkipUpBlock2D"],
            time_embedding_type="fourier", center_input_sample=True, norm_num_groups=None,
            mid_block_scale_factor=1.41421356237, norm_eps=1e-6, attention_head_dim=None,
            flip_sin_to_cos=True,
        ),
    ),
    # Three levels of skip blocks: the image path crosses two resolutions each way.
    dict(
        name="skip_three_levels", layout="flat", dtype="f16", seed=13,
        timesteps=[3.0], labels=None, hw=(8, 8),
        config=dict(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=[16, 16, 16],
            layers_per_block=1,
            down_block_types=["SkipDownBlock2D", "SkipDownBlock2D", "SkipDownBlock2D"],
            up_block_types=["SkipUpBlock2D", "SkipUpBlock2D", "SkipUpBlock2D"],
            time_embedding_type="fourier", norm_num_groups=None, norm_eps=1e-6,
            mid_block_type=None,
        ),
    ),
    # class_embed_type "timestep": labels through the sinusoid and their own MLP; fractional
    # timesteps on a positional model.
    dict(
        name="class_timestep", layout="flat", dtype="f32", seed=14,
        timesteps=[12.75, 640.5], labels=[2, 517], hw=(8, 8),
        config=dict(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16],
            layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "UpBlock2D"], attention_head_dim=8,
            norm_num_groups=4, class_embed_type="timestep", flip_sin_to_cos=False, freq_shift=1,
        ),
    ),
    # class_embed_type "identity": float vectors added to the time embedding; one label for
    # both images is not possible in diffusers, so two vectors.
    dict(
        name="class_identity", layout="flat", dtype="f32", seed=15,
        timesteps=[400], labels="vectors", hw=(8, 8),
        config=dict(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16],
            layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "UpBlock2D"], norm_num_groups=4,
            class_embed_type="identity", time_embedding_dim=24,
        ),
    ),
    # A learned time embedding (nn.Embedding(num_train_timesteps, C)) with a class table and
    # attention upsampling by conv; batch 2.
    dict(
        name="learned_time", layout="pipeline", dtype="f32", seed=16,
        timesteps=[0, 999], labels=[0, 4], hw=(8, 8),
        config=dict(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16],
            layers_per_block=1, down_block_types=["AttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "AttnUpBlock2D"], attention_head_dim=4,
            norm_num_groups=4, time_embedding_type="learned", num_train_timesteps=1000,
            num_class_embeds=5,
        ),
    ),
]


def rust_name(name, module):
    """The Rust layer name of a module whose output the CPU reference reports, else None."""
    parts = name.split(".")
    if name in ("conv_in", "conv_out", "time_embedding", "class_embedding"):
        return name
    if name == "conv_act":
        return "conv_norm_out"  # Rust fuses the norm and the SiLU
    if len(parts) == 4 and parts[2] in ("resnets", "attentions") and parts[0].endswith("blocks"):
        return name
    if len(parts) == 3 and parts[0] == "mid_block":
        return name
    if len(parts) == 3 and parts[2] in ("resnet_down", "resnet_up"):
        return name
    if len(parts) == 4 and parts[2] in ("downsamplers", "upsamplers"):
        # A resnet resampler is one Rust layer; a conv one is the conv after the resampling; the
        # skip blocks' FIR resamplers act on the image path (reported with the block).
        kind = type(module).__name__
        if kind == "ResnetBlock2D":
            return name
        return name + ".conv" if kind in ("Downsample2D", "Upsample2D") else None
    return None


def layer_hooks(model, store):
    handles = []

    def record(key, pick=lambda out: out):
        def hook(_module, _inputs, output):
            out = pick(output)
            if torch.is_tensor(out):
                store[key] = out.detach().float().clone()

        return hook

    for name, module in model.named_modules():
        rust = rust_name(name, module)
        if rust is not None and module is not None:
            first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
            handles.append(module.register_forward_hook(record(rust, first)))
    for i, block in enumerate(model.down_blocks):
        if getattr(block, "skip_conv", None) is not None:
            handles.append(block.register_forward_hook(record(f"down_blocks.{i}.skip_conv", lambda o: o[0])))
    for i, block in enumerate(model.up_blocks):
        if hasattr(block, "skip_conv"):
            key = f"up_blocks.{i}." + ("skip_conv" if block.skip_conv is not None else "upsampler")
            handles.append(block.register_forward_hook(record(key, lambda o: o[1])))
    return handles


def export_case(case, out_dir):
    root = os.path.join(out_dir, case["name"])
    shutil.rmtree(root, ignore_errors=True)
    torch.manual_seed(case["seed"])
    model = UNet2DModel(**BASE, **case["config"]).eval()
    perturb_norms(model, torch.Generator().manual_seed(case["seed"] + 100))
    unet_dir = write_model(dict(case, legacy=False), model, root)
    loaded = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch.float32).eval()

    gen = torch.Generator().manual_seed(case["seed"] + 200)
    ts = case["timesteps"]
    b = 2
    h, w = case["hw"]
    x = torch.randn(b, case["config"]["in_channels"], h, w, generator=gen)
    if case["config"].get("time_embedding_type") == "learned":
        t = torch.tensor(ts, dtype=torch.long)
    else:
        t = torch.tensor(ts, dtype=torch.float32)  # fractional t reaches the embedding as is
    inputs = {"sample": x.contiguous()}
    labels = case["labels"]
    if labels == "vectors":
        temb = loaded.time_embedding.linear_2.out_features
        class_labels = torch.randn(b, temb, generator=gen)
        inputs["class_labels"] = class_labels.contiguous()
    elif labels is not None:
        class_labels = torch.tensor(labels, dtype=torch.long)
    else:
        class_labels = None

    layers = {}
    handles = layer_hooks(loaded, layers)
    with torch.no_grad():
        y = loaded(x, t, class_labels).sample
    for hd in handles:
        hd.remove()
    if any(hasattr(blk, "skip_conv") for blk in loaded.up_blocks):
        last = len(loaded.up_blocks) - 1
        image = layers.get(f"up_blocks.{last}.upsampler", layers.get(f"up_blocks.{last}.skip_conv"))
        if image is not None:
            layers["skip_sample.add"] = layers["conv_out"] + image
    if case["config"].get("time_embedding_type") == "fourier":
        layers["divide_by_sigma"] = y.detach().clone()
    with torch.no_grad():
        cl64 = class_labels.double() if labels == "vectors" else class_labels
        t64 = t.double() if t.dtype == torch.float32 else t
        loaded = loaded.double()
        if case["config"].get("class_embed_type") == "timestep":
            # diffusers does not cast the labels' projection to the model dtype (an f32 input
            # into f64 weights); cast it for the f64 reference only.
            loaded.class_embedding.register_forward_pre_hook(lambda m, inp: (inp[0].double(),))
        y64 = loaded(x.double(), t64, cl64).sample

    save_file(inputs, os.path.join(root, "input.safetensors"))
    expected = {"sample": y.contiguous(), "sample_f64": y64.float().contiguous()}
    expected.update({k: v.contiguous() for k, v in layers.items()})
    save_file(expected, os.path.join(root, "expected.safetensors"))
    info = dict(
        timesteps=ts, layout=case["layout"], weights_dtype=case["dtype"], legacy_names=False,
        class_labels=labels if isinstance(labels, list) else None,
        class_vectors=labels == "vectors",
        torch_f32_vs_f64_rel_l2=rel_l2(y, y64), layers=sorted(layers),
    )
    with open(os.path.join(root, "case.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"{case['name']}: out {tuple(y.shape)}, {len(layers)} layers, "
          f"torch f32 vs f64 rel L2 {info['torch_f32_vs_f64_rel_l2']:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "unet"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for case in CASES:
        export_case(case, args.out)


if __name__ == "__main__":
    main()

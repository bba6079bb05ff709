#!/usr/bin/env python3
"""Write classifier-free guidance fixtures: a small class-conditional UNet2DModel with a null label,
and the images diffusers' schedulers make from it with guidance, so `--rng torch` runs with
`--guidance-scale` / `--guidance-rescale` can be checked image for image (the tests run no Python).

The model: tests/fixtures/pipeline/tiny's config plus `num_class_embeds: 4` (labels 0..2, and 3 as
the null label, declared by the config key `"_null_class_label": 3`, which diffusers ignores),
random weights from torch.manual_seed(29). Written to tests/fixtures/pipeline/tiny_cond/ (unet/,
scheduler/ = tiny's DDPMScheduler config, model_index.json).

The loop is the one diffusers' text pipelines write for guidance (StableDiffusionPipeline, with
class labels in place of prompt embeddings): the unconditional half first,

    xin = scale_model_input(cat([x, x]), t)
    u, c = unet(xin, t, class_labels=cat([null]*B + labels)).sample.chunk(2)
    g = u + w * (c - u)
    if rescale > 0: g = rescale_noise_cfg(g, c, rescale)
    x = scheduler.step(g, t, x, **kwargs).prev_sample

with x_T = torch.randn((B, C, H, W), generator=torch.manual_seed(seed)) × init_noise_sigma and
the same generator handed to step() where the scheduler draws noise (DDIM with eta, Euler
ancestral), so every draw has the guided batch shape B. `rescale_noise_cfg` is copied from
diffusers' pipeline_stable_diffusion.py (it imports transformers, which this environment lacks).

Writes tiny_cond/guidance_cases.json (each case: name, the scheduler config keys with their
_class_name, step kwargs, batch, steps, seed, labels, guidance scale and rescale) and
guidance_expected.safetensors (the images, NHWC in [0, 1], under the case name).

Usage: /work/venv/bin/python tools/export_guidance_fixtures.py
"""

import json
import pathlib

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       HeunDiscreteScheduler, UNet2DModel, UniPCMultistepScheduler)
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pipeline"
TINY = ROOT / "tiny"
OUT = ROOT / "tiny_cond"
CLASSES = 4
NULL = 3
SCHEDULERS = {c.__name__: c for c in (DDIMScheduler, DPMSolverMultistepScheduler,
                                      UniPCMultistepScheduler, EulerAncestralDiscreteScheduler,
                                      HeunDiscreteScheduler)}
DDIM, DPM, UNIPC, EULER_A, HEUN = SCHEDULERS

# (name, class, config keys, step kwargs, batch, steps, seed, labels, scale, rescale)
CASES = [
    ("ddim_eta0_w3_s8_b2_seed0", DDIM, {}, {}, 2, 8, 0, [1, 2], 3.0, 0.0),
    ("ddim_eta0_w3_r07_s8_b2_seed0", DDIM, {}, {}, 2, 8, 0, [1, 2], 3.0, 0.7),
    ("ddim_eta05_w2_s6_b3_seed1", DDIM, {}, {"eta": 0.5}, 3, 6, 1, [0, 2, 1], 2.0, 0.0),
    ("ddim_eta1_w4_r05_s6_b2_seed2", DDIM, {}, {"eta": 1.0}, 2, 6, 2, [2, 0], 4.0, 0.5),
    ("ddim_v_w3_s8_b2_seed3", DDIM, {"prediction_type": "v_prediction"}, {}, 2, 8, 3, [0, 1],
     3.0, 0.0),
    ("dpm_o2_w4_s8_b3_seed4", DPM, {"solver_order": 2}, {}, 3, 8, 4, [1, 1, 0], 4.0, 0.0),
    ("dpm_o2_w4_r07_s8_b2_seed5", DPM, {"solver_order": 2}, {}, 2, 8, 5, [2, 1], 4.0, 0.7),
    ("unipc_o2_w2_s8_b2_seed6", UNIPC, {"solver_order": 2}, {}, 2, 8, 6, [0, 2], 2.0, 0.0),
    ("euler_a_w3_s8_b3_seed7", EULER_A, {}, {}, 3, 8, 7, [2, 0, 1], 3.0, 0.0),
    ("euler_a_w3_r07_s8_b2_seed8", EULER_A, {}, {}, 2, 8, 8, [1, 0], 3.0, 0.7),
    ("heun_w2_s5_b2_seed9", HEUN, {}, {}, 2, 5, 9, [0, 1], 2.0, 0.0),
    ("heun_w2_r05_s5_b3_seed10", HEUN, {"clip_sample": False}, {}, 3, 5, 10, [2, 2, 1], 2.0, 0.5),
]


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    """diffusers' rescale_noise_cfg (Lin et al. 2023, §3.4), as pipeline_stable_diffusion.py
    writes it."""
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    noise_cfg = guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg
    return noise_cfg


def make_model():
    config = json.loads((TINY / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["num_class_embeds"] = CLASSES
    torch.manual_seed(29)
    unet = UNet2DModel(**config).eval()
    unet.save_pretrained(OUT / "unet")
    saved = json.loads((OUT / "unet" / "config.json").read_text())
    saved["_null_class_label"] = NULL
    (OUT / "unet" / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    (OUT / "scheduler").mkdir(parents=True, exist_ok=True)
    (OUT / "scheduler" / "scheduler_config.json").write_text(
        (TINY / "scheduler" / "scheduler_config.json").read_text())
    (OUT / "model_index.json").write_text((TINY / "model_index.json").read_text())
    return UNet2DModel.from_pretrained(OUT / "unet").eval()


@torch.no_grad()
def loop(unet, cls_name, config, step_kwargs, batch, steps, seed, labels, scale, rescale):
    sched = SCHEDULERS[cls_name].from_config(config)
    sched.set_timesteps(steps)
    g = torch.manual_seed(seed)
    c, s = unet.config.in_channels, unet.config.sample_size
    x = torch.randn((batch, c, s, s), generator=g) * sched.init_noise_sigma
    class_labels = torch.tensor([NULL] * batch + labels)
    for t in sched.timesteps:
        xin = sched.scale_model_input(torch.cat([x, x]), t)
        out = unet(xin, t, class_labels=class_labels).sample
        noise_pred_uncond, noise_pred_text = out.chunk(2)
        noise_pred = noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)
        if rescale > 0.0:
            noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=rescale)
        kwargs = dict(step_kwargs)
        if cls_name in (DDIM, EULER_A):
            kwargs["generator"] = g
        x = sched.step(noise_pred, t, x, **kwargs).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def main():
    unet = make_model()
    base = json.loads((OUT / "scheduler" / "scheduler_config.json").read_text())
    expected, cases = {}, []
    for name, cls_name, keys, step_kwargs, batch, steps, seed, labels, scale, rescale in CASES:
        config = dict(base, _class_name=cls_name, **keys)
        img = loop(unet, cls_name, config, step_kwargs, batch, steps, seed, labels, scale, rescale)
        unguided = loop(unet, cls_name, config, step_kwargs, batch, steps, seed, labels, 1.0, 0.0)
        expected[name] = img
        cases.append(dict(name=name, config=dict(keys, _class_name=cls_name),
                          step_kwargs=step_kwargs, batch=batch, steps=steps, seed=seed,
                          labels=labels, guidance_scale=scale, guidance_rescale=rescale,
                          guided_vs_unguided_max_abs=float((img - unguided).abs().max())))
        print(name, tuple(img.shape), float(img.mean()), "guided vs w=1",
              float((img - unguided).abs().max()))
    save_file(expected, str(OUT / "guidance_expected.safetensors"))
    (OUT / "guidance_cases.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()

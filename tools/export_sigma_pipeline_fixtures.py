#!/usr/bin/env python3
"""Write end-to-end sampling fixtures of the σ-space schedulers (Euler, Euler ancestral, Heun,
LMS) on the tiny pipeline model of tools/export_pipeline_fixtures.py, so `--rng torch` runs can be
checked image for image (no Python is needed by the tests).

The loop is the one diffusers' pipelines write for these schedulers: the scheduler made with
from_config of the model's scheduler config plus the case's keys, x_T = torch.randn(shape,
generator=torch.manual_seed(seed)) × init_noise_sigma, then per timestep
scale_model_input → unet → step(..., generator) (Euler and Euler ancestral take the generator).

Writes tests/fixtures/pipeline/tiny/sigma_cases.json (each case: name, the config keys given to
from_config with its _class_name, step keyword arguments, batch, steps, seed, and the spread
between the f32 loop and the same loop in float64) and sigma_expected.safetensors (the images,
NHWC in [0, 1], under the case name). The model itself is not touched.

Usage: /work/venv/bin/python tools/export_sigma_pipeline_fixtures.py
"""

import json
import pathlib

import torch
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_mod
import diffusers.schedulers.scheduling_euler_discrete as euler_mod
from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, LMSDiscreteScheduler, UNet2DModel)
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import save_file

DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pipeline" / "tiny"
CLASSES = {c.__name__: c for c in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                                   HeunDiscreteScheduler, LMSDiscreteScheduler)}
EULER, EULER_A, HEUN, LMS = CLASSES

# (name, class, config keys, step kwargs, batch, steps, seed)
CASES = [
    ("euler_leading_s8_b2_seed0", EULER, {}, {}, 2, 8, 0),
    ("euler_karras_s8_b3_seed1", EULER, {"use_karras_sigmas": True, "timestep_spacing": "linspace"},
     {}, 3, 8, 1),
    ("euler_churn_s8_b2_seed2", EULER, {"timestep_spacing": "linspace"},
     {"s_churn": 1.0, "s_tmin": 0.1}, 2, 8, 2),
    ("euler_v_log_linear_s6_b2_seed3", EULER, {"prediction_type": "v_prediction",
                                              "interpolation_type": "log_linear"}, {}, 2, 6, 3),
    ("euler_a_leading_s8_b3_seed4", EULER_A, {}, {}, 3, 8, 4),
    ("euler_a_v_linspace_s7_b2_seed5", EULER_A, {"prediction_type": "v_prediction",
                                                 "timestep_spacing": "linspace"}, {}, 2, 7, 5),
    ("heun_clip_s5_b2_seed6", HEUN, {}, {}, 2, 5, 6),
    ("heun_karras_s4_b3_seed7", HEUN, {"use_karras_sigmas": True, "timestep_spacing": "linspace",
                                       "clip_sample": False}, {}, 3, 4, 7),
    ("lms_leading_s8_b2_seed8", LMS, {}, {}, 2, 8, 8),
    ("lms_exponential_s10_b3_seed9", LMS, {"use_exponential_sigmas": True,
                                           "timestep_spacing": "trailing"}, {}, 3, 10, 9),
    ("lms_beta_s8_b2_seed10", LMS, {"use_beta_sigmas": True, "timestep_spacing": "linspace"},
     {}, 2, 8, 10),
]


class F32Noise:
    """Makes the Euler modules draw their step noise in f32 (as the f32 loop does) whatever dtype
    the model output has, so the float64 loop sees the same noise."""

    def __enter__(self):
        self.saved = (euler_mod.randn_tensor, euler_a_mod.randn_tensor)

        def draw(shape, generator=None, device=None, dtype=None, **kw):
            return randn_tensor(shape, generator=generator, device=device,
                                dtype=torch.float32).to(dtype or torch.float32)

        euler_mod.randn_tensor = draw
        euler_a_mod.randn_tensor = draw

    def __exit__(self, *exc):
        euler_mod.randn_tensor, euler_a_mod.randn_tensor = self.saved


@torch.no_grad()
def loop(unet, cls_name, config, step_kwargs, batch, steps, seed, dtype):
    sched = CLASSES[cls_name].from_config(config)
    sched.set_timesteps(steps)
    g = torch.manual_seed(seed)
    c, s = unet.config.in_channels, unet.config.sample_size
    x = torch.randn((batch, c, s, s), generator=g).to(dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        e = unet(sched.scale_model_input(x, t), t).sample
        kwargs = dict(step_kwargs)
        if cls_name in (EULER, EULER_A):
            kwargs["generator"] = g
        x = sched.step(e, t, x, **kwargs).prev_sample
    return (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def main():
    unet = UNet2DModel.from_pretrained(DIR / "unet").eval()
    unet64 = UNet2DModel.from_pretrained(DIR / "unet").to(torch.float64).eval()
    base = json.loads((DIR / "scheduler" / "scheduler_config.json").read_text())
    expected, cases = {}, []
    for name, cls_name, keys, step_kwargs, batch, steps, seed in CASES:
        config = dict(base, _class_name=cls_name, **keys)
        img = loop(unet, cls_name, config, step_kwargs, batch, steps, seed, torch.float32)
        with F32Noise():
            img64 = loop(unet64, cls_name, config, step_kwargs, batch, steps, seed, torch.float64)
        spread = float((img - img64).abs().max())
        expected[name] = img
        cases.append(dict(name=name, config=dict(keys, _class_name=cls_name),
                          step_kwargs=step_kwargs, batch=batch, steps=steps, seed=seed,
                          torch_f32_vs_f64_max_abs=spread))
        print(name, tuple(img.shape), float(img.mean()), float(img.std()), "f32 vs f64", spread)
    save_file(expected, str(DIR / "sigma_expected.safetensors"))
    (DIR / "sigma_cases.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()

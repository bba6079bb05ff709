#!/usr/bin/env python3
"""Whole sampling runs of PNDM, DPM-Solver's SDE variants and consistency models on the tiny
random-weight model of tools/export_pipeline_fixtures.py (tests/fixtures/pipeline/tiny, left as it
is), so tests/pipeline_torch_pndm_sde_cm.rs can check `--rng torch` image for image:

- pndm*: diffusers' PNDMPipeline, its scheduler PNDMScheduler.from_config(the model's scheduler
  config, ...), generator torch.manual_seed(seed);
- sde*: DDPMPipeline's loop (x_T = randn(generator), then unet + scheduler.step(..., generator))
  with DPMSolverMultistepScheduler.from_config(the model's config, algorithm_type=...);
- cm*: ConsistencyModelPipeline(unet, CMStochasticIterativeScheduler(**config)) itself, with
  generator torch.manual_seed(seed) (the unconditional model: the pipeline drops class labels).

Writes tests/fixtures/pipeline/tiny/pndm_sde_cm_expected.safetensors (output_type="np" images,
NHWC in [0, 1], one tensor per case) and pndm_sde_cm_cases.json (each case's settings, the
scheduler config the Rust side loads, and torch's own f32-vs-f64 spread of the same run).

Usage: /work/venv/bin/python tools/export_pndm_sde_cm_pipeline_fixtures.py
"""

import json
import pathlib

import torch
from diffusers import (CMStochasticIterativeScheduler, ConsistencyModelPipeline, DDPMScheduler,
                       DPMSolverMultistepScheduler, PNDMPipeline, PNDMScheduler, UNet2DModel)
from safetensors.torch import save_file

TINY = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pipeline" / "tiny"

# (name, kind, batch, steps, seed, scheduler keys, cm timesteps)
CASES = [
    ("pndm_prk_s10_b2_seed0", "pndm", 2, 10, 0, {}, None),
    ("pndm_skip_s8_b3_seed1", "pndm", 3, 8, 1, {"skip_prk_steps": True}, None),
    ("sde_pp_o2_s8_b3_seed2", "sde", 3, 8, 2, {"algorithm_type": "sde-dpmsolver++"}, None),
    ("sde_pp_o3_heun_s10_b2_seed3", "sde", 2, 10, 3,
     {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"}, None),
    ("sde_o2_sigma_min_s8_b2_seed4", "sde", 2, 8, 4,
     {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}, None),
    ("cm_s1_b2_seed5", "cm", 2, 1, 5, {}, None),
    ("cm_t22_0_b3_seed6", "cm", 3, None, 6, {}, [22, 0]),
    ("cm_s3_b2_seed7", "cm", 2, 3, 7, {}, None),
    ("cm_T151_t62_0_b2_seed8", "cm", 2, None, 8, {"num_train_timesteps": 151}, [62, 0]),
]


def make_scheduler(kind, keys):
    if kind == "cm":
        return CMStochasticIterativeScheduler(**keys)
    base = DDPMScheduler.from_pretrained(TINY / "scheduler")
    cls = PNDMScheduler if kind == "pndm" else DPMSolverMultistepScheduler
    return cls.from_config(base.config, **keys)


@torch.no_grad()
def run(unet, kind, batch, steps, seed, keys, timesteps):
    sched = make_scheduler(kind, keys)
    generator = torch.manual_seed(seed)
    if kind == "pndm":
        pipe = PNDMPipeline(unet=unet, scheduler=sched)
        return pipe(batch_size=batch, generator=generator, num_inference_steps=steps,
                    output_type="np").images
    if kind == "cm":
        pipe = ConsistencyModelPipeline(unet=unet, scheduler=sched)
        return pipe(batch_size=batch, generator=generator, num_inference_steps=steps or 1,
                    timesteps=timesteps, output_type="np").images
    shape = (batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = torch.randn(shape, generator=generator, dtype=unet.dtype)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()


@torch.no_grad()
def run_f64(u64, kind, batch, steps, seed, keys, timesteps):
    """The same run with the model and the loop in f64, every random draw made in f32 in the
    pipeline's order and then upcast: how sensitive each case is to f32 rounding."""
    import diffusers.schedulers.scheduling_consistency_models as cm_module

    sched = make_scheduler(kind, keys)
    generator = torch.manual_seed(seed)
    shape = (batch, u64.config.in_channels, u64.config.sample_size, u64.config.sample_size)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).double()
    if kind == "cm":
        sched.set_timesteps(steps or 1, timesteps=None) if timesteps is None else \
            sched.set_timesteps(timesteps=timesteps)
        x = x * sched.init_noise_sigma
        original = cm_module.randn_tensor
        cm_module.randn_tensor = lambda shape, generator=None, dtype=None, **_: torch.randn(
            shape, generator=generator, dtype=torch.float32).to(dtype)
        try:
            for t in sched.timesteps:
                m = u64(sched.scale_model_input(x, t), t).sample
                x = sched.step(m, t, x, generator=generator).prev_sample
        finally:
            cm_module.randn_tensor = original
    else:
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            m = u64(x, t).sample
            if kind == "sde":
                z = torch.randn(shape, generator=generator, dtype=torch.float32)
                x = sched.step(m, t, x, variance_noise=z).prev_sample.double()
            else:
                x = sched.step(m, t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def main():
    unet = UNet2DModel.from_pretrained(TINY / "unet").eval()
    u64 = UNet2DModel.from_pretrained(TINY / "unet").to(torch.float64).eval()
    expected, cases = {}, []
    for name, kind, batch, steps, seed, keys, timesteps in CASES:
        img = run(unet, kind, batch, steps, seed, keys, timesteps)
        spread = float(abs(img - run_f64(u64, kind, batch, steps, seed, keys, timesteps)).max())
        expected[name] = torch.from_numpy(img).contiguous().float()
        config = dict(make_scheduler(kind, keys).config)
        config["_class_name"] = {"pndm": "PNDMScheduler", "sde": "DPMSolverMultistepScheduler",
                                 "cm": "CMStochasticIterativeScheduler"}[kind]
        # JSON has no infinities: -inf (lambda_min_clipped) as the string our reader takes.
        config = {k: ("-Infinity" if v == float("-inf") else v) for k, v in config.items()
                  if not k.startswith("_") or k == "_class_name"}
        cases.append(dict(name=name, kind=kind, batch=batch, steps=steps, seed=seed,
                          timesteps=timesteps, scheduler_config=config,
                          torch_f32_vs_f64_max_abs=spread))
        print(name, img.shape, float(img.mean()), float(img.std()), "f32 vs f64", spread)
    save_file(expected, str(TINY / "pndm_sde_cm_expected.safetensors"))
    (TINY / "pndm_sde_cm_cases.json").write_text(json.dumps(cases, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()

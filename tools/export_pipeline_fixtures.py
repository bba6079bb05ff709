#!/usr/bin/env python3
"""Write end-to-end sampling fixtures made by diffusers' DDIMPipeline / DDPMPipeline (the latter
also with DPMSolverMultistepScheduler and UniPCMultistepScheduler), so the Rust
sampler can be checked image for image with `--rng torch` (no Python is needed by the tests).

tests/fixtures/pipeline/tiny/ holds a small random-weight UNet2DModel in diffusers pipeline layout
(model_index.json, unet/, scheduler/) and expected.safetensors with, for each case, the pipeline's
output_type="np" images (NHWC in [0, 1]) under the case name. cases.json lists the cases.

Usage: /work/venv/bin/python tools/export_pipeline_fixtures.py
"""

import json
import pathlib
import shutil

import torch
from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler,
                       DPMSolverMultistepScheduler, UNet2DModel, UniPCMultistepScheduler)
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pipeline" / "tiny"

# (name, pipeline, batch, steps, eta, seed, solver_order)
CASES = [
    ("ddim_eta0_s10_b2_seed0", "ddim", 2, 10, 0.0, 0, None),
    ("ddim_eta1_s10_b2_seed7", "ddim", 2, 10, 1.0, 7, None),
    ("ddim_eta0.5_s4_b3_seed3", "ddim", 3, 4, 0.5, 3, None),
    ("ddpm_s10_b2_seed1", "ddpm", 2, 10, None, 1, None),
    # The multistep solvers in DDPMPipeline's loop, their scheduler made with from_config of the
    # model's DDPMScheduler config (so its timestep_spacing "leading" carries over).
    ("dpm_o1_s8_b3_seed2", "dpm-solver++", 3, 8, None, 2, 1),
    ("dpm_o2_s8_b3_seed3", "dpm-solver++", 3, 8, None, 3, 2),
    ("dpm_o3_s10_b3_seed4", "dpm-solver++", 3, 10, None, 4, 3),
    ("unipc_o1_s8_b3_seed5", "unipc", 3, 8, None, 5, 1),
    ("unipc_o2_s8_b3_seed6", "unipc", 3, 8, None, 6, 2),
    ("unipc_o3_s10_b3_seed8", "unipc", 3, 10, None, 8, 3),
]
SOLVERS = {"dpm-solver++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}


def scheduler(kind, order):
    if kind == "ddim":
        return DDIMScheduler.from_pretrained(OUT / "scheduler")
    if kind == "ddpm":
        return DDPMScheduler.from_pretrained(OUT / "scheduler")
    base = DDPMScheduler.from_pretrained(OUT / "scheduler")
    return SOLVERS[kind].from_config(base.config, solver_order=order)


def run_f64(unet, kind, batch, steps, eta, seed, order):
    """The same run in float64 (noise drawn in f32 as the pipeline does), to measure how sensitive
    each case is to f32 rounding: the Rust tolerance is only meaningful well above this spread."""
    u = UNet2DModel.from_pretrained(OUT / "unet").to(torch.float64)
    g = torch.manual_seed(seed)
    shape = (batch, u.config.in_channels, u.config.sample_size, u.config.sample_size)
    x = torch.randn(shape, generator=g).double()
    sched = scheduler(kind, order)
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            e = u(x, t).sample
            if kind == "ddim":
                if eta > 0:
                    noise = torch.randn(shape, generator=g).double()
                    x = sched.step(e, t, x, eta=eta, variance_noise=noise).prev_sample
                else:
                    x = sched.step(e, t, x, eta=eta).prev_sample
            elif kind == "ddpm":
                noise = torch.randn(shape, generator=g).double() if t > 0 else None
                x = ddpm_step_with_noise(sched, e, t, x, noise)
            else:
                x = sched.step(e, t, x).prev_sample
    return ((x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def solver_loop(unet, sched, batch, steps, generator):
    """DDPMPipeline's loop for a multistep solver (UniPC's step takes no generator, so the
    pipeline itself cannot run it): x_T = torch.randn, then unet + scheduler.step per timestep."""
    shape = (batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = torch.randn(shape, generator=generator)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def ddpm_step_with_noise(sched, e, t, x, noise):
    """DDPMScheduler.step with a given noise tensor: it has no variance_noise argument, so its
    module-level randn_tensor is swapped for one call."""
    import diffusers.schedulers.scheduling_ddpm as ddpm

    original = ddpm.randn_tensor
    ddpm.randn_tensor = lambda *args, **kwargs: noise
    try:
        return sched.step(e, t, x).prev_sample
    finally:
        ddpm.randn_tensor = original


def main():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=[16, 32],
        layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "UpBlock2D"], norm_num_groups=8,
        attention_head_dim=8,
    )
    # Default init. (Weights scaled up by 1.5 made the 10-step eta-0 trajectory so sensitive that
    # torch's own f32 and f64 runs differed by 1.2e-3, i.e. the fixture could not check 1e-3.)
    unet.eval()
    if OUT.exists():
        shutil.rmtree(OUT)
    # DDPM scheduler config, as google/ddpm-cifar10-32 ships; DDIMPipeline converts it.
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.save_pretrained(OUT, safe_serialization=True)
    unet = UNet2DModel.from_pretrained(OUT / "unet")
    expected, cases = {}, []
    for name, kind, batch, steps, eta, seed, order in CASES:
        generator = torch.manual_seed(seed)
        if kind == "ddim":
            p = DDIMPipeline(unet=unet, scheduler=scheduler(kind, order))
            img = p(batch_size=batch, generator=generator, num_inference_steps=steps, eta=eta,
                    output_type="np").images
        elif kind == "ddpm":
            p = DDPMPipeline(unet=unet, scheduler=scheduler(kind, order))
            img = p(batch_size=batch, generator=generator, num_inference_steps=steps,
                    output_type="np").images
        else:
            img = solver_loop(unet, scheduler(kind, order), batch, steps, generator)
        expected[name] = torch.from_numpy(img).contiguous()
        spread = float(abs(img - run_f64(unet, kind, batch, steps, eta, seed, order)).max())
        cases.append(dict(name=name, sampler=kind, batch=batch, steps=steps, eta=eta, seed=seed,
                          solver_order=order, torch_f32_vs_f64_max_abs=spread))
        print(name, img.shape, float(img.mean()), float(img.std()), "f32 vs f64", spread)
    save_file(expected, str(OUT / "expected.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Fixtures for the one-generator-per-image contract of `ddim sample --seeds` (issue 15): the
image of seed s is diffusers' pipeline run alone, batch_size=1 with torch.manual_seed(s).

Reads the tiny model of tools/export_pipeline_fixtures.py (tests/fixtures/pipeline/tiny) and
writes there seeds.safetensors (per case and seed: the pipeline's output_type="np" image, NHWC
in [0, 1], named "<case>/<seed>") and seeds.json (the cases).

Usage: /work/venv/bin/python tools/export_seed_fixtures.py
"""

import json
import pathlib

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

TINY = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pipeline" / "tiny"
SEEDS = [3, 4, 11, 200]
# (name, pipeline, steps, eta)
CASES = [
    ("ddim_eta0_s6", "ddim", 6, 0.0),
    ("ddim_eta0.5_s6", "ddim", 6, 0.5),
    ("ddpm_s6", "ddpm", 6, None),
]


def main():
    unet = UNet2DModel.from_pretrained(TINY / "unet")
    unet.eval()
    expected, cases = {}, []
    for name, kind, steps, eta in CASES:
        for seed in SEEDS:
            generator = torch.manual_seed(seed)
            if kind == "ddim":
                p = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_pretrained(TINY / "scheduler"))
                img = p(batch_size=1, generator=generator, num_inference_steps=steps, eta=eta,
                        output_type="np").images
            else:
                p = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(TINY / "scheduler"))
                img = p(batch_size=1, generator=generator, num_inference_steps=steps,
                        output_type="np").images
            expected[f"{name}/{seed}"] = torch.from_numpy(img).contiguous()
        cases.append(dict(name=name, sampler=kind, steps=steps, eta=eta, seeds=SEEDS))
        print(name, "done")
    save_file(expected, str(TINY / "seeds.safetensors"))
    (TINY / "seeds.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()

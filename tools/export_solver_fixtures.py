#!/usr/bin/env python3
"""Export diffusers DPMSolverMultistepScheduler / UniPCMultistepScheduler fixtures for
tests/solver_fixtures.rs (no Python needed at test time).

Run from the repository root:  /work/venv/bin/python tools/export_solver_fixtures.py
Writes tests/fixtures/scheduler/solvers.json: one case per option combination, each with

  config       the scheduler's constructor keys (as a scheduler_config.json would hold them)
  class        DPMSolverMultistepScheduler | UniPCMultistepScheduler
  n            num_inference_steps
  timesteps    scheduler.timesteps after set_timesteps(n)
  sigmas       scheduler.sigmas (f32, n + 1 values)
  steps        per step, from diffusers' own f32 loop:
                 x          the sample passed to step()
                 m          the model output (diffusers' dummy model: m = x * t / (t + 1), f32)
                 converted  model_outputs[-1] after the step (the converted output, x0 or eps)
                 last       UniPC only: last_sample after the step (the corrected sample)
                 out        prev_sample
               and "ref": the same step teacher-forced in float64 — a second scheduler given the
               f32 loop's state before the step (history upcast), its sigmas upcast to f64 from
               their exact f32 values, x and m upcast — rounded once to f32: converted, last, out.
               (The epsilon conversion at t = 999 cancels about 3 digits, so diffusers' own f32
               step is ~5e-5 away from the exact answer; the Rust test compares with "ref".)
  final_sum    sum of the last prev_sample of the f32 loop

The start sample is x[k] = 3 * sin(0.7 k + 0.3) * (1 + (k mod 5) / 4), shape (2, 2, 3, 3),
so thresholding bites. Tensors are base64 of little-endian f32 ("f32le_b64").
"""

import base64
import json
import math
import os

import numpy as np
import torch
import diffusers
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "scheduler", "solvers.json")
SHAPE = (2, 2, 3, 3)
THRESH = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 3.0}
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}

DPM = "DPMSolverMultistepScheduler"
UNIPC = "UniPCMultistepScheduler"


def b64(t):
    a = np.ascontiguousarray(t.detach().numpy().astype("<f4").ravel())
    assert np.all(np.isfinite(a)), "non-finite value in a fixture tensor"
    return {"f32le_b64": base64.b64encode(a.tobytes()).decode("ascii"), "len": int(a.size)}


def start_sample():
    k = torch.arange(int(np.prod(SHAPE)), dtype=torch.float64)
    x = 3.0 * torch.sin(0.7 * k + 0.3) * (1.0 + (k % 5) / 4.0)
    return x.to(torch.float32).reshape(SHAPE)


def dummy_model(sample, t):
    t = torch.as_tensor(t).reshape(-1, 1, 1, 1).to(dtype=sample.dtype)
    return sample * t / (t + 1)


def cases():
    out = []

    def add(name, cls, n, **config):
        out.append((name, cls, n, config))

    # DPM-Solver++ (data prediction)
    add("dpm_default_n10", DPM, 10)
    add("dpm_default_n20", DPM, 20)
    add("dpm_order1", DPM, 10, solver_order=1)
    add("dpm_order3_n10", DPM, 10, solver_order=3)
    add("dpm_order3_n16", DPM, 16, solver_order=3)
    add("dpm_heun", DPM, 10, solver_type="heun")
    add("dpm_heun_order3_sigma_min", DPM, 12, solver_type="heun", solver_order=3, **SIGMA_MIN)
    add("dpm_sigma_min", DPM, 10, **SIGMA_MIN)
    add("dpm_no_lower_order_final_sigma_min", DPM, 10, solver_order=3, lower_order_final=False, **SIGMA_MIN)
    add("dpm_euler_at_final_n20_sigma_min", DPM, 20, euler_at_final=True, **SIGMA_MIN)
    add("dpm_thresholding", DPM, 10, **THRESH)
    add("dpm_sample_prediction", DPM, 10, prediction_type="sample")
    add("dpm_v_prediction", DPM, 10, prediction_type="v_prediction")
    add("dpm_leading_offset1", DPM, 10, timestep_spacing="leading", steps_offset=1)
    add("dpm_trailing", DPM, 10, timestep_spacing="trailing")
    add("dpm_trailing_n7", DPM, 7, timestep_spacing="trailing")
    add("dpm_scaled_linear", DPM, 10, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    add("dpm_cosine_lambda_clip", DPM, 10, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)
    add("dpm_karras", DPM, 10, use_karras_sigmas=True)
    # (Karras sigmas on the cosine schedule repeat the first timestep, and diffusers then
    # overruns its sigma table; the Rust side refuses that combination.)
    add("dpm_karras_scaled_linear", DPM, 10, use_karras_sigmas=True, beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012)
    add("dpm_zero_snr_v", DPM, 10, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    add("dpm_T500_n25", DPM, 25, num_train_timesteps=500, solver_order=3)
    # DPM-Solver (noise prediction); diffusers needs sigma_min there
    add("dpmsolver_order1", DPM, 10, algorithm_type="dpmsolver", solver_order=1, **SIGMA_MIN)
    add("dpmsolver_order2", DPM, 10, algorithm_type="dpmsolver", **SIGMA_MIN)
    add("dpmsolver_heun", DPM, 10, algorithm_type="dpmsolver", solver_type="heun", **SIGMA_MIN)
    add("dpmsolver_order3_n16", DPM, 16, algorithm_type="dpmsolver", solver_order=3, **SIGMA_MIN)
    add("dpmsolver_thresholding_sample", DPM, 10, algorithm_type="dpmsolver", prediction_type="sample",
        **SIGMA_MIN, **THRESH)
    add("dpm_combined", DPM, 12, solver_order=3, solver_type="heun", prediction_type="v_prediction",
        timestep_spacing="trailing", use_karras_sigmas=True, **THRESH)
    # UniPC
    add("unipc_default_n10", UNIPC, 10)
    add("unipc_default_n20", UNIPC, 20)
    add("unipc_order1", UNIPC, 10, solver_order=1)
    add("unipc_order3", UNIPC, 10, solver_order=3)
    add("unipc_order3_n16", UNIPC, 16, solver_order=3)
    add("unipc_bh1_sigma_min", UNIPC, 10, solver_type="bh1", **SIGMA_MIN)
    add("unipc_bh1_order1_sigma_min", UNIPC, 10, solver_type="bh1", solver_order=1, **SIGMA_MIN)
    add("unipc_bh1_order3_sigma_min", UNIPC, 10, solver_type="bh1", solver_order=3, **SIGMA_MIN)
    add("unipc_sigma_min", UNIPC, 10, **SIGMA_MIN)
    add("unipc_eps_sigma_min", UNIPC, 10, predict_x0=False, **SIGMA_MIN)
    add("unipc_eps_order3_sigma_min", UNIPC, 10, predict_x0=False, solver_order=3, **SIGMA_MIN)
    add("unipc_no_lower_order_final_sigma_min", UNIPC, 10, solver_order=3, lower_order_final=False,
        **SIGMA_MIN)
    add("unipc_disable_corrector", UNIPC, 10, disable_corrector=[0, 3])
    add("unipc_thresholding", UNIPC, 10, **THRESH)
    add("unipc_eps_thresholding_ignored", UNIPC, 10, predict_x0=False, **SIGMA_MIN, **THRESH)
    add("unipc_sample_prediction", UNIPC, 10, prediction_type="sample")
    add("unipc_v_prediction", UNIPC, 10, prediction_type="v_prediction")
    add("unipc_leading", UNIPC, 10, timestep_spacing="leading")
    add("unipc_trailing", UNIPC, 10, timestep_spacing="trailing")
    add("unipc_karras", UNIPC, 10, use_karras_sigmas=True)
    add("unipc_karras_sigma_min", UNIPC, 10, use_karras_sigmas=True, **SIGMA_MIN)
    add("unipc_cosine", UNIPC, 10, beta_schedule="squaredcos_cap_v2")
    add("unipc_combined", UNIPC, 12, solver_order=3, solver_type="bh1", prediction_type="v_prediction",
        timestep_spacing="trailing", use_karras_sigmas=True, disable_corrector=[2], **SIGMA_MIN, **THRESH)
    return out


def up(v):
    return None if v is None else v.double()


def f64_step(cls, config, n, i, state, t, x, m):
    """Step i in float64 from the f32 loop's state before it."""
    s = cls(**config)
    s.set_timesteps(n)
    s.sigmas = s.sigmas.double()
    s._step_index = i
    s.lower_order_nums = state["lower_order_nums"]
    s.model_outputs = [up(v) for v in state["model_outputs"]]
    if cls is UniPCMultistepScheduler:
        s.last_sample = up(state["last_sample"])
        s.timestep_list = list(state["timestep_list"])
        if state["this_order"] is not None:
            s.this_order = state["this_order"]
    out = s.step(m.double(), t, x.double()).prev_sample
    ref = {"converted": b64(s.model_outputs[-1].float()), "out": b64(out.float())}
    if cls is UniPCMultistepScheduler:
        ref["last"] = b64(s.last_sample.float())
    return ref


def run_case(name, cls_name, n, config):
    cls = {DPM: DPMSolverMultistepScheduler, UNIPC: UniPCMultistepScheduler}[cls_name]
    sched = cls(**config)
    sched.set_timesteps(n)
    x = start_sample()
    steps = []
    for i, t in enumerate(sched.timesteps):
        m = dummy_model(x, t)
        state = {
            "lower_order_nums": sched.lower_order_nums,
            "model_outputs": list(sched.model_outputs),
            "last_sample": getattr(sched, "last_sample", None),
            "timestep_list": list(getattr(sched, "timestep_list", [])),
            "this_order": getattr(sched, "this_order", None),
        }
        ref = f64_step(cls, config, n, i, state, t, x, m)
        out = sched.step(m, t, x).prev_sample
        step = {"x": b64(x), "m": b64(m), "converted": b64(sched.model_outputs[-1]), "out": b64(out),
                "ref": ref}
        if cls_name == UNIPC:
            step["last"] = b64(sched.last_sample)
        steps.append(step)
        x = out
    sigmas = sched.sigmas.numpy().astype(np.float32)
    return {
        "name": name,
        "class": cls_name,
        "n": n,
        "config": config,
        "timesteps": [int(v) for v in sched.timesteps],
        "sigmas": [float(v) for v in sigmas],
        "steps": steps,
        "final_sum": float(x.double().sum()),
    }


def main():
    data = {
        "generator": "tools/export_solver_fixtures.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "shape": list(SHAPE),
        "cases": [run_case(*c) for c in cases()],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(data, fh, indent=None, separators=(",", ":"))
        fh.write("\n")
    print(f"{os.path.relpath(OUT, ROOT)}: {os.path.getsize(OUT)} bytes, {len(data['cases'])} cases")


if __name__ == "__main__":
    main()

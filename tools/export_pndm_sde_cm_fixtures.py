#!/usr/bin/env python3
"""Export diffusers PNDMScheduler, DPMSolverMultistepScheduler (algorithm_type sde-dpmsolver++ /
sde-dpmsolver) and CMStochasticIterativeScheduler fixtures for tests/schedule_pndm_sde_cm.rs (no
Python needed at test time).

Run from the repository root:  /work/venv/bin/python tools/export_pndm_sde_cm_fixtures.py
Writes tests/fixtures/scheduler/pndm_sde_cm.json: one case per option combination, each with

  kind         pndm | sde | cm
  config       the scheduler's constructor keys (as a scheduler_config.json would hold them,
               with its _class_name)
  n            num_inference_steps (cm: None when `indices` is given)
  indices      cm only: the custom timesteps passed to set_timesteps(timesteps=...), or null
  timesteps    scheduler.timesteps after set_timesteps (pndm, sde: ints; cm: f64)
  sigmas       sde, cm: scheduler.sigmas (f32)
  steps        per model evaluation, from diffusers' own f32 loop:
                 x          the sample passed to step() (cm: unscaled)
                 scaled     cm only: scale_model_input(x, t)
                 m          the model output (dummy model: m = input * t / (t + 1), f32)
                 z          sde, cm with noise: the noise the step adds (f32 randn from a
                            torch.Generator seeded with 0, injected; drawn in diffusers' order)
                 out        prev_sample
               and "ref": the same step teacher-forced in float64 (a deep copy of the scheduler's
               state before the step, every tensor upcast to f64 from its f32 values, x, m and z
               upcast; for sde without step()'s cast of the sample to f32, see sde_ref_step),
               rounded once to f32: out.
  final_sum    sum of the last prev_sample of the f32 loop

The start sample is x[k] = 3 * sin(0.7 k + 0.3) * (1 + (k mod 5) / 4), shape (2, 2, 3, 3); cm
starts from that sample x 80 (its init_noise_sigma). Tensors are base64 of little-endian f32.
"""

import base64
import copy
import json
import os

import numpy as np
import torch
import diffusers
import diffusers.schedulers.scheduling_consistency_models as cm_module
from diffusers import CMStochasticIterativeScheduler, DPMSolverMultistepScheduler, PNDMScheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "scheduler", "pndm_sde_cm.json")
SHAPE = (2, 2, 3, 3)
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}
THRESH = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 3.0}


def b64(t):
    a = np.ascontiguousarray(t.detach().float().numpy().astype("<f4").ravel())
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

    def pndm(name, n, **config):
        out.append(("pndm", name, n, None, dict(_class_name="PNDMScheduler", **config)))

    def sde(name, n, **config):
        config.setdefault("algorithm_type", "sde-dpmsolver++")
        out.append(("sde", name, n, None, dict(_class_name="DPMSolverMultistepScheduler", **config)))

    def cm(name, n, indices=None, **config):
        out.append(("cm", name, n, indices, dict(_class_name="CMStochasticIterativeScheduler", **config)))

    pndm("pndm_prk_n10", 10)
    pndm("pndm_prk_n4", 4)
    pndm("pndm_prk_n25", 25)
    pndm("pndm_skip_n10", 10, skip_prk_steps=True)
    pndm("pndm_skip_n1", 1, skip_prk_steps=True)
    pndm("pndm_skip_n2", 2, skip_prk_steps=True)
    pndm("pndm_skip_n3", 3, skip_prk_steps=True)
    pndm("pndm_v_prk", 10, prediction_type="v_prediction")
    pndm("pndm_v_skip", 10, prediction_type="v_prediction", skip_prk_steps=True)
    pndm("pndm_alpha_one", 10, set_alpha_to_one=True)
    pndm("pndm_alpha_one_skip", 10, set_alpha_to_one=True, skip_prk_steps=True)
    pndm("pndm_linspace_prk", 10, timestep_spacing="linspace")
    pndm("pndm_linspace_skip", 10, timestep_spacing="linspace", skip_prk_steps=True)
    pndm("pndm_trailing_prk", 10, timestep_spacing="trailing")
    pndm("pndm_trailing_skip_n7", 7, timestep_spacing="trailing", skip_prk_steps=True)
    pndm("pndm_leading_offset1", 10, steps_offset=1)
    pndm("pndm_scaled_linear", 10, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pndm("pndm_cosine_skip", 10, beta_schedule="squaredcos_cap_v2", skip_prk_steps=True)
    pndm("pndm_T500_n12", 12, num_train_timesteps=500)

    sde("sde_pp_n10", 10)
    sde("sde_pp_n20", 20)
    sde("sde_pp_order1", 10, solver_order=1)
    sde("sde_pp_heun", 10, solver_type="heun")
    sde("sde_pp_order3", 10, solver_order=3)
    sde("sde_pp_order3_n16", 16, solver_order=3)
    sde("sde_pp_sigma_min", 10, **SIGMA_MIN)
    sde("sde_pp_order3_no_lower_order_final", 10, solver_order=3, lower_order_final=False, **SIGMA_MIN)
    sde("sde_pp_karras", 10, use_karras_sigmas=True)
    sde("sde_pp_v", 10, prediction_type="v_prediction")
    sde("sde_pp_sample", 10, prediction_type="sample")
    sde("sde_pp_thresholding", 10, **THRESH)
    sde("sde_pp_trailing", 10, timestep_spacing="trailing")
    sde("sde_pp_heun_karras_scaled_linear", 12, solver_type="heun", use_karras_sigmas=True,
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sde("sde_order1", 10, algorithm_type="sde-dpmsolver", solver_order=1, **SIGMA_MIN)
    sde("sde_order2", 10, algorithm_type="sde-dpmsolver", **SIGMA_MIN)
    sde("sde_heun", 10, algorithm_type="sde-dpmsolver", solver_type="heun", **SIGMA_MIN)
    sde("sde_v_n20", 20, algorithm_type="sde-dpmsolver", prediction_type="v_prediction", **SIGMA_MIN)

    cm("cm_n1", 1)
    cm("cm_n2", 2)
    cm("cm_n3", 3)
    cm("cm_n40", 40)
    cm("cm_22_0", None, [22, 0])
    cm("cm_T201_106_0", None, [106, 0], num_train_timesteps=201)
    cm("cm_T151_62_0", None, [62, 0], num_train_timesteps=151)
    cm("cm_T151_three", None, [140, 62, 5], num_train_timesteps=151)
    cm("cm_no_clip_n4", 4, clip_denoised=False)
    cm("cm_options", 5, sigma_min=0.01, sigma_max=40.0, sigma_data=0.7, s_noise=0.8, rho=5.0)
    return out


class Injected:
    """Replaces diffusers' randn_tensor in the consistency scheduler by a given tensor."""

    def __init__(self):
        self.z = None

    def __call__(self, shape, generator=None, device=None, dtype=None, **_):
        assert self.z is not None and tuple(shape) == tuple(self.z.shape)
        return self.z.to(dtype)


def upcast(sched):
    """A deep copy of a scheduler with every float tensor of its state in f64."""
    s = copy.deepcopy(sched)
    for name, v in list(vars(s).items()):
        if torch.is_tensor(v) and v.is_floating_point():
            setattr(s, name, v.double())
        elif isinstance(v, list):
            setattr(s, name, [x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in v])
    return s


def sde_ref_step(s, m, t, x, z):
    """DPMSolverMultistepScheduler.step in float64 throughout. diffusers' step() casts the sample
    to float32 before the update ("upcast"), which in a float64 run rounds the sample term to
    f32; this calls the same scheduler methods in step()'s order without that cast."""
    if s.step_index is None:
        s._init_step_index(t)
    n = len(s.timesteps)
    cfg = s.config
    lower_order_final = (s.step_index == n - 1) and (
        cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
    )
    lower_order_second = (s.step_index == n - 2) and cfg.lower_order_final and n < 15
    mo = s.convert_model_output(m, sample=x)
    for i in range(cfg.solver_order - 1):
        s.model_outputs[i] = s.model_outputs[i + 1]
    s.model_outputs[-1] = mo
    if cfg.solver_order == 1 or s.lower_order_nums < 1 or lower_order_final:
        out = s.dpm_solver_first_order_update(mo, sample=x, noise=z)
    elif cfg.solver_order == 2 or s.lower_order_nums < 2 or lower_order_second:
        out = s.multistep_dpm_solver_second_order_update(s.model_outputs, sample=x, noise=z)
    else:
        out = s.multistep_dpm_solver_third_order_update(s.model_outputs, sample=x, noise=z)
    return out


def run_case(kind, name, n, indices, config):
    ctor = {k: v for k, v in config.items() if k != "_class_name"}
    cls = {"pndm": PNDMScheduler, "sde": DPMSolverMultistepScheduler, "cm": CMStochasticIterativeScheduler}[kind]
    sched = cls(**ctor)
    if kind == "cm":
        if indices is not None:
            sched.set_timesteps(timesteps=indices)
        else:
            sched.set_timesteps(n)
    else:
        sched.set_timesteps(n)
    gen = torch.Generator().manual_seed(0)
    x = start_sample()
    if kind == "cm":
        x = x * sched.init_noise_sigma
    inject = Injected()
    cm_module.randn_tensor = inject
    steps = []
    for i, t in enumerate(sched.timesteps):
        step = {"x": b64(x)}
        inp = x
        if kind == "cm":
            inp = sched.scale_model_input(x, t)
            step["scaled"] = b64(inp)
        m = dummy_model(inp, t)
        draws = kind == "sde" or (kind == "cm" and len(sched.timesteps) > 1)
        z = torch.randn(SHAPE, generator=gen, dtype=torch.float32) if draws else None
        ref_sched = upcast(sched)
        kwargs = {"variance_noise": z} if kind == "sde" else {}
        inject.z = z.double() if z is not None else None
        if kind == "sde":
            ref = sde_ref_step(ref_sched, m.double(), t, x.double(), z.double())
        else:
            ref = ref_sched.step(m.double(), t, x.double()).prev_sample
        inject.z = z
        out = sched.step(m, t, x, **kwargs).prev_sample
        step["m"] = b64(m)
        if z is not None:
            step["z"] = b64(z)
        step["out"] = b64(out)
        step["ref"] = {"out": b64(ref)}
        steps.append(step)
        x = out
    case = {
        "kind": kind,
        "name": name,
        "n": n,
        "indices": indices,
        "config": config,
        "timesteps": [float(v) if kind == "cm" else int(v) for v in sched.timesteps],
        "steps": steps,
        "final_sum": float(x.double().sum()),
    }
    if kind != "pndm":
        case["sigmas"] = [float(v) for v in sched.sigmas.numpy().astype(np.float32)]
    return case


def main():
    data = {
        "generator": "tools/export_pndm_sde_cm_fixtures.py",
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

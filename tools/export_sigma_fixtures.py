#!/usr/bin/env python3
"""Export diffusers fixtures of the σ-space schedulers (EulerDiscreteScheduler,
EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler) for
tests/sigma_schedule.rs (no Python needed at test time).

Run from the repository root:  /work/venv/bin/python tools/export_sigma_fixtures.py
Writes tests/fixtures/scheduler/sigma.json with

  schedules   one entry per (class, config, n): the config keys given to the constructor (as a
              scheduler_config.json would hold them), n, and what set_timesteps(n) leaves:
              timesteps (f32), sigmas (f32), init_noise_sigma
  steps       fewer cases, each a whole f32 loop with a dummy model, per model evaluation:
                x      the sample passed to step() (unscaled)
                m      the model output: dummy(scale_model_input(x, t), t), m = y·t/(t+1)
                noise  the tensor step() drew (Euler with churn, Euler ancestral), else absent
                out    prev_sample;  x0  pred_original_sample
                state  the scheduler's state before the step: LMS's derivatives (oldest first),
                       Heun's prev_derivative and sample (absent in first-order state)
                coefs  LMS only: the coefficients get_lms_coefficient gives (f32 scheduler)
              and "ref": the same step teacher-forced in float64 (σ table upcast from its exact
              f32 values, state, x, m and noise upcast; diffusers' own randn_tensor replaced by
              the drawn noise), rounded once to f32: out.  final_sum: sum of the last sample.
  beta_ppf    scipy.stats.beta.ppf(q, a, b) for a grid of q and (a, b)

The start sample is x[k] = 3 * sin(0.7 k + 0.3) * (1 + (k mod 5) / 4) times init_noise_sigma,
shape (2, 2, 3, 3); noise comes from torch.manual_seed(0). Tensors are base64 of little-endian
f32 ("f32le_b64").
"""

import base64
import json
import os
import warnings

import numpy as np
import scipy.stats
import torch
import diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_mod
import diffusers.schedulers.scheduling_euler_discrete as euler_mod
from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, LMSDiscreteScheduler)

diffusers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore", message="The `scale_model_input` function")  # ref_step's
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "scheduler", "sigma.json")
SHAPE = (2, 2, 3, 3)
CLASSES = {
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
}
EULER, EULER_A, HEUN, LMS = CLASSES


def b64(t):
    a = np.ascontiguousarray(t.detach().numpy().astype("<f4").ravel())
    assert np.all(np.isfinite(a)), "non-finite value in a fixture tensor"
    return {"f32le_b64": base64.b64encode(a.tobytes()).decode("ascii"), "len": int(a.size)}


def schedule_cases():
    out = []
    spacings = ["linspace", "leading", "trailing"]
    alt = [{}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True},
           {"use_beta_sigmas": True}]
    for cls in CLASSES:
        for spacing in spacings:
            for extra in (alt if cls != EULER_A else [{}]):
                for n in (10, 7):
                    out.append((cls, n, dict(timestep_spacing=spacing, **extra)))
    # Options of Euler only
    out += [
        (EULER, 10, {"interpolation_type": "log_linear"}),
        (EULER, 10, {"final_sigmas_type": "sigma_min"}),
        (EULER, 10, {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True}),
        (EULER, 10, {"use_karras_sigmas": True, "sigma_min": 0.02, "sigma_max": 80.0}),
        (EULER, 10, {"use_exponential_sigmas": True, "sigma_min": 0.05, "sigma_max": 20.0}),
        (EULER, 10, {"use_beta_sigmas": True, "sigma_min": 0.05, "sigma_max": 20.0}),
        (EULER, 10, {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
        (EULER, 10, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
        (EULER_A, 10, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    ]
    # Other beta schedules, offsets, T
    for cls in CLASSES:
        out += [
            (cls, 10, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "timestep_spacing": "leading", "steps_offset": 1}),
            (cls, 10, {"beta_schedule": "squaredcos_cap_v2"}),
            (cls, 25, {"num_train_timesteps": 500, "beta_start": 0.0001, "beta_end": 0.02}),
            (cls, 50, {"beta_start": 0.0001, "beta_end": 0.02}),
        ]
    out.append((HEUN, 5, {}))  # Heun's own default betas
    out.append((LMS, 12, {"use_karras_sigmas": True, "timestep_spacing": "leading"}))
    return out


def run_schedule(cls_name, n, config):
    s = CLASSES[cls_name](**config)
    s.set_timesteps(n)
    return {
        "class": cls_name,
        "n": n,
        "config": config,
        "timesteps": [float(v) for v in s.timesteps.numpy().astype(np.float32)],
        "sigmas": [float(v) for v in s.sigmas.numpy().astype(np.float32)],
        "init_noise_sigma": float(s.init_noise_sigma),
    }


def step_cases():
    tb = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02}
    return [
        ("euler_default", EULER, 10, dict(tb), {}),
        ("euler_leading", EULER, 10, dict(tb, timestep_spacing="leading"), {}),
        ("euler_karras_v", EULER, 10, dict(tb, use_karras_sigmas=True,
                                           prediction_type="v_prediction"), {}),
        ("euler_sample_prediction", EULER, 10, dict(tb, prediction_type="sample"), {}),
        ("euler_churn", EULER, 10, dict(tb), {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 50.0}),
        ("euler_churn_v_noise", EULER, 10, dict(tb, prediction_type="v_prediction"),
         {"s_churn": 4.0, "s_noise": 1.003}),
        ("euler_log_linear", EULER, 10, dict(tb, interpolation_type="log_linear"), {}),
        ("euler_beta_sigma_min", EULER, 10, dict(tb, use_beta_sigmas=True,
                                                 final_sigmas_type="sigma_min"), {}),
        ("euler_continuous_v", EULER, 10, dict(tb, timestep_type="continuous",
                                               prediction_type="v_prediction"), {}),
        ("euler_a_default", EULER_A, 10, dict(tb), {}),
        ("euler_a_v_trailing", EULER_A, 10, dict(tb, prediction_type="v_prediction",
                                                 timestep_spacing="trailing"), {}),
        ("heun_default", HEUN, 5, {}, {}),
        ("heun_clip", HEUN, 6, dict(tb, clip_sample=True, clip_sample_range=2.0), {}),
        ("heun_karras_v", HEUN, 6, dict(tb, use_karras_sigmas=True,
                                        prediction_type="v_prediction"), {}),
        ("heun_sample_exponential", HEUN, 6, dict(tb, prediction_type="sample",
                                                  use_exponential_sigmas=True), {}),
        ("lms_default", LMS, 10, dict(tb), {}),
        ("lms_karras_leading", LMS, 12, dict(tb, use_karras_sigmas=True,
                                             timestep_spacing="leading"), {}),
        ("lms_v_beta", LMS, 10, dict(tb, prediction_type="v_prediction", use_beta_sigmas=True), {}),
        ("lms_sample_trailing", LMS, 8, dict(tb, prediction_type="sample",
                                             timestep_spacing="trailing"), {}),
    ]


def start_sample():
    k = torch.arange(int(np.prod(SHAPE)), dtype=torch.float64)
    x = 3.0 * torch.sin(0.7 * k + 0.3) * (1.0 + (k % 5) / 4.0)
    return x.to(torch.float32).reshape(SHAPE)


def dummy_model(sample, t):
    t = torch.as_tensor(t).reshape(-1, 1, 1, 1).to(dtype=sample.dtype)
    return sample * t / (t + 1)


class NoiseTap:
    """Replaces the Euler modules' randn_tensor: records draws, or replays a given tensor."""

    def __init__(self):
        self.drawn = None
        self.replay = None
        self.originals = (euler_mod.randn_tensor, euler_a_mod.randn_tensor)

    def __call__(self, shape, **kwargs):
        if self.replay is not None:
            return self.replay.to(kwargs.get("dtype") or torch.float32)
        z = self.originals[0](shape, **kwargs)
        self.drawn = z
        return z

    def __enter__(self):
        euler_mod.randn_tensor = self
        euler_a_mod.randn_tensor = self
        return self

    def __exit__(self, *exc):
        euler_mod.randn_tensor, euler_a_mod.randn_tensor = self.originals


def up(v):
    return None if v is None else v.double()


def ref_step(cls, config, n, i, state, t, x, m, noise, step_kwargs):
    """Step i in float64 from the f32 loop's state before it."""
    s = cls(**config)
    s.set_timesteps(n)
    s.sigmas = s.sigmas.double()
    s._step_index = i
    if cls is HeunDiscreteScheduler:
        s.prev_derivative = up(state.get("prev_derivative"))
        s.dt = None if state.get("dt") is None else state["dt"].double()
        s.sample = up(state.get("sample"))
    if cls is LMSDiscreteScheduler:
        s.derivatives = [up(d) for d in state["derivatives"]]
    with NoiseTap() as tap:
        tap.replay = noise
        gen = torch.manual_seed(0)
        kwargs = dict(step_kwargs)
        if cls in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler):
            kwargs["generator"] = gen
        out = s.step(m.double(), t, x.double(), **kwargs).prev_sample
    return {"out": b64(out.float())}


def run_steps(name, cls_name, n, config, step_kwargs):
    cls = CLASSES[cls_name]
    sched = cls(**config)
    sched.set_timesteps(n)
    x = start_sample() * sched.init_noise_sigma
    gen = torch.manual_seed(0)
    steps = []
    with NoiseTap() as tap:
        for i, t in enumerate(sched.timesteps):
            y = sched.scale_model_input(x, t)
            m = dummy_model(y, t)
            state = {}
            if cls is HeunDiscreteScheduler:
                state = {"prev_derivative": sched.prev_derivative, "dt": sched.dt,
                         "sample": getattr(sched, "sample", None)}
            if cls is LMSDiscreteScheduler:
                state = {"derivatives": list(sched.derivatives)}
            coefs = None
            if cls is LMSDiscreteScheduler:
                order = min(i + 1, 4)
                coefs = [float(sched.get_lms_coefficient(order, i, j)) for j in range(order)]
            tap.drawn = None
            kwargs = dict(step_kwargs)
            if cls in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler):
                kwargs["generator"] = gen
            res = sched.step(m, t, x, **kwargs)
            noise = tap.drawn
            tap.replay = None
            ref = ref_step(cls, config, n, i, state, t, x, m, noise, step_kwargs)
            step = {"t": float(t), "x": b64(x), "m": b64(m), "out": b64(res.prev_sample),
                    "x0": b64(res.pred_original_sample), "ref": ref}
            if noise is not None:
                step["noise"] = b64(noise)
            st = {}
            if state.get("prev_derivative") is not None:
                st["prev_derivative"] = b64(state["prev_derivative"])
                st["sample"] = b64(state["sample"])
            if "derivatives" in state:
                st["derivatives"] = [b64(d) for d in state["derivatives"]]
            step["state"] = st
            if coefs is not None:
                step["coefs"] = coefs
            steps.append(step)
            x = res.prev_sample
    return {
        "name": name,
        "class": cls_name,
        "n": n,
        "config": config,
        "step_kwargs": step_kwargs,
        "timesteps": [float(v) for v in sched.timesteps],
        "sigmas": [float(v) for v in sched.sigmas.numpy().astype(np.float32)],
        "init_noise_sigma": float(sched.init_noise_sigma),
        "steps": steps,
        "final_sum": float(x.double().sum()),
    }


def beta_ppf_values():
    out = []
    for a, b in [(0.6, 0.6), (0.5, 2.0), (2.0, 3.0), (0.3, 0.9), (5.0, 1.5)]:
        for q in [0.0, 1e-12, 1e-6, 0.001, 0.05, 1.0 / 9.0, 0.25, 0.5, 2.0 / 3.0, 0.9, 0.999,
                  1.0 - 1e-9, 1.0]:
            if (a, b, q) == (0.5, 2.0, 1e-12):
                continue  # boost's root finder gives up there (scipy warns)
            out.append({"q": q, "a": a, "b": b, "x": float(scipy.stats.beta.ppf(q, a, b))})
    return out


def main():
    data = {
        "generator": "tools/export_sigma_fixtures.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "shape": list(SHAPE),
        "schedules": [run_schedule(*c) for c in schedule_cases()],
        "steps": [run_steps(*c) for c in step_cases()],
        "beta_ppf": beta_ppf_values(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(data, fh, indent=None, separators=(",", ":"))
        fh.write("\n")
    print(f"{os.path.relpath(OUT, ROOT)}: {os.path.getsize(OUT)} bytes, "
          f"{len(data['schedules'])} schedules, {len(data['steps'])} step cases")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Export diffusers scheduler fixtures for tests/schedule.rs (no Python needed at test time).

Run from the repository root:  /work/venv/bin/python tools/export_scheduler_fixtures.py
Writes tests/fixtures/scheduler/*.json:

  schedules.json      betas and alphas_cumprod (full f32 arrays) for every beta option
  timesteps.json      DDIM / DDIMInverse / DDPM timesteps for many (T, n, spacing, steps_offset),
                      plus ermongroup/ddim's "uniform" and "quad" sequences
  tables.json         per-step t, prev_t, alpha_prod_t, alpha_prod_t_prev, variance as the
                      schedulers compute them, for many option combinations and eta values
  diffusers_tests.json  diffusers' own scheduler tests (tests/schedulers/test_scheduler_ddim*.py):
                      their hard-coded expected sums/means and what this diffusers reproduces
  steps/<sampler>_<case>.json  per-step tensor outputs of DDIM, DDIMInverse and DDPM steps

Step cases. Input x = dummy_sample_deter * scale + shift (f32; dummy_sample_deter from diffusers'
SchedulerCommonTest: shape (4,3,8,8), x[b,c,h,w] = (((c*8+h)*8+w)*4+b)/768). Every step of the
loop is checked in isolation on that same x ("teacher forcing"), with the model output
m = x * t / (t + 1) (diffusers' dummy model, f32) and, where noise is used,
noise_i[k] = ((7k + 13i + 5) mod N) / N * 2 - 1 (f32, flat NCHW index k, step index i).
The reference output of each step is diffusers' step run in float64 (alphas_cumprod upcast from
its exact f32 values, inputs upcast from f32), rounded once to f32: the exact answer for these f32
inputs. diffusers' ordinary f32 step is also run, and how far it lands from that reference is
recorded, so the Rust test can show that difference is diffusers' f32 rounding, not ours.
Tensors are stored as base64 of little-endian f32 ("f32le_b64"). Each case also runs a free
(not teacher-forced) f32 diffusers loop from x and records per-step sums.
"""

import base64
import json
import math
import os
import sys

import numpy as np
import torch
import diffusers
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "scheduler")

BASE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
        "beta_schedule": "linear", "clip_sample": True}


# ---------------------------------------------------------------------------------------------
# Output helpers

class F32:
    """A list of f32 values written as shortest round-trip decimals."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float32).ravel()


def b64(arr):
    a = np.ascontiguousarray(np.asarray(arr, dtype="<f4").ravel())
    assert np.all(np.isfinite(a)), "non-finite value in a fixture tensor"
    return {"f32le_b64": base64.b64encode(a.tobytes()).decode("ascii"), "len": int(a.size)}


def dump(obj):
    if isinstance(obj, F32):
        parts = []
        for v in obj.values:
            assert np.isfinite(v)
            s = str(v)
            assert np.float32(float(s)) == v, s  # parses back to the same f32 via f64
            parts.append(s)
        return "[" + ", ".join(parts) + "]"
    if isinstance(obj, dict):
        return "{" + ", ".join(json.dumps(k) + ": " + dump(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dump(v) for v in obj) + "]"
    if isinstance(obj, (np.integer,)):
        return str(int(obj))
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        assert math.isfinite(f), obj
        return repr(f)
    return json.dumps(obj)


def write(name, obj):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(dump(obj))
        fh.write("\n")
    print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")


def meta():
    return {"generator": "tools/export_scheduler_fixtures.py",
            "diffusers": diffusers.__version__, "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# diffusers' test helpers (tests/schedulers/test_schedulers.py)

def dummy_sample_deter():
    n = 4 * 3 * 8 * 8
    s = torch.arange(n).reshape(3, 8, 8, 4) / n
    return s.permute(3, 0, 1, 2).contiguous()


def dummy_noise_deter():
    n = 4 * 3 * 8 * 8
    s = torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n
    return s.permute(3, 0, 1, 2).contiguous()


def dummy_model(sample, t):
    t = torch.as_tensor(t).reshape(-1, 1, 1, 1).to(dtype=sample.dtype)
    return sample * t / (t + 1)


def step_noise(shape, i):
    n = int(np.prod(shape))
    k = torch.arange(n)
    return (((k * 7 + 13 * i + 5) % n) / n * 2 - 1).reshape(shape)


def to_f64(s):
    """Upcast the scheduler's stored f32 ᾱ tensors so its step runs in float64."""
    for name in ("alphas_cumprod", "final_alpha_cumprod", "initial_alpha_cumprod", "one"):
        v = getattr(s, name, None)
        if isinstance(v, torch.Tensor):
            setattr(s, name, v.to(torch.float64))
    return s


# ---------------------------------------------------------------------------------------------
# schedules.json

def schedules():
    trained = [0.0001 * (1.7 ** i) for i in range(10)]
    cases = [
        ("default", {}),
        ("linear_beta_start_0.01", {"beta_start": 0.01}),
        ("no_set_alpha_to_one", {"set_alpha_to_one": False}),
        ("scaled_linear", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
        ("squaredcos_cap_v2", {"beta_schedule": "squaredcos_cap_v2"}),
        ("linear_T37", {"num_train_timesteps": 37, "beta_start": 0.001, "beta_end": 0.2}),
        ("scaled_linear_T999", {"num_train_timesteps": 999, "beta_schedule": "scaled_linear"}),
        ("squaredcos_T50", {"num_train_timesteps": 50, "beta_schedule": "squaredcos_cap_v2"}),
        ("linear_T2", {"num_train_timesteps": 2}),
        ("linear_T1", {"num_train_timesteps": 1}),
        ("trained_betas", {"num_train_timesteps": 10, "trained_betas": trained}),
        ("rescale_linear", {"rescale_betas_zero_snr": True}),
        ("rescale_scaled_linear", {"rescale_betas_zero_snr": True, "beta_schedule": "scaled_linear",
                                   "beta_start": 0.00085, "beta_end": 0.012}),
        ("rescale_squaredcos", {"rescale_betas_zero_snr": True, "beta_schedule": "squaredcos_cap_v2"}),
    ]
    out = []
    for name, delta in cases:
        cfg = dict(BASE, **delta)
        s = DDIMScheduler.from_config(cfg)
        extra = {}
        if cfg.get("rescale_betas_zero_snr"):
            # rescale_zero_terminal_snr takes torch.sqrt of f32 ᾱ. On some CPUs (here: MKL on
            # Zen 5) that sqrt is not correctly rounded (1 ulp off for ~18% of inputs), which
            # no exact-IEEE reimplementation can reproduce; record whether this machine's was.
            raw = DDIMScheduler.from_config(dict(cfg, rescale_betas_zero_snr=False))
            ac = raw.alphas_cumprod
            exact = torch.from_numpy(np.sqrt(ac.numpy().astype(np.float64)).astype(np.float32))
            extra["torch_sqrt_correctly_rounded"] = bool((ac.sqrt() == exact).all())
        out.append({"name": name, "config": cfg, **extra,
                    "betas": F32(s.betas.numpy()),
                    "alphas_cumprod": F32(s.alphas_cumprod.numpy()),
                    "final_alpha_cumprod": float(s.final_alpha_cumprod)})
    write("schedules.json", {"meta": meta(), "cases": out})


# ---------------------------------------------------------------------------------------------
# timesteps.json

def ermongroup_sequences(T, n):
    """ermongroup/ddim runners/diffusion.py, verbatim logic."""
    skip = T // n
    uniform = list(range(0, T, skip))
    quad = [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), n) ** 2)]
    return uniform, quad


def timesteps():
    ns = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 17, 20, 25, 30, 33, 37, 50, 64, 99, 100,
          101, 128, 200, 250, 333, 500, 999, 1000]
    big = 128  # above this, only offset-0 spacings (keeps the file small)
    cases = []
    for T in (1000, 999, 37, 10, 1):
        for n in [n for n in ns if n <= T]:
            for spacing, offset in (("leading", 0), ("leading", 1), ("leading", 3),
                                    ("trailing", 0), ("trailing", 1), ("linspace", 0), ("linspace", 1)):
                if n > big and offset != 0:
                    continue
                cfg = {"num_train_timesteps": T, "timestep_spacing": spacing, "steps_offset": offset}
                d = DDIMScheduler.from_config(cfg)
                d.set_timesteps(n)
                ts = [int(t) for t in d.timesteps]
                p = DDPMScheduler.from_config(cfg)
                p.set_timesteps(n)
                assert [int(t) for t in p.timesteps] == ts, "DDPM and DDIM timesteps differ"
                case = {"T": T, "n": n, "spacing": spacing, "steps_offset": offset}
                if max(ts) >= T or min(ts) < 0:
                    # diffusers accepts this, but step() would index past alphas_cumprod or, for -1
                    # (numpy's arange overshooting in trailing), wrap around to alphas_cumprod[-1].
                    case["out_of_range"] = True
                    cases.append(case)
                    continue
                case["timesteps"] = ts
                case["ddim_prev"] = [t - T // n for t in ts]
                if n <= 100:
                    case["ddpm_prev"] = [int(p.previous_timestep(t)) for t in p.timesteps]
                if spacing != "linspace" and n <= 100:
                    inv = DDIMInverseScheduler.from_config(cfg)
                    inv.set_timesteps(n)
                    case["inverse"] = [int(t) for t in inv.timesteps]
                cases.append(case)
    erm = []
    for T in (1000, 999, 37):
        for n in [n for n in ns if n <= T and n <= 200]:
            uniform, quad = ermongroup_sequences(T, n)
            erm.append({"T": T, "n": n, "uniform": uniform, "quad": quad})
    write("timesteps.json", {"meta": meta(), "diffusers": cases, "ermongroup": erm})


# ---------------------------------------------------------------------------------------------
# tables.json

def freeze_rescale(cfg):
    """A zero-terminal-SNR config with its betas spelled out as trained_betas (torch's own
    rescaled f32 values), so that step and table fixtures do not depend on torch's inexact f32
    sqrt inside rescale_zero_terminal_snr (schedules.json covers that function)."""
    if not cfg.get("rescale_betas_zero_snr"):
        return cfg
    betas = DDIMScheduler.from_config(cfg).betas
    out = dict(cfg, rescale_betas_zero_snr=False)
    out["trained_betas"] = [float(b) for b in betas]
    return out

def ddim_table_rows(cfg, n, eta):
    s = to_f64(DDIMScheduler.from_config(cfg))
    s.set_timesteps(n)
    T = s.config.num_train_timesteps
    rows = []
    for t in s.timesteps.tolist():
        prev = t - T // n
        a_t = float(s.alphas_cumprod[t])
        a_prev = float(s.alphas_cumprod[prev]) if prev >= 0 else float(s.final_alpha_cumprod)
        var = float(s._get_variance(t, prev))
        rows.append({"t": t, "prev_t": prev, "alpha_prod_t": a_t, "alpha_prod_t_prev": a_prev,
                     "variance": var, "sigma": eta * var ** 0.5})
    return rows


def ddpm_table_rows(cfg, n):
    s = to_f64(DDPMScheduler.from_config(cfg))
    s.set_timesteps(n)
    rows = []
    for t in s.timesteps.tolist():
        prev = int(s.previous_timestep(t))
        a_t = float(s.alphas_cumprod[t])
        a_prev = float(s.alphas_cumprod[prev]) if prev >= 0 else 1.0
        rows.append({"t": t, "prev_t": prev, "alpha_prod_t": a_t, "alpha_prod_t_prev": a_prev,
                     "variance": float(s._get_variance(t))})
    return rows


def tables():
    ddim = []
    spacing_cases = [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]
    beta_cases = [{}, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                  {"beta_schedule": "squaredcos_cap_v2"}, {"beta_start": 0.01},
                  {"num_train_timesteps": 37, "beta_start": 0.001, "beta_end": 0.2}]
    for bi, bdelta in enumerate(beta_cases):
        for spacing, offset in spacing_cases:
            for n in (3, 7, 10, 20):
                T = bdelta.get("num_train_timesteps", 1000)
                if n > T:
                    continue
                for eta in (0.0, 0.5, 1.0):
                    for alpha1 in (True, False):
                        # thin the product: every option is still covered in several combinations
                        if (bi + n + int(eta * 2) + int(alpha1)) % 2 and n != 10:
                            continue
                        cfg = dict(BASE, **bdelta, timestep_spacing=spacing, steps_offset=offset,
                                   set_alpha_to_one=alpha1)
                        ddim.append({"config": cfg, "n": n, "eta": eta,
                                     "rows": ddim_table_rows(cfg, n, eta)})
    # zero terminal SNR: ᾱ[T-1] = 0; v_prediction so the table is usable at t = 999
    for spacing in ("leading", "trailing", "linspace"):
        cfg = freeze_rescale(dict(BASE, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                  timestep_spacing=spacing))
        ddim.append({"config": cfg, "n": 10, "eta": 1.0, "rows": ddim_table_rows(cfg, 10, 1.0)})
    ddpm = []
    for variance_type in ("fixed_small", "fixed_small_log", "fixed_large"):
        for spacing, offset in spacing_cases:
            for n in (7, 10, 25):
                cfg = dict(BASE, variance_type=variance_type, timestep_spacing=spacing,
                           steps_offset=offset)
                ddpm.append({"config": cfg, "n": n, "rows": ddpm_table_rows(cfg, n)})
    cfg = dict(BASE, variance_type="fixed_small")
    ddpm.append({"config": cfg, "n": 200, "rows": ddpm_table_rows(cfg, 200)})
    write("tables.json", {"meta": meta(), "ddim": ddim, "ddpm": ddpm})


# ---------------------------------------------------------------------------------------------
# steps/*.json

def run_step(kind, s, m, t, x, i, eta, use_clipped, noise):
    if kind == "ddim":
        out = s.step(m, t, x, eta=eta, use_clipped_model_output=use_clipped,
                     variance_noise=noise if eta > 0 else None)
    elif kind == "inverse":
        out = s.step(m, t, x)
    else:
        # DDPMScheduler.step draws its own noise; hand it ours instead.
        ddpm_module.randn_tensor = lambda shape, generator=None, device=None, dtype=None: noise.to(dtype)
        out = s.step(m, t, x)
    return out.prev_sample, out.pred_original_sample


def make_scheduler(kind, cfg):
    cls = {"ddim": DDIMScheduler, "inverse": DDIMInverseScheduler, "ddpm": DDPMScheduler}[kind]
    return cls.from_config(cfg)


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def step_case(kind, name, delta, n=3, scale=1.0, shift=0.0, eta=0.0, use_clipped=False):
    cfg = freeze_rescale(dict(BASE, **delta))
    x = dummy_sample_deter() * scale + shift
    s64 = to_f64(make_scheduler(kind, cfg))
    s32 = make_scheduler(kind, cfg)
    s64.set_timesteps(n)
    s32.set_timesteps(n)
    timesteps = [int(t) for t in s32.timesteps]
    uses_noise = (kind == "ddim" and eta > 0) or kind == "ddpm"
    steps = []
    for i, t in enumerate(s32.timesteps):
        m = dummy_model(x, t)
        noise = step_noise(x.shape, i)
        prev64, x064 = run_step(kind, s64, m.double(), t, x.double(), i, eta, use_clipped,
                                noise.double())
        prev32, x032 = run_step(kind, s32, m, t, x, i, eta, use_clipped, noise)
        prev_ref = prev64.numpy().astype(np.float32)
        x0_ref = x064.numpy().astype(np.float32)
        steps.append({
            "t": int(t),
            "prev_sample": b64(prev_ref),
            "pred_original_sample": b64(x0_ref),
            "diffusers_f32_rel_l2": {"prev_sample": rel_l2(prev32.numpy(), prev64.numpy()),
                                     "pred_original_sample": rel_l2(x032.numpy(), x064.numpy())},
        })
    # free-running f32 loop, as diffusers' own full_loop tests do
    s = make_scheduler(kind, cfg)
    s.set_timesteps(n)
    xs = x.clone()
    free = []
    for i, t in enumerate(s.timesteps):
        prev, x0 = run_step(kind, s, dummy_model(xs, t), t, xs, i, eta, use_clipped,
                            step_noise(x.shape, i))
        free.append({"t": int(t), "prev_sum": float(prev.double().sum()),
                     "prev_sum_sq": float((prev.double() ** 2).sum()),
                     "x0_sum": float(x0.double().sum())})
        xs = prev
    write(f"steps/{kind}_{name}.json", {
        "meta": meta(), "sampler": kind, "name": name, "config": cfg, "n": n,
        "eta": eta, "use_clipped_model_output": use_clipped, "uses_noise": uses_noise,
        "input": {"scale": scale, "shift": shift, "shape": list(x.shape),
                  "sum": float(x.double().sum())},
        "timesteps": timesteps, "steps": steps,
        "free_run": {"steps": free, "final_prev_sample": b64(xs.numpy())},
    })


def step_cases():
    W = {"scale": 4.0, "shift": -2.0}  # x in [-2, 2): x0 leaves [-1, 1], so clipping matters
    trained = [0.0001 * (1.5 ** i) for i in range(20)]
    ddim = [
        ("default", {}, {}),
        ("default_wide", {}, W),
        ("no_clip", {"clip_sample": False}, W),
        ("clip_range_0.5", {"clip_sample_range": 0.5}, W),
        ("sample_prediction", {"prediction_type": "sample"}, W),
        ("v_prediction", {"prediction_type": "v_prediction"}, W),
        ("eta_0.5", {}, dict(W, eta=0.5)),
        ("eta_1", {}, {"eta": 1.0}),
        ("eta_1_clipped_output", {}, dict(W, eta=1.0, use_clipped=True)),
        ("clipped_output", {}, dict(W, use_clipped=True)),
        ("threshold", {"thresholding": True}, W),
        ("threshold_0.9_max_1.5", {"thresholding": True, "dynamic_thresholding_ratio": 0.9,
                                   "sample_max_value": 1.5}, W),
        ("threshold_v_0.6_max_3", {"thresholding": True, "dynamic_thresholding_ratio": 0.6,
                                   "sample_max_value": 3.0, "prediction_type": "v_prediction"},
         dict(W, scale=8.0, shift=-4.0)),
        ("threshold_clipped_output_eta_1", {"thresholding": True, "sample_max_value": 2.0},
         dict(W, eta=1.0, use_clipped=True)),
        ("no_set_alpha_to_one", {"set_alpha_to_one": False}, W),
        ("trailing_n3", {"timestep_spacing": "trailing"}, W),
        ("linspace_n4", {"timestep_spacing": "linspace"}, dict(W, n=4)),
        ("leading_offset_1_n5", {"steps_offset": 1}, dict(W, n=5)),
        ("scaled_linear_eta_0.3", {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                   "beta_end": 0.012}, dict(W, eta=0.3)),
        ("squaredcos_sample_eta_0.7", {"beta_schedule": "squaredcos_cap_v2",
                                       "prediction_type": "sample"}, dict(W, eta=0.7)),
        ("zero_snr_v_trailing_eta_0.5", {"rescale_betas_zero_snr": True,
                                         "prediction_type": "v_prediction",
                                         "timestep_spacing": "trailing"}, dict(W, eta=0.5)),
        ("T500", {"num_train_timesteps": 500, "beta_start": 0.001, "beta_end": 0.03}, dict(W, n=4)),
        ("trained_betas_sample_eta_0.2", {"num_train_timesteps": 20, "trained_betas": trained,
                                          "prediction_type": "sample", "clip_sample": False},
         dict(W, eta=0.2, n=4)),
        ("sample_threshold_no_alpha1_linspace", {"prediction_type": "sample", "thresholding": True,
                                                 "sample_max_value": 1.8, "set_alpha_to_one": False,
                                                 "timestep_spacing": "linspace"}, W),
    ]
    for name, delta, opts in ddim:
        step_case("ddim", name, delta, **opts)
    inverse = [
        ("default", {}, {}),
        ("default_wide", {}, W),
        ("no_clip", {"clip_sample": False}, W),
        ("v_prediction", {"prediction_type": "v_prediction"}, W),
        # with set_alpha_to_one the first step starts at ᾱ = 1, where sample prediction divides by 0
        ("sample_prediction_clip_0.7", {"prediction_type": "sample", "clip_sample_range": 0.7,
                                        "set_alpha_to_one": False}, W),
        ("no_set_alpha_to_one", {"set_alpha_to_one": False}, W),
        ("trailing_n4", {"timestep_spacing": "trailing"}, dict(W, n=4)),
        ("leading_offset_1", {"steps_offset": 1}, W),
        ("thresholding_ignored", {"thresholding": True, "clip_sample": False}, W),
    ]
    for name, delta, opts in inverse:
        step_case("inverse", name, delta, **opts)
    ddpm = [
        ("fixed_small", {"variance_type": "fixed_small"}, W),
        ("fixed_small_log", {"variance_type": "fixed_small_log"}, W),
        ("fixed_large", {"variance_type": "fixed_large"}, W),
        ("no_clip", {"clip_sample": False}, W),
        ("v_prediction", {"prediction_type": "v_prediction"}, W),
        ("sample_prediction", {"prediction_type": "sample", "variance_type": "fixed_large"}, W),
        ("threshold", {"thresholding": True, "sample_max_value": 1.5}, W),
        ("trailing_n3", {"timestep_spacing": "trailing"}, W),
        ("linspace_n4", {"timestep_spacing": "linspace"}, dict(W, n=4)),
        ("leading_offset_1", {"steps_offset": 1}, W),
    ]
    for name, delta, opts in ddpm:
        step_case("ddpm", name, delta, **opts)


# ---------------------------------------------------------------------------------------------
# diffusers_tests.json: tests/schedulers/test_scheduler_ddim.py and test_scheduler_ddim_inverse.py
# (expected numbers copied from those files; the assertions there use sum ±1e-2, mean ±1e-3)

DDIM_EXPECTED = [
    ("test_full_loop_no_noise", {}, 172.0067, 0.223967),
    ("test_full_loop_with_v_prediction", {"prediction_type": "v_prediction"}, 52.5302, 0.0684),
    ("test_full_loop_with_set_alpha_to_one", {"set_alpha_to_one": True, "beta_start": 0.01},
     149.8295, 0.1951),
    ("test_full_loop_with_no_set_alpha_to_one", {"set_alpha_to_one": False, "beta_start": 0.01},
     149.0784, 0.1941),
]
INVERSE_EXPECTED = [
    ("test_full_loop_no_noise", {}, 671.6816, 0.8746),
    ("test_full_loop_with_v_prediction", {"prediction_type": "v_prediction"}, 1394.2185, 1.8154),
    ("test_full_loop_with_set_alpha_to_one", {"set_alpha_to_one": True, "beta_start": 0.01},
     539.9622, 0.7031),
    ("test_full_loop_with_no_set_alpha_to_one", {"set_alpha_to_one": False, "beta_start": 0.01},
     542.6722, 0.7066),
]


def full_loop(cls, cfg, start=None, t_start=0, eta=None):
    s = cls(**cfg)
    s.set_timesteps(10)
    sample = dummy_sample_deter() if start is None else start
    for t in s.timesteps[t_start:]:
        residual = dummy_model(sample, t)
        sample = (s.step(residual, t, sample, eta) if eta is not None else s.step(residual, t, sample)).prev_sample
    return sample


def diffusers_tests():
    loops = []
    for kind, cls, table in (("ddim", DDIMScheduler, DDIM_EXPECTED),
                             ("inverse", DDIMInverseScheduler, INVERSE_EXPECTED)):
        for name, delta, exp_sum, exp_mean in table:
            cfg = dict(BASE, **delta)
            out = full_loop(cls, cfg, eta=0.0 if kind == "ddim" else None)
            loops.append({"sampler": kind, "test": name, "config": cfg, "n": 10, "t_start": 0,
                          "add_noise": False, "expected_sum": exp_sum, "expected_mean": exp_mean,
                          "reproduced_sum": float(out.double().abs().sum()),
                          "reproduced_mean": float(out.double().abs().mean()),
                          "final_sample": b64(out.numpy())})
    # test_full_loop_with_noise: start from add_noise(sample, noise, timesteps[8]) and run [100, 0]
    s = DDIMScheduler(**BASE)
    s.set_timesteps(10)
    t_start = 8
    noisy = s.add_noise(dummy_sample_deter(), dummy_noise_deter(), s.timesteps[t_start:][:1])
    out = full_loop(DDIMScheduler, BASE, start=noisy, t_start=t_start, eta=0.0)
    loops.append({"sampler": "ddim", "test": "test_full_loop_with_noise", "config": BASE, "n": 10,
                  "t_start": t_start, "add_noise": True, "expected_sum": 354.5418,
                  "expected_mean": 0.4616, "reproduced_sum": float(out.double().abs().sum()),
                  "reproduced_mean": float(out.double().abs().mean()),
                  "final_sample": b64(out.numpy())})
    s = DDIMScheduler(**BASE)
    s.set_timesteps(50)
    variance = [{"t": t, "prev_t": p, "expected": e, "reproduced": float(s._get_variance(t, p))}
                for (t, p, e) in ((0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460),
                                  (487, 486, 0.00979), (999, 998, 0.02))]
    s = DDIMScheduler(steps_offset=1)
    s.set_timesteps(5)
    steps_offset = {"config": {"steps_offset": 1}, "n": 5, "expected": [801, 601, 401, 201, 1],
                    "reproduced": [int(t) for t in s.timesteps]}
    write("diffusers_tests.json", {"meta": meta(), "full_loops": loops,
                                   "test_variance": variance, "test_steps_offset": steps_offset})


if __name__ == "__main__":
    torch.set_num_threads(1)
    what = sys.argv[1:] or ["schedules", "timesteps", "tables", "steps", "diffusers_tests"]
    for w in what:
        {"schedules": schedules, "timesteps": timesteps, "tables": tables, "steps": step_cases,
         "diffusers_tests": diffusers_tests}[w]()

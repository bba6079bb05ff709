"""Train the bundled MNIST DDPM (issue 6): a ~1.1 M-parameter diffusers UNet2DModel.

Runs on the CPU (1 thread, bf16 autocast; weights, EMA and optimizer stay f32),
checkpoints every few minutes with an atomic write,
and resumes exactly (model, EMA, optimizer, LR schedule, RNG, step, loss log).

Start (or resume: the same command picks up the checkpoint if it exists). The
bundled model was trained in two phases; phase 1 (steps 0-3534, restarted from its
checkpoint with the cooldown flags changed before step 2500, where they first act):

    mkdir -p tools/runs
    setsid nohup nice -n 10 /work/venv/bin/python tools/train_mnist.py \
        --max-steps 40000 --stop-at 06:40 --cooldown-start 2500 --cooldown-steps 600 \
        > tools/runs/train.log 2>&1 < /dev/null &

Phase 2 (steps 3534-9228, from the phase-1 checkpoint; 2 threads on an idle machine
run at 0.70 s/step, 1 thread at 1.17 s/step):

    setsid nohup /work/venv/bin/python tools/train_mnist.py --threads 2 \
        --max-steps 40000 --stop-at 08:40 --cooldown-start 2500 --cooldown-steps 600 \
        --rewarm-at 3534 --rewarm-steps 200 --second-cooldown-start 7800 \
        --second-cooldown-steps 1500 >> tools/runs/train.log 2>&1 < /dev/null &

Rerunning the phase-2 command with a later --stop-at continues at the 5e-5 floor (the
LR is a pure function of the step and these flags, so the schedule resumes exactly).

`--stop-at HH:MM` (UTC) ends the run at that wall-clock time (checkpoint + export);
rerunning the command with a later time continues from the checkpoint. The
checkpoint lives at weights/mnist/checkpoint/train_state.pt (tracked by git, so a
later session can resume from a fresh clone). SIGTERM/SIGINT also save a checkpoint.

Export only (EMA weights -> weights/mnist in diffusers pipeline layout):

    /work/venv/bin/python tools/train_mnist.py --export-only
"""

import argparse
import datetime as dt
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_samples  # noqa: E402
import mnist  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CKPT = os.path.join(ROOT, "weights", "mnist", "checkpoint", "train_state.pt")
DEFAULT_EXPORT = os.path.join(ROOT, "weights", "mnist")
DEFAULT_RUN_DIR = os.path.join(ROOT, "tools", "runs", "mnist")
EVAL_SEED = 1234  # the fixed seeds of the in-training evaluation (not those of the final 1,000)

# The architecture: only block types the Rust engine implements.
UNET_CONFIG = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2D",
    norm_num_groups=8,
    attention_head_dim=None,  # one head per attention layer, dim = channels
    time_embedding_type="positional",
    act_fn="silu",
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    clip_sample=True,
    variance_type="fixed_small",
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CKPT)
    p.add_argument("--export-dir", default=DEFAULT_EXPORT)
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="loss CSV and logs (git-ignored)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--cooldown-start", type=int, default=None, help="step at which the LR starts to decay")
    p.add_argument("--cooldown-steps", type=int, default=1000)
    p.add_argument("--cooldown-floor", type=float, default=0.05)
    p.add_argument(
        "--rewarm-at",
        type=int,
        default=None,
        help="second phase: from this step ramp the LR back up over --rewarm-steps, then "
        "hold it until --second-cooldown-start (continues a run that had cooled down)",
    )
    p.add_argument("--rewarm-steps", type=int, default=200)
    p.add_argument("--second-cooldown-start", type=int, default=None)
    p.add_argument("--second-cooldown-steps", type=int, default=2000)
    p.add_argument(
        "--third-rewarm-at",
        type=int,
        default=None,
        help="third phase (issue 17), same shape as the second: re-warm from the floor at this step",
    )
    p.add_argument("--third-cooldown-start", type=int, default=None)
    p.add_argument("--third-cooldown-steps", type=int, default=3000)
    p.add_argument(
        "--fourth-rewarm-at",
        type=int,
        default=None,
        help="fourth phase (issue 17): re-warm from the floor at this step to --fourth-lr, then cool "
        "down from --fourth-cooldown-start (a lower peak and a cooldown-heavy schedule)",
    )
    p.add_argument("--fourth-lr", type=float, default=4e-4)
    p.add_argument("--fourth-rewarm-steps", type=int, default=100)
    p.add_argument("--fourth-cooldown-start", type=int, default=None)
    p.add_argument("--fourth-cooldown-steps", type=int, default=3000)
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="every N steps (and at the end) sample --eval-num DDIM-50 digits from the EMA with fixed "
        "seeds, score the confident share and keep the best EMA (0: never)",
    )
    p.add_argument("--eval-num", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--max-steps", type=int, default=40000)
    p.add_argument("--stop-at", default=None, help="UTC HH:MM at which to checkpoint, export and stop")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 is faster than 2 when other jobs share the 2 cores (OpenMP barriers stall)",
    )
    p.add_argument(
        "--no-bf16",
        dest="bf16",
        action="store_false",
        help="run the forward pass in f32 (default: bf16 autocast, ~2x faster on this CPU; weights stay f32)",
    )
    p.add_argument("--export-only", action="store_true")
    return p.parse_args()


def lr_at(step, args):
    """Linear warmup, constant, then (if --cooldown-start is set) a linear cooldown to
    --cooldown-floor x lr over --cooldown-steps; the run can stop at any step.
    With --rewarm-at, a second phase of the same shape starts at that step from the
    floor, so a cooled-down run can be continued and the LR stays a pure function of
    the step (exact resume)."""
    if args.fourth_rewarm_at is not None and step >= args.fourth_rewarm_at:
        # From the previous phase's floor (cooldown_floor x lr) up to --fourth-lr; the floor of
        # this phase's own cooldown is cooldown_floor x --fourth-lr.
        ramp = min(1.0, (step - args.fourth_rewarm_at + 1) / args.fourth_rewarm_steps)
        start = args.cooldown_floor * args.lr
        peak = start + (args.fourth_lr - start) * ramp
        return peak * _cooldown(step, args.fourth_cooldown_start, args.fourth_cooldown_steps, args)
    if args.third_rewarm_at is not None and step >= args.third_rewarm_at:
        ramp = min(1.0, (step - args.third_rewarm_at + 1) / args.rewarm_steps)
        scale = args.cooldown_floor + (1.0 - args.cooldown_floor) * ramp
        return args.lr * scale * _cooldown(step, args.third_cooldown_start, args.third_cooldown_steps, args)
    if args.rewarm_at is not None and step >= args.rewarm_at:
        ramp = min(1.0, (step - args.rewarm_at + 1) / args.rewarm_steps)
        scale = args.cooldown_floor + (1.0 - args.cooldown_floor) * ramp
        return args.lr * scale * _cooldown(step, args.second_cooldown_start, args.second_cooldown_steps, args)
    lr = args.lr * min(1.0, (step + 1) / args.warmup_steps)
    return lr * _cooldown(step, args.cooldown_start, args.cooldown_steps, args)


def _cooldown(step, start, length, args):
    if start is None or step < start:
        return 1.0
    return max(args.cooldown_floor, 1.0 - (step - start) / length)


def ema_decay_at(step, args):
    """EMA warmup so early averages are not dominated by the random initialisation."""
    return min(args.ema_decay, (1.0 + step) / (10.0 + step))


def stop_deadline(stop_at):
    if stop_at is None:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(v) for v in stop_at.split(":"))
    deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if deadline <= now:
        deadline += dt.timedelta(days=1)
    return deadline.timestamp()


def atomic_torch_save(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, args):
        self.args = args
        torch.manual_seed(args.seed)
        self.model = UNet2DModel(**UNET_CONFIG)
        self.ema = UNet2DModel(**UNET_CONFIG)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.ema.eval()
        self.scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay
        )
        self.rng = torch.Generator().manual_seed(args.seed)
        self.step = 0
        self.wall_seconds = 0.0  # training wall time summed over all runs
        self.loss_log = []  # (step, mean loss over the logging window, wall seconds)
        self.perm = None
        self.perm_pos = 0
        self.evals = []  # (step, confident, fd) of the in-training evaluations
        self.best = None  # (step, confident) of the best evaluated EMA
        self.best_ema = None  # its state dict
        self._scorer = None
        images, _ = mnist.load_split("train")
        self.data = torch.from_numpy(mnist.to_model_range(images))

    def param_count(self):
        return sum(p.numel() for p in self.model.parameters())

    def state(self):
        return {
            "unet_config": UNET_CONFIG,
            "scheduler_config": SCHEDULER_CONFIG,
            "args": vars(self.args),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "wall_seconds": self.wall_seconds,
            "loss_log": self.loss_log,
            "perm": self.perm,
            "perm_pos": self.perm_pos,
            "evals": self.evals,
            "best": self.best,
            "best_ema": self.best_ema,
        }

    def load(self, path):
        s = torch.load(path, map_location="cpu", weights_only=False)
        if s["unet_config"] != UNET_CONFIG:
            raise ValueError(f"{path}: checkpoint UNet config differs from this script's UNET_CONFIG")
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.rng.set_state(s["rng"])
        torch.set_rng_state(s["torch_rng"])
        self.step = s["step"]
        self.wall_seconds = s["wall_seconds"]
        self.loss_log = s["loss_log"]
        self.perm = s["perm"]
        self.perm_pos = s["perm_pos"]
        self.evals = s.get("evals", [])
        self.best = s.get("best")
        self.best_ema = s.get("best_ema")

    def save(self):
        atomic_torch_save(self.state(), self.args.checkpoint)

    def next_batch(self):
        bs = self.args.batch_size
        if self.perm is None or self.perm_pos + bs > len(self.perm):
            self.perm = torch.randperm(self.data.shape[0], generator=self.rng)
            self.perm_pos = 0
        idx = self.perm[self.perm_pos : self.perm_pos + bs]
        self.perm_pos += bs
        return self.data[idx]

    def train_step(self):
        x0 = self.next_batch()
        noise = torch.randn(x0.shape, generator=self.rng)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=self.rng)
        xt = self.scheduler.add_noise(x0, noise, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.args.bf16):
            pred = self.model(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.optimizer.step()
        decay = ema_decay_at(self.step, self.args)
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def evaluate(self):
        """Confident share of --eval-num DDIM-50 (eta 0) samples of the EMA, always from the
        same seeds so checkpoints are compared on the same noise; keeps the best EMA."""
        if self._scorer is None:
            classifier = eval_samples.load_classifier()
            self._scorer = (classifier, eval_samples.reference_stats(classifier))
        classifier, ref = self._scorer
        t0 = time.time()
        pipe = DDIMPipeline(unet=self.ema, scheduler=DDIMScheduler.from_config(self.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        n = self.args.eval_num
        x = eval_samples.generate(pipe, "ddim", n, n, EVAL_SEED, steps=50, eta=0.0)
        res = eval_samples.score(classifier, x, ref)
        self.evals.append((self.step, res["confident"], res["fd"]))
        if self.best is None or res["confident"] > self.best[1]:
            self.best = (self.step, res["confident"])
            self.best_ema = {k: v.clone() for k, v in self.ema.state_dict().items()}
        print(
            f"eval at step {self.step}: {100 * res['confident']:.1f} % confident, FD {res['fd']:.1f} "
            f"(n {n}, {time.time() - t0:.0f} s; best {100 * self.best[1]:.1f} % at step {self.best[0]})",
            flush=True,
        )

    def export(self):
        """EMA weights (f32) in diffusers pipeline layout, loadable by DDIMPipeline.from_pretrained."""
        out = self.args.export_dir
        unet, ema_step = self.ema, self.step
        if self.best_ema is not None:
            unet = UNet2DModel(**UNET_CONFIG)
            unet.load_state_dict(self.best_ema)
            ema_step = self.best[0]
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SCHEDULER_CONFIG))
        pipe.save_pretrained(out, safe_serialization=True)
        with open(os.path.join(out, "training_summary.json"), "w") as f:
            last = self.loss_log[-1] if self.loss_log else None
            json.dump(
                {
                    "step": self.step,
                    "exported_ema_step": ema_step,
                    "evals": [
                        {"step": st, "confident": round(c, 4), "fd": round(fd, 2)} for st, c, fd in self.evals
                    ],
                    "wall_seconds": round(self.wall_seconds, 1),
                    "batch_size": self.args.batch_size,
                    "parameters": self.param_count(),
                    "last_logged_loss": last[1] if last else None,
                    "hyperparameters": {
                        k: getattr(self.args, k)
                        for k in (
                            "lr",
                            "warmup_steps",
                            "cooldown_start",
                            "cooldown_steps",
                            "cooldown_floor",
                            "rewarm_at",
                            "rewarm_steps",
                            "second_cooldown_start",
                            "second_cooldown_steps",
                            "third_rewarm_at",
                            "third_cooldown_start",
                            "third_cooldown_steps",
                            "fourth_rewarm_at",
                            "fourth_lr",
                            "fourth_rewarm_steps",
                            "fourth_cooldown_start",
                            "fourth_cooldown_steps",
                            "weight_decay",
                            "grad_clip",
                            "ema_decay",
                            "seed",
                            "bf16",
                        )
                    },
                },
                f,
                indent=2,
            )
        np.savetxt(
            os.path.join(self.args.run_dir, "loss.csv"),
            np.array(self.loss_log, dtype=np.float64).reshape(-1, 3),
            delimiter=",",
            header="step,loss,wall_seconds",
            comments="",
        )
        print(f"exported the EMA of step {ema_step} to {out}", flush=True)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.run_dir, exist_ok=True)
    trainer = Trainer(args)
    if os.path.exists(args.checkpoint):
        trainer.load(args.checkpoint)
        print(f"resumed from {args.checkpoint} at step {trainer.step}", flush=True)
    else:
        print(f"fresh start, {trainer.param_count()} parameters", flush=True)
    if args.export_only:
        trainer.export()
        return
    if args.eval_every and not trainer.evals:
        trainer.evaluate()  # the starting point, so a phase that makes things worse is not exported

    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append("SIGINT"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # keep training when the launching shell goes away
    deadline = stop_deadline(args.stop_at)

    last_ckpt = time.time()
    window, t_window = [], time.time()
    while trainer.step < args.max_steps and not stop_requested:
        if deadline is not None and time.time() >= deadline:
            print("reached --stop-at", flush=True)
            break
        t0 = time.time()
        window.append(trainer.train_step())
        trainer.wall_seconds += time.time() - t0
        if trainer.step % args.log_every == 0:
            mean = float(np.mean(window))
            trainer.loss_log.append((trainer.step, mean, trainer.wall_seconds))
            per_step = (time.time() - t_window) / len(window)
            print(
                f"{dt.datetime.now(dt.timezone.utc):%H:%M:%S} step {trainer.step} loss {mean:.5f} "
                f"lr {lr_at(trainer.step - 1, args):.2e} {per_step:.3f}s/step",
                flush=True,
            )
            window, t_window = [], time.time()
        if args.eval_every and trainer.step % args.eval_every == 0:
            trainer.evaluate()
        if time.time() - last_ckpt >= args.checkpoint_minutes * 60:
            trainer.save()
            last_ckpt = time.time()
            print(f"checkpoint at step {trainer.step}", flush=True)
    if stop_requested:
        print(f"stopping on {stop_requested[0]}", flush=True)
    if args.eval_every and (not trainer.evals or trainer.evals[-1][0] != trainer.step):
        trainer.evaluate()
    trainer.save()
    print(f"checkpoint at step {trainer.step}", flush=True)
    trainer.export()


if __name__ == "__main__":
    main()

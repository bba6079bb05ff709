"""Fine-tune the bundled MNIST DDPM into a class-conditional model with a null label (issue 29).

The unconditional model (weights/mnist, 1.1 M parameters) gains a class embedding of 11 rows:
the digits 0-9 and a null label 10. Training drops the label to the null one with probability
--label-dropout, so one network is both conditional and unconditional, which classifier-free
guidance needs: eps = eps(null) + w * (eps(d) - eps(null)).

The class embedding starts at zero, so at step 0 the model equals the shipped unconditional one
for every label; everything else starts from the shipped weights (the EMA of step 18,000).
The optimizer starts fresh (AdamW state of a different parameter set).

Start or resume (the same command picks up the checkpoint if it exists; commit it as you go):

    setsid nohup /work/venv/bin/python tools/train_mnist_cond.py --threads 2 \
        --max-steps 12000 --cooldown-start 9000 --stop-at HH:MM --eval-every 1000 \
        > tools/runs/train_cond.log 2>&1 < /dev/null &

`--stop-at HH:MM` (UTC) checkpoints, exports and stops; SIGTERM/SIGINT do the same.
The export writes weights/mnist in diffusers pipeline layout (the same place as today, so the
bundled model becomes the conditional one) with `"_null_class_label": 10` in unet/config.json:
diffusers ignores keys that start with "_", and `ddim` reads it as the model's null label.

Export only:   /work/venv/bin/python tools/train_mnist_cond.py --export-only
Sweep only:    /work/venv/bin/python tools/train_mnist_cond.py --sweep 1,1.5,2,3,4 --sweep-per-class 20
"""

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_samples  # noqa: E402
import mnist  # noqa: E402
from train_mnist import SCHEDULER_CONFIG, UNET_CONFIG, atomic_torch_save, stop_deadline  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_WEIGHTS = os.path.join(ROOT, "weights", "mnist", "unet", "diffusion_pytorch_model.safetensors")
DEFAULT_CKPT = os.path.join(ROOT, "weights", "mnist", "checkpoint_cond", "train_state.pt")
DEFAULT_EXPORT = os.path.join(ROOT, "weights", "mnist")
DEFAULT_RUN_DIR = os.path.join(ROOT, "tools", "runs", "mnist_cond")
NULL_CLASS = 10
COND_CONFIG = dict(UNET_CONFIG, num_class_embeds=NULL_CLASS + 1)
EVAL_SEED = 4321


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CKPT)
    p.add_argument("--export-dir", default=DEFAULT_EXPORT)
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--cooldown-start", type=int, default=None)
    p.add_argument("--cooldown-floor", type=float, default=0.05)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=12000)
    p.add_argument("--stop-at", default=None, help="UTC HH:MM at which to checkpoint, export and stop")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate the EMA every N steps (0: never)")
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--eval-guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--sweep", default=None, help="comma-separated guidance scales to evaluate, then exit")
    p.add_argument("--sweep-per-class", type=int, default=100)
    p.add_argument("--sweep-out", default=os.path.join(ROOT, "weights", "mnist", "guidance_sweep.json"))
    return p.parse_args()


def lr_at(step, args):
    """Linear warm-up, constant, then a linear cooldown to the floor ending at --max-steps."""
    lr = args.lr * min(1.0, (step + 1) / args.warmup_steps)
    if args.cooldown_start is None or step < args.cooldown_start:
        return lr
    length = max(1, args.max_steps - args.cooldown_start)
    return lr * max(args.cooldown_floor, 1.0 - (step - args.cooldown_start) / length)


def conditional_from_base():
    """The conditional UNet with the shipped weights and a zero class embedding."""
    unet = UNet2DModel(**COND_CONFIG)
    missing, unexpected = unet.load_state_dict(load_file(BASE_WEIGHTS), strict=False)
    if unexpected or missing != ["class_embedding.weight"]:
        raise ValueError(f"base weights do not fit: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        unet.class_embedding.weight.zero_()
    return unet


@torch.no_grad()
def guided_sample(unet, labels, guidance, steps, generator, eta=0.0):
    """DDIM with classifier-free guidance as diffusers' text pipelines write it: the null half
    first, guide the raw model output, then step. Returns samples in [-1, 1]."""
    sched = DDIMScheduler.from_config(DDPMScheduler(**SCHEDULER_CONFIG).config)
    sched.set_timesteps(steps)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    x = torch.randn((len(labels), 1, 32, 32), generator=generator)
    null = torch.full_like(labels, NULL_CLASS)
    for t in sched.timesteps:
        if guidance == 1.0:
            eps = unet(x, t, class_labels=labels).sample
        else:
            out = unet(torch.cat([x, x]), t, class_labels=torch.cat([null, labels])).sample
            uncond, cond = out.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        x = sched.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x.clamp(-1, 1)


def evaluate(unet, scorer, per_class, guidance, seed, steps=50, batch=100):
    """Per digit d: per_class guided samples of d, the share classified as d with confidence
    >= 0.9; plus per_class*10 unguided null-label samples scored as the unconditional model is."""
    classifier, ref = scorer
    labels = np.repeat(np.arange(10), per_class)
    xs = []
    for b, start in enumerate(range(0, len(labels), batch)):
        gen = torch.Generator().manual_seed(seed + b)
        xs.append(guided_sample(unet, labels[start : start + batch], guidance, steps, gen))
    x = torch.cat(xs)
    probs, _ = eval_samples.classify(classifier, x)
    hit = (probs.argmax(1) == labels) & (probs.max(1) >= eval_samples.CONFIDENCE)
    per_digit = [float(hit[labels == d].mean()) for d in range(10)]
    cond = eval_samples.score(classifier, x, ref)
    xs = []
    for b, start in enumerate(range(0, len(labels), batch)):
        gen = torch.Generator().manual_seed(seed + 1000 + b)
        n = min(batch, len(labels) - start)
        xs.append(guided_sample(unet, [NULL_CLASS] * n, 1.0, steps, gen))
    uncond = eval_samples.score(classifier, torch.cat(xs), ref)
    return {
        "guidance": guidance,
        "per_class": per_class,
        "class_hit": float(hit.mean()),
        "class_hit_per_digit": [round(v, 4) for v in per_digit],
        "class_fd": round(cond["fd"], 3),
        "uncond_confident": round(uncond["confident"], 4),
        "uncond_fd": round(uncond["fd"], 3),
    }


class Trainer:
    def __init__(self, args):
        self.args = args
        torch.manual_seed(args.seed)
        self.model = conditional_from_base()
        self.ema = conditional_from_base()
        self.ema.requires_grad_(False)
        self.ema.eval()
        self.scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.0)
        self.rng = torch.Generator().manual_seed(args.seed)
        self.step, self.wall_seconds = 0, 0.0
        self.loss_log, self.evals = [], []
        self.perm, self.perm_pos = None, 0
        images, labels = mnist.load_split("train")
        self.data = torch.from_numpy(mnist.to_model_range(images))
        self.labels = torch.from_numpy(labels)
        self._scorer = None

    def state(self):
        keys = ("step", "wall_seconds", "loss_log", "evals", "perm", "perm_pos")
        s = {k: getattr(self, k) for k in keys}
        s.update(
            unet_config=COND_CONFIG,
            args=vars(self.args),
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            rng=self.rng.get_state(),
            torch_rng=torch.get_rng_state(),
        )
        return s

    def load(self, path):
        s = torch.load(path, map_location="cpu", weights_only=False)
        if s["unet_config"] != COND_CONFIG:
            raise ValueError(f"{path}: checkpoint UNet config differs from this script's COND_CONFIG")
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.rng.set_state(s["rng"])
        torch.set_rng_state(s["torch_rng"])
        for k in ("step", "wall_seconds", "loss_log", "evals", "perm", "perm_pos"):
            setattr(self, k, s[k])

    def next_batch(self):
        bs = self.args.batch_size
        if self.perm is None or self.perm_pos + bs > len(self.perm):
            self.perm = torch.randperm(self.data.shape[0], generator=self.rng)
            self.perm_pos = 0
        idx = self.perm[self.perm_pos : self.perm_pos + bs]
        self.perm_pos += bs
        return self.data[idx], self.labels[idx]

    def train_step(self):
        x0, labels = self.next_batch()
        drop = torch.rand(labels.shape, generator=self.rng) < self.args.label_dropout
        labels = torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)
        noise = torch.randn(x0.shape, generator=self.rng)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=self.rng)
        xt = self.scheduler.add_noise(x0, noise, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.args)
        loss = torch.nn.functional.mse_loss(self.model(xt, t, class_labels=labels).sample, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.optimizer.step()
        decay = min(self.args.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        self.step += 1
        return loss.item()

    def scorer(self):
        if self._scorer is None:
            classifier = eval_samples.load_classifier()
            self._scorer = (classifier, eval_samples.reference_stats(classifier))
        return self._scorer

    def evaluate(self):
        t0 = time.time()
        res = evaluate(self.ema, self.scorer(), self.args.eval_per_class, self.args.eval_guidance, EVAL_SEED)
        res["step"] = self.step
        self.evals.append(res)
        print(f"eval at step {self.step} ({time.time() - t0:.0f} s): {json.dumps(res)}", flush=True)

    def export(self):
        out = self.args.export_dir
        pipe = DDPMPipeline(unet=self.ema, scheduler=DDPMScheduler(**SCHEDULER_CONFIG))
        pipe.save_pretrained(out, safe_serialization=True)
        config_path = os.path.join(out, "unet", "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["_null_class_label"] = NULL_CLASS
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(out, "training_summary_cond.json"), "w") as f:
            json.dump(
                {
                    "step": self.step,
                    "wall_seconds": round(self.wall_seconds, 1),
                    "evals": self.evals,
                    "args": {k: v for k, v in vars(self.args).items() if not k.endswith("_dir")},
                },
                f,
                indent=2,
            )
        os.makedirs(self.args.run_dir, exist_ok=True)
        np.savetxt(
            os.path.join(self.args.run_dir, "loss.csv"),
            np.array(self.loss_log, dtype=np.float64).reshape(-1, 3),
            delimiter=",",
            header="step,loss,wall_seconds",
            comments="",
        )
        print(f"exported the EMA of step {self.step} to {out}", flush=True)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)
    if os.path.exists(args.checkpoint):
        trainer.load(args.checkpoint)
        print(f"resumed from {args.checkpoint} at step {trainer.step}", flush=True)
    else:
        print("fresh fine-tune from the shipped unconditional weights", flush=True)
    if args.sweep:
        results = []
        for w in (float(v) for v in args.sweep.split(",")):
            res = evaluate(trainer.ema, trainer.scorer(), args.sweep_per_class, w, EVAL_SEED)
            print(json.dumps(res), flush=True)
            results.append(res)
        with open(args.sweep_out, "w") as f:
            json.dump({"step": trainer.step, "sweep": results}, f, indent=2)
        return
    if args.export_only:
        trainer.export()
        return

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stop.append("SIGINT"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    deadline = stop_deadline(args.stop_at)
    last_ckpt, window, t_window = time.time(), [], time.time()
    while trainer.step < args.max_steps and not stop:
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
            atomic_torch_save(trainer.state(), args.checkpoint)
            last_ckpt = time.time()
            print(f"checkpoint at step {trainer.step}", flush=True)
    atomic_torch_save(trainer.state(), args.checkpoint)
    print(f"checkpoint at step {trainer.step}", flush=True)
    trainer.export()


if __name__ == "__main__":
    main()

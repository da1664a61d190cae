"""The training loop both world models share: AdamW, one or two cosine cycles, an EMA of the weights,
a step budget fixed from the measured speed, resumable checkpoints and a progress bar.

The architecture-specific part is ``loss_fn(idx, extra, rng, gen) -> loss`` on a batch of scene indices
(``extra``: rows drawn as a re-weighted kind's extra draws, whose captions keep their nouns — see ``reweighting``;
``rng`` a numpy generator for captions, ``gen`` a torch generator for noise and timesteps).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .reweighting import KindSampler
from .train import EMAState, cosine_lr


@dataclass(frozen=True)
class Cycles:
    """The step plan. The first cycle lasts ``minutes`` of measured training speed (fixed after 20 steps),
    at most ``max_steps``; its cosine peak is ``peak_lr``. Each entry of ``extend_steps`` adds one more cosine
    cycle of that many steps (``extend_lr`` peak, 100 warm-up steps) after the first, with scene kinds
    re-weighted by the matching entry of ``extend_kind_weights`` (``{"subject": 3.0}``, each ≥ 1: extra draws of
    that kind whose captions keep their nouns, so no caption's pictures change — ``reweighting``; the last entry
    serves the cycles after it): planned from the start, or added to a finished run (it resumes from the checkpoint).
    The first cycle's length is kept in the checkpoint."""

    minutes: float
    max_steps: int | None = None
    peak_lr: float = 1e-3
    extend_steps: tuple = ()
    extend_lr: float = 3e-4
    extend_kind_weights: tuple = ()

    def later_cycle(self, step_after_first: int) -> tuple[int, int]:
        """(index of the later cycle, its first step counted from the end of the first cycle)."""
        start = 0
        for k, n in enumerate(self.extend_steps):
            if step_after_first < start + n or k == len(self.extend_steps) - 1:
                return k, start
            start += n
        raise ValueError("no later cycles planned")

    def weights_of(self, k: int) -> dict | None:
        w = self.extend_kind_weights
        return (w[k] if k < len(w) else w[-1]) if w else None


def train_cycles(name: str, nets: dict[str, torch.nn.Module], loss_fn, scenes, ckpt, plan: Cycles, batch: int,
                 seed: int, log: dict, desc: str) -> int:
    """Train ``nets`` (all their parameters, jointly) under ``plan``; checkpoints as ``<name>.*`` in ``ckpt``.
    Returns the number of steps done. On return the nets hold their EMA weights. ``log`` gains
    ``denoiser_steps``, ``denoiser_seconds``, ``loss_curve`` ([step, mean loss of the last 250]) and, with
    an extension, ``extension`` and ``first_cycle_seconds``."""
    from diffusers.training_utils import EMAModel

    for m in nets.values():
        m.train()
    params = [p for m in nets.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=plan.peak_lr, weight_decay=1e-2)
    emas = {k: EMAModel(m.parameters(), decay=0.999, use_ema_warmup=True, power=0.75) for k, m in nets.items()}
    mods = {**nets, "opt": opt, **{f"ema_{k}": EMAState(e) for k, e in emas.items()}}
    state = ckpt.load(name, mods) or {"step": 0, "total": None, "seconds": 0.0}
    for e in emas.values():
        e.optimization_step = state["step"]
    rng = np.random.default_rng(seed + state["step"])
    gen = torch.Generator().manual_seed(seed + state["step"])
    step, seconds = state["step"], state["seconds"]
    first = state.get("first_total", state["total"])  # the first cycle's length; None until measured
    extend = sum(plan.extend_steps)
    if extend:
        cycles = log.get("extension", {}).get("cycles", [])
        log["extension"] = {"cycles": [{"steps": n, "kind_weights": plan.weights_of(k),
                                        # cycles logged before the extra-draw scheme keep their record
                                        "reweighting": (cycles[k].get("reweighting", "whole kinds, empty captions included")
                                                        if k < len(cycles) else "extra draws keeping their nouns")}
                                       for k, n in enumerate(plan.extend_steps)], "peak_lr": plan.extend_lr}
    samplers = [KindSampler(scenes, plan.weights_of(k)) for k in range(len(plan.extend_steps))]
    world_rates = KindSampler(scenes)
    losses: list[float] = []
    bar = tqdm(total=first + extend, initial=step, desc=desc, mininterval=10) if first else None
    while first is None or step < first + extend:
        t_start = time.time()
        in_extension = first is not None and bool(extend) and step >= first
        if in_extension and "first_cycle_seconds" not in log:
            log["first_cycle_seconds"] = seconds  # the first cycle's own time, for the model card
        if in_extension:
            k, start = plan.later_cycle(step - first)
            lr = cosine_lr(step - first - start, plan.extend_steps[k], plan.extend_lr, warmup=100)
        else:
            k, lr = None, cosine_lr(step, first or 10**6, plan.peak_lr)
        idx, extra = (samplers[k] if k is not None else world_rates).draw(rng, batch)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_fn(idx, extra, rng, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k, e in emas.items():
            e.step(nets[k].parameters())
        step += 1
        seconds += time.time() - t_start
        losses.append(loss.item())
        if first is None and (step == 20 or (plan.max_steps and step >= plan.max_steps)):
            # fix the first cycle's length from the measured speed
            first = max(min(200, plan.max_steps or 200), int(plan.minutes * 60 / (seconds / step)))
            if plan.max_steps:
                first = min(first, plan.max_steps)
            bar = tqdm(total=first + extend, initial=step, desc=desc, mininterval=10)
        elif bar is not None:
            bar.update(1)
        if bar is not None and step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 250 == 0 or (first is not None and step in (first, first + extend)):
            ckpt.save(name, mods, step, {"total": first + extend, "seconds": seconds,
                                         **({"first_total": first} if extend else {})})
            log.setdefault("loss_curve", []).append([step, float(np.mean(losses[-250:]))])
    log["denoiser_steps"], log["denoiser_seconds"] = step, seconds
    for k, e in emas.items():
        e.copy_to(nets[k].parameters())
    for m in nets.values():
        m.eval()
    return step

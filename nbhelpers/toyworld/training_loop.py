"""The training loop both world models share: AdamW, one or two cosine cycles, an EMA of the weights,
a step budget fixed from the measured speed, resumable checkpoints and a progress bar.

The architecture-specific part is ``loss_fn(idx, extra, rng, gen, settings) -> loss`` on a batch of scene indices
(``extra``: rows drawn as a re-weighted kind's extra draws, whose captions keep their nouns — see ``reweighting``;
``rng`` a numpy generator for captions, ``gen`` a torch generator for noise and timesteps; ``settings``: the
cycle's :class:`CycleSettings`, the defaults in the first cycle).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .reweighting import KindSampler
from .train import EMAState, cosine_lr

# Log-SNR below which the layout of a picture whose caption leaves it open (size, position) is still undecided:
# the noise levels where both world models draw the conditional mean shrunk toward the unconditional one (toy-dit's
# model card). Rectified flow: σ > 1 / (1 + exp(HIGH_NOISE_LOGSNR / 2)) ≈ 0.852.
HIGH_NOISE_LOGSNR = -3.5


@dataclass(frozen=True)
class CycleSettings:
    """What a later cycle changes in the loss. ``high_noise``: the share of the batch whose noise level is drawn
    uniformly from the levels below ``HIGH_NOISE_LOGSNR``; ``exact_below``: the log-SNR below which the sampled
    picture's target is replaced by the world's exact posterior mean (``exact_targets``; None: never);
    ``open_layout``: the probability that an extra draw's caption drops its position phrase, ``open_size`` that a lone
    extra draw drops its size word (None: the world's word dropout; ``reweighting.training_captions``);
    ``extra_band``: (low, high) log-SNR between which the extra draws' noise levels are drawn (uniformly in σ; None:
    as every other row's). The defaults are the first cycle's plain loss."""

    high_noise: float = 0.0
    exact_below: float | None = None
    open_layout: float | None = None
    open_size: float | None = None
    extra_band: tuple | None = None


@dataclass(frozen=True)
class Cycles:
    """The step plan. The first cycle lasts ``minutes`` of measured training speed (fixed after 20 steps),
    at most ``max_steps``; its cosine peak is ``peak_lr``. Each entry of ``extend_steps`` adds one more cosine
    cycle of that many steps (``extend_lr`` peak, 100 warm-up steps) after the first, with scene kinds
    re-weighted by the matching entry of ``extend_kind_weights`` (``{"subject": 3.0}``, each ≥ 1: extra draws of
    that kind whose captions keep their nouns, so no caption's pictures change — ``reweighting``; the last entry
    serves the cycles after it) and a share ``extend_high_noise`` of each batch (matching entry, the last serves the
    cycles after it; none: 0) drawn at log-SNR below ``HIGH_NOISE_LOGSNR``: planned from the start, or added to a
    finished run (it resumes from the checkpoint). ``extend_exact_targets`` (matching entry, the last serves the
    cycles after it; none or None: off) gives the log-SNR below which a later cycle trains on the world's exact
    posterior mean instead of the one sampled picture (``exact_targets``), ``extend_open_layout`` and
    ``extend_open_size`` (likewise; none: the world's dropout) the probabilities that an extra draw's caption drops
    its position phrase and its size word, and ``extend_extra_band`` (likewise; none: off) the (low, high) log-SNR
    band of the extra draws' noise levels. The first cycle's length is kept in the checkpoint."""

    minutes: float
    max_steps: int | None = None
    peak_lr: float = 1e-3
    extend_steps: tuple = ()
    extend_lr: float = 3e-4
    extend_kind_weights: tuple = ()
    extend_high_noise: tuple = ()
    extend_exact_targets: tuple = ()
    extend_open_layout: tuple = ()
    extend_open_size: tuple = ()
    extend_extra_band: tuple = ()

    def __post_init__(self):
        bad = [h for h in self.extend_high_noise if not 0.0 <= h <= 1.0]
        if bad:
            raise ValueError(f"high-noise shares must lie in [0, 1] (a share of each batch), got {bad}")
        bad = [x for x in self.extend_exact_targets if x is not None and not np.isfinite(x)]
        if bad:
            raise ValueError(f"exact-target log-SNRs must be finite numbers (e.g. -4) or None, got {bad}")
        bad = [x for x in self.extend_open_layout + self.extend_open_size if x is not None and not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"open-layout and open-size rates are probabilities in [0, 1] (or None), got {bad}")
        bad = [b for b in self.extend_extra_band if b is not None and not (len(b) == 2 and np.isfinite(b).all()
                                                                             and b[0] < b[1])]
        if bad:
            raise ValueError(f"extra-draw noise bands are (low, high) log-SNRs with low < high (or None), got {bad}")

    def later_cycle(self, step_after_first: int) -> tuple[int, int]:
        """(index of the later cycle, its first step counted from the end of the first cycle)."""
        start = 0
        for k, n in enumerate(self.extend_steps):
            if step_after_first < start + n or k == len(self.extend_steps) - 1:
                return k, start
            start += n
        raise ValueError("no later cycles planned")

    @staticmethod
    def _of(values: tuple, k: int, default=None):
        """Later cycle ``k``'s entry of a per-cycle option: its own, else the last one given, else ``default``."""
        return (values[k] if k < len(values) else values[-1]) if values else default

    def weights_of(self, k: int) -> dict | None:
        return self._of(self.extend_kind_weights, k)

    def high_noise_of(self, k: int) -> float:
        return float(self._of(self.extend_high_noise, k, 0.0))

    def exact_below_of(self, k: int) -> float | None:
        v = self._of(self.extend_exact_targets, k)
        return None if v is None else float(v)

    def open_layout_of(self, k: int) -> float | None:
        v = self._of(self.extend_open_layout, k)
        return None if v is None else float(v)

    def open_size_of(self, k: int) -> float | None:
        v = self._of(self.extend_open_size, k)
        return None if v is None else float(v)

    def extra_band_of(self, k: int) -> tuple | None:
        v = self._of(self.extend_extra_band, k)
        return None if v is None else (float(v[0]), float(v[1]))

    def settings_of(self, k: int | None) -> CycleSettings:
        """The loss settings of later cycle ``k`` (None: the first cycle)."""
        if k is None:
            return CycleSettings()
        return CycleSettings(self.high_noise_of(k), self.exact_below_of(k), self.open_layout_of(k),
                             self.open_size_of(k), self.extra_band_of(k))

    def cycle_record(self, k: int) -> dict:
        """Later cycle ``k``'s loss settings (``settings_of``) as the run log records them (``training_log.json``)."""
        settings = self.settings_of(k)
        return {key: _as_json(getattr(settings, field)) for field, (key, _, _) in _RECORDED.items()}


def _as_json(value):
    return list(value) if isinstance(value, tuple) else value


# Each CycleSettings field: its key in a logged cycle's record, the value a record written before the field existed
# stands for, and the command-line flag that repeats it. continuation_point checks each against the plan.
_RECORDED = {"high_noise": ("high_noise_share", 0.0, "--extend-high-noise"),
             "exact_below": ("exact_targets_below", None, "--extend-exact-targets"),
             "open_layout": ("open_layout", None, "--extend-open-layout"),
             "open_size": ("open_size", None, "--extend-open-size"),
             "extra_band": ("extra_logsnr_band", None, "--extend-extra-logsnr")}


def _training_state(nets: dict[str, torch.nn.Module], plan: Cycles):
    """The optimizer, the EMAs of ``nets`` and every module a checkpoint holds (nets, ``opt``, ``ema_<net>``)."""
    from diffusers.training_utils import EMAModel

    params = [p for m in nets.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=plan.peak_lr, weight_decay=1e-2)
    emas = {k: EMAModel(m.parameters(), decay=0.999, use_ema_warmup=True, power=0.75) for k, m in nets.items()}
    return opt, emas, {**nets, "opt": opt, **{f"ema_{k}": EMAState(e) for k, e in emas.items()}}


def continuation_point(plan: Cycles, log: dict) -> tuple[int, int]:
    """(steps done, length of the first cycle) of the finished run ``log`` describes, checked against ``plan``: its
    later cycles so far must be the logged ones (lengths, kind weights and every loss setting of
    ``Cycles.cycle_record``), and at least one new cycle must follow. Raises ``ValueError``."""
    done = int(log.get("denoiser_steps", 0))
    logged = [c["steps"] for c in log.get("extension", {}).get("cycles", [])]
    if not done:
        raise ValueError("the saved run's training_log.json records no denoiser steps; there is nothing to continue")
    if tuple(plan.extend_steps[: len(logged)]) != tuple(logged) or len(plan.extend_steps) <= len(logged):
        raise ValueError(f"the saved run had later cycles of {logged} steps; repeat them and add at least one new "
                         f"cycle (--extend-steps ...), got {list(plan.extend_steps)}")
    for k, c in enumerate(log["extension"]["cycles"] if logged else []):
        if c.get("kind_weights") != plan.weights_of(k):
            raise ValueError(f"the saved run's cycle {k + 2} drew kind weights {c.get('kind_weights')}; the plan gives "
                             f"{plan.weights_of(k)} (repeat the run's --extend-kind-weights)")
        want = plan.cycle_record(k)
        for key, default, flag in _RECORDED.values():
            if c.get(key, default) != want[key]:
                raise ValueError(f"the saved run's cycle {k + 2} had {key} = {c.get(key, default)}; the plan gives "
                                 f"{want[key]} (repeat the run's {flag}, 'none' for a cycle without)")
    return done, done - sum(logged)


def seed_checkpoint(name: str, nets: dict[str, torch.nn.Module], ckpt, plan: Cycles, log: dict) -> int:
    """Continue a finished run whose checkpoint is gone (checkpoints are not kept in the repository) from its saved
    pipeline: ``nets`` hold the saved (EMA) weights, which become both the weights and the EMA; the optimizer starts
    afresh (each later cycle warms its learning rate up over 100 steps). ``log`` is the run's ``training_log.json``:
    its ``denoiser_steps`` and its later cycles' lengths place the run in ``plan``, whose cycles so far must be the
    logged ones. Writes the checkpoint ``<name>.*`` into ``ckpt``; returns the step it stands at."""
    done, first = continuation_point(plan, log)
    _, _, mods = _training_state(nets, plan)
    ckpt.save(name, mods, done, {"total": first + sum(plan.extend_steps), "seconds": float(log.get("denoiser_seconds", 0)),
                                 "first_total": first})
    return done


def train_cycles(name: str, nets: dict[str, torch.nn.Module], loss_fn, scenes, ckpt, plan: Cycles, batch: int,
                 seed: int, log: dict, desc: str) -> int:
    """Train ``nets`` (all their parameters, jointly) under ``plan``; checkpoints as ``<name>.*`` in ``ckpt``.
    Returns the number of steps done. On return the nets hold their EMA weights. ``log`` gains
    ``denoiser_steps``, ``denoiser_seconds``, ``loss_curve`` ([step, mean loss of the last 250]) and, with
    an extension, ``extension`` and ``first_cycle_seconds``."""
    for m in nets.values():
        m.train()
    params = [p for m in nets.values() for p in m.parameters()]
    opt, emas, mods = _training_state(nets, plan)
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
                                                        if k < len(cycles) else "extra draws keeping their nouns"),
                                        **plan.cycle_record(k)}
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
        loss = loss_fn(idx, extra, rng, gen, plan.settings_of(k))
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

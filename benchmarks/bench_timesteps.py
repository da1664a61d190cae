"""Benchmarks of the timestep tools, printed as ratios measured in one run.

    python benchmarks/bench_timesteps.py [--model toy] [--masks 128]

1. DF-RISE: all masked passes in one batched UNet call (``saliency.rise_saliency``) vs one UNet call
   per mask (the published loop), same masks: wall-time ratio and the largest map difference.
2. Tracing: generation with per-step attention capture (``timesteps.trace``) vs plain generation:
   the capture's overhead ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NBHELPERS_CACHE"] = "0"  # time the computation, not the result cache

from nbhelpers import load_model, saliency, timesteps  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--masks", type=int, default=128)
    a = ap.parse_args(argv)
    m = load_model(a.model, device="auto")
    prompt = "a big red circle on the left"
    tr = timesteps.trace(m, prompt, seed=0, steps=20)
    step = 15
    t0 = time.perf_counter()
    batched = saliency.rise_saliency(m, tr, step, n_masks=a.masks, seed=0, max_batch=a.masks)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    looped = saliency.rise_saliency(m, tr, step, n_masks=a.masks, seed=0, max_batch=1)
    t_looped = time.perf_counter() - t0
    diff = float(abs(batched.map - looped.map).max())
    print(f"DF-RISE, {a.masks} masks on {a.model!r}: one batch {t_batched:.2f} s vs one call per mask {t_looped:.2f} s "
          f"= {t_looped / t_batched:.1f}x faster (max map difference {diff:.1e})")
    reps = 3
    t0 = time.perf_counter()
    for i in range(reps):
        m.generate(prompt, seed=i, steps=20)
    plain = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for i in range(reps):
        timesteps.trace(m, prompt, seed=i, steps=20)
    traced = (time.perf_counter() - t0) / reps
    print(f"tracing (trajectory + per-step attention of every word): {traced:.3f} s vs plain generation "
          f"{plain:.3f} s = {traced / plain:.2f}x")


if __name__ == "__main__":
    main()

"""Measure the bundled model against the world's truth: accuracy on held-out captions (never seen in
training) and the planted rates, both read off generations by the world's checker.

    python -m nbhelpers.toyworld.evaluate --model toy      # prints JSON for the model card
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import world
from ..metrics import wilson_interval
from .checker import check_scene, read_image

ATTRIBUTES = ("colour", "shape", "size", "position")


def heldout_scenes(n_single: int, n_pair: int, seed: int = 1234) -> list[world.Scene]:
    """Held-out compositions, with red written "red"."""
    singles = world.sample_scenes(n_single, seed=seed, split="heldout", kind="single")
    pairs = world.sample_scenes(n_pair, seed=seed + 1, split="heldout", kind="pair")
    return [world.with_plain_red(s) for s in singles + pairs]


def _generate(model, prompts, seeds, steps, guidance, batch):
    images = []
    for i in tqdm(range(0, len(prompts), batch), desc="generate", leave=False):
        images.append(model.generate(prompts[i : i + batch], seed=seeds[i : i + batch], steps=steps,
                                      guidance=guidance).images)
    return np.concatenate(images)


@dataclass
class QualityReport:
    """Fractions of objects with each attribute right (held-out captions), and of two-object
    captions with both objects fully right (colour, shape and position)."""

    n_captions: int
    n_objects: int
    accuracy: dict
    pair_fully_correct: float
    n_pairs: int
    by_kind: dict
    params: dict = field(default_factory=dict)
    images: np.ndarray | None = field(default=None, repr=False)
    captions: list = field(default_factory=list, repr=False)
    all_correct: list = field(default_factory=list, repr=False)  # per caption: every attribute right

    def misses(self) -> list[int]:
        """Indices of the captions with at least one attribute wrong."""
        return [i for i, ok in enumerate(self.all_correct) if not ok]

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("images", "captions", "all_correct"):
            d.pop(k)
        return d


def evaluate_quality(model, n_single: int = 120, n_pair: int = 120, seed: int = 1234, steps: int = 25,
                     guidance: float = 3.0, batch: int = 60) -> QualityReport:
    scenes = heldout_scenes(n_single, n_pair, seed)
    prompts = [s.caption() for s in scenes]
    images = _generate(model, prompts, list(range(seed, seed + len(prompts))), steps, guidance, batch)
    per_obj = {k: [] for k in ATTRIBUTES}
    kinds: dict = {}
    pair_ok, all_ok = [], []
    for s, img in zip(scenes, images):
        res = check_scene(s, img)
        all_ok.append(all(all(r.values()) for r in res))
        for r in res:
            for k in ATTRIBUTES:
                per_obj[k].append(r[k])
                kinds.setdefault(s.kind, {a: [] for a in ATTRIBUTES})[k].append(r[k])
        if s.kind == "pair":
            pair_ok.append(all(r["colour"] and r["shape"] and r["position"] for r in res))
    return QualityReport(
        n_captions=len(scenes), n_objects=len(per_obj["colour"]),
        accuracy={k: float(np.mean(v)) for k, v in per_obj.items()},
        pair_fully_correct=float(np.mean(pair_ok)) if pair_ok else float("nan"), n_pairs=len(pair_ok),
        by_kind={kind: {k: float(np.mean(v)) for k, v in d.items()} for kind, d in kinds.items()},
        params=dict(steps=steps, guidance=guidance, seed=seed), images=images, captions=prompts, all_correct=all_ok)


# prompt, attribute read by the checker, the value counted, the planted rate
PLANTED_CHECKS = [
    ("a nurse", "colour", "red", world.P_WARM["nurse"]),
    ("a pilot", "colour", "blue", 1 - world.P_WARM["pilot"]),
    ("a chef", "size", "big", world.P_BIG["chef"]),
    ("a doctor", "colour", "red", world.P_WARM["doctor"]),
    ("a cool nurse", "colour", "blue", 1.0),
    ("a bat", "shape", "triangle", 0.5),
    ("a bat at the top", "shape", "triangle", 1.0),
    ("a bat at the bottom", "shape", "square", 1.0),
    ("a crimson circle", "colour", "red", 1.0),
    ("a crimson red square", "colour", "red", 1.0),
]


def planted_rates(model, n: int = 100, seed: int = 777, steps: int = 25, guidance: float = 1.0,
                  batch: int = 100) -> list[dict]:
    """For each planted phenomenon: the rate in generations of its prompt (``guidance=1``: plain
    conditional sampling, since guidance sharpens rates) against the planted rate."""
    rows = []
    for j, (prompt, attr, value, rate) in enumerate(tqdm(PLANTED_CHECKS, desc="planted rates", leave=False)):
        seeds = list(range(seed + 1000 * j, seed + 1000 * j + n))
        images = _generate(model, [prompt] * n, seeds, steps, guidance, batch)
        reads = [read_image(im, max_objects=1) for im in images]
        hits = [getattr(r[0], attr) == value for r in reads if r]
        k, m = int(np.sum(hits)), len(hits)
        lo, hi = wilson_interval(k, m)
        rows.append(dict(prompt=prompt, attribute=attr, value=value, planted=rate,
                         measured=k / max(m, 1), ci95=(lo, hi), n=m, n_without_object=n - m))
    return rows


def main(argv=None):
    from .. import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--n-single", type=int, default=150)
    ap.add_argument("--n-pair", type=int, default=150)
    ap.add_argument("--n-rate", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    a = ap.parse_args(argv)
    model = load_model(a.model, device="cpu")
    q = evaluate_quality(model, a.n_single, a.n_pair, steps=a.steps, guidance=a.guidance)
    rates = planted_rates(model, a.n_rate, steps=a.steps)
    print(json.dumps({"quality": q.to_dict(), "planted_rates": rates}, indent=1))


if __name__ == "__main__":
    main()

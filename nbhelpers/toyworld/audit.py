"""The toy world as a client of the bias audit (:mod:`nbhelpers.bias`): its group dimensions, a
reader of its pictures, its own pictures behind the audit's model interface, and its planted truth.

    from nbhelpers import bias
    from nbhelpers.toyworld import audit as world_audit
    bias.run_audit(m, subjects, "runs/audit", reader=world_audit.read_groups, dimensions=world_audit.DIMENSIONS)
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..bias import AuditError
from .checker import read_image
from .world import GROUP_COLOURS, PLANTED_BIAS, SUBJECT_SHAPES, subject_scene

DIMENSIONS = {"colour": ("warm", "cool"), "size": ("big", "small")}


def read_groups(image: np.ndarray) -> dict:
    """Group attributes of a toy-world image: colour → "warm" (red) / "cool" (blue) / "other", size →
    "big" / "small"; None values when no object is found."""
    r = read_image(image, max_objects=1)
    if not r:
        return {"colour": None, "size": None}
    by_colour = {c: g for g, c in GROUP_COLOURS.items()}
    return {"colour": by_colour.get(r[0].colour, "other"), "size": r[0].size}


def planted_truth() -> dict:
    """The toy world's planted biases as {(subject, dimension): (group, rate)} (see the world card)."""
    dim_of = {"warm": "colour", "cool": "colour", "big": "size", "small": "size"}
    return {(s, dim_of[g]): (g, r) for s, (g, r) in PLANTED_BIAS.items()}


class WorldPictures:
    """The toy world's own pictures behind the interface :func:`nbhelpers.bias.run_audit` uses
    (``generate``, ``tokenize``, ``name``): a prompt naming one subject noun (e.g. "a nurse") gives, per
    seed, a subject scene drawn at the world's planted rates, i.e. the model's training distribution. An
    audit of it has an exactly known answer (:func:`planted_truth`), and set beside an audit of the model
    it separates what the data holds from what the model added. ``steps`` and ``guidance`` are accepted
    and ignored."""

    name = "toy world (training pictures)"

    def tokenize(self, prompt: str) -> str:
        nouns = [w for w in prompt.replace(",", " ").split() if w in SUBJECT_SHAPES]
        if len(nouns) != 1:
            raise AuditError(f"the world draws prompts with exactly one subject noun ({', '.join(SUBJECT_SHAPES)}); "
                             f"{prompt!r} has {len(nouns)}")
        return nouns[0]

    def generate(self, prompt: str | list[str], seed: int | list[int] = 0, steps: int | None = None,
                 guidance: float | None = None):
        """``.images``: one (32, 32, 3) uint8 render per prompt and seed (same seed, same picture)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(len(prompts))]
        if len(prompts) == 1:
            prompts = prompts * len(seeds)
        if len(seeds) != len(prompts):
            raise AuditError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt")
        images = [subject_scene(np.random.default_rng(sd), self.tokenize(p)).render() for p, sd in zip(prompts, seeds)]
        return SimpleNamespace(images=images, prompts=prompts, seeds=seeds)

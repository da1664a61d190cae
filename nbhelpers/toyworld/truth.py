"""What the toy world allows: upper bounds on the information a word or a caption can carry.

A word names one attribute of one object, and the world draws that attribute from a known number of
equally likely values, so the word's information given the rest of the caption is at most the
attribute's entropy: colour ln 5, size ln 2, shape ln 3, position ln 5, relation ln 4 (nats). A
caption names one scene description, so i(x; caption) is at most −log P(description) (kind rate ×
uniform attributes). An estimate above its bound (by more than two standard errors) is a finding
about the estimator or the model, never about the world. Function words get no bound.
"""
from __future__ import annotations

import math

from . import world

_VALUES = {}
for _w in world.COLOURS:
    _VALUES[_w] = len(world.COLOURS)
_VALUES[world.SYNONYM[0]] = len(world.COLOURS)
for _w in world.GROUP_COLOURS:
    _VALUES[_w] = len(world.COLOURS)
for _w in world.SIZES:
    _VALUES[_w] = len(world.SIZES)
for _w in world.SHAPES:
    _VALUES[_w] = len(world.SHAPES)
_VALUES[world.HOMONYM] = len(world.SHAPES)
for _w in world.SUBJECT_SHAPES:
    _VALUES[_w] = len(world.SHAPES)
for _w in world.POSITIONS:  # also "left"/"right" of a relation: ln 5 ≥ ln 4 bounds both
    _VALUES[_w] = len(world.POSITIONS)
for _w in ("above", "below"):
    _VALUES[_w] = len(world.RELATIONS)


def word_information_bound(word: str) -> float | None:
    """ln(number of values of the attribute ``word`` names), nats; None for a function word."""
    k = _VALUES.get(word.lower())
    return math.log(k) if k else None


def caption_information_bound(kind: str) -> float:
    """−log P(one scene description of this kind), nats: the most a caption of a ``kind`` scene
    ("single" or "pair") can tell about the picture."""
    attrs = len(world.COLOURS) * len(world.SHAPES) * len(world.SIZES)
    if kind == "single":
        return -math.log(world.KIND_RATES["single"] / (attrs * len(world.POSITIONS)))
    if kind == "pair":
        return -math.log(world.KIND_RATES["pair"] / (attrs ** 2 * len(world.RELATIONS)))
    raise ValueError(f"kind must be 'single' or 'pair', not {kind!r}")


def with_world_bounds(table, kind: str | None = None):
    """A copy of ``PromptInformation.table()`` with each term's bound in this world and whether the
    estimate exceeds it by more than two standard errors (``kind`` of scene for the whole prompt); the
    bound is in the table's units."""
    out = table.copy()
    bounds = []
    for term in out["term"]:
        if "|" in term:  # "i(x; word | rest)"
            bounds.append(word_information_bound(term.split(";")[1].split("|")[0].strip()))
        else:
            bounds.append(caption_information_bound(kind) if kind else None)
    per_nat = [1 / math.log(2) if u == "bits" else 1.0 for u in out["units"]]
    bounds = [None if b is None else b * f for b, f in zip(bounds, per_nat)]
    out["world bound"] = bounds
    out["beyond the world"] = [b is not None and v - 2 * s > b for v, s, b in zip(out["value"], out["stderr"], bounds)]
    return out

"""Caption scoring as a test of compositional understanding (ARO-style, Yuksekgonul et al. 2023), with
the information score of Kong et al.: the true caption should carry more information about the image
than the same words with two attributes swapped (binding) or two objects swapped around a relation
(order). Chance is 50 %."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .info import caption_margins
from .metrics import wilson_interval
from .cache import cached
from .validate import ArgumentError, validated


@dataclass
class CaptionStudy:
    """Per kind of swap: n, accuracy (true caption scored higher) and its 95 % Wilson interval."""

    records: list[dict]
    params: dict = field(default_factory=dict)

    def accuracy(self) -> dict:
        out = {}
        for kind in sorted({r["kind"] for r in self.records}):
            hits = [r["correct"] for r in self.records if r["kind"] == kind]
            k, n = int(np.sum(hits)), len(hits)
            out[kind] = {"n": n, "accuracy": k / n, "ci95": wilson_interval(k, n)}
        return out

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy(), "params": self.params}


@validated(skip=("captions",))
@cached("studies")
def caption_scoring_study(model, images, captions: list[tuple[str, dict[str, str]]], n: int = 32, seed: int = 0,
                          form: str = "standard", batch_size: int = 32) -> CaptionStudy:
    """For each image and its ``(true caption, {swap kind: swapped caption})`` (``captions[k]`` with
    ``images[k]``; the toy world's builder is its ``scenes.caption_swaps``), score the true caption
    against each swapped one: the margin i(x; true) − i(x; swapped) in nats
    (:func:`nbhelpers.info.caption_margins`), correct when positive."""
    if len(images) != len(captions):
        raise ArgumentError(f"{len(images)} images for {len(captions)} caption sets; give one (true, swaps) per image")
    records = []
    for k, ((true, swaps), image) in enumerate(tqdm(list(zip(captions, images)), desc="caption scoring", leave=False)):
        if not swaps:
            continue
        margins = caption_margins(model, image, true, list(swaps.values()), n=n, seed=seed + k, form=form,
                                  batch_size=batch_size)
        for (kind, cap), mg in zip(swaps.items(), margins):
            records.append({"image": k, "kind": kind, "true": true, "swapped": cap, "margin": mg.value,
                            "margin_stderr": mg.stderr, "correct": bool(mg.value > 0)})
    return CaptionStudy(records, dict(n=n, seed=seed, form=form, n_images=len(captions)))

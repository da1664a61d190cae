"""Caption scoring as a test of compositional understanding (ARO-style, Yuksekgonul et al. 2023), with
the information score of Kong et al.: the true caption should carry more information about the image
than the same words with two attributes swapped (binding) or two objects swapped around a relation
(order). Chance is 50 %."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .info import caption_margins
from .metrics import wilson_interval
from .cache import cached
from .executors import resolve_executor, run_image_shards
from .tables import digest, plain
from .validate import ArgumentError, validated, whole_number

RECORD_KEY = ("image", "kind")


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
@cached("studies", ignore=("progress", "executor", "out", "images_per_shard"))
def caption_scoring_study(model, images, captions: list[tuple[str, dict[str, str]]], n: int = 32, seed: int = 0,
                          form: str = "standard", batch_size: int = 32, executor="local", out=None,
                          images_per_shard: int = 1) -> CaptionStudy:
    """For each image and its ``(true caption, {swap kind: swapped caption})`` (``captions[k]`` with
    ``images[k]``; the toy world's builder is its ``scenes.caption_swaps``), score the true caption
    against each swapped one: the margin i(x; true) − i(x; swapped) in nats
    (:func:`nbhelpers.info.caption_margins`), correct when positive.

    ``executor``: "local", "ray" or a :class:`nbhelpers.executors.RayExecutor` (shards of ``images_per_shard``
    images; image ``k`` uses seed ``seed + k`` wherever it runs). ``out``: a folder whose ``records.jsonl``
    receives each image's records as it finishes (one row per (image, kind)); run again, the study resumes."""
    if len(images) != len(captions):
        raise ArgumentError(f"{len(images)} images for {len(captions)} caption sets; give one (true, swaps) per image")
    images_per_shard = whole_number("images_per_shard", images_per_shard, 1, None, "images per shard")
    executor = resolve_executor(executor)
    params = dict(n=n, seed=seed, form=form, batch_size=batch_size)
    spec = None if out is None else dict(
        params, study="captions", model=getattr(model, "name", "?"), n_images=len(captions),
        data=digest([np.asarray(im) for im in images], [(t, dict(sw)) for t, sw in captions]))
    work = {k: (images[k], captions[k]) for k, (_, swaps) in enumerate(captions) if swaps}
    done = run_image_shards(model, _caption_shard, work, params, executor, out, spec, RECORD_KEY, images_per_shard,
                            "caption scoring")
    records = []
    for k in sorted(done):
        order = list(captions[k][1])
        records += sorted(done[k], key=lambda r: order.index(r["kind"]))
    return CaptionStudy(records, dict(n=n, seed=seed, form=form, n_images=len(captions)))


def _caption_shard(model, shard: dict) -> list[tuple[int, list[dict]]]:
    """Some images of a caption study (on whichever worker): ``(k, rows)``, a row per swap kind."""
    out = []
    for k, image, (true, swaps) in shard["items"]:
        margins = caption_margins(model, image, true, list(swaps.values()), n=shard["n"], seed=shard["seed"] + k,
                                  form=shard["form"], batch_size=shard["batch_size"])
        out.append((k, [plain({"image": k, "kind": kind, "true": true, "swapped": cap, "margin": mg.value,
                               "margin_stderr": mg.stderr, "correct": bool(mg.value > 0)})
                        for (kind, cap), mg in zip(swaps.items(), margins)]))
    return out

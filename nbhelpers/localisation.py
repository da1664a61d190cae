"""Unsupervised localisation of words with information and attention maps, scored against ground-truth
masks (Kong et al.'s COCO-IT protocol).

The study knows no dataset: each image comes with a :class:`LocalisationCase`, its prompt and the words
to localise, each with the mask of what it names (a COCO instance mask, or the toy world's exact
object masks, which the world's ``scenes`` module builds). For each word, five maps are compared with
its mask:
``cmi`` (i(x; word | rest) per pixel), ``cmi smoothed`` (the same, Gaussian-smoothed with σ =
``smooth`` latent pixels: each pixel's Monte-Carlo estimate is noisy, and a latent pixel's neighbours
share its object), ``mi`` (i(x; prompt) per pixel, the same for every word), ``attention`` (DAAM-style
cross-attention) and ``attention+cmi`` (mean of the two min-max-normalised maps); on an MMDiT (SD3,
Flux) also ``concept attention`` (ConceptAttention with the case's words as the concepts). Scores: mIoU at
thresholds of the min-max-normalised map (the best of 50 in [0.1, 0.5] as
published, chosen on the evaluation set itself, and a threshold chosen on a separate calibration half,
which is the honest number), and the threshold-free AUROC.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .attention import word_attention_maps
from .info import prompt_information
from .metrics import auroc, iou, minmax, upsample
from .cache import cached
from .executors import resolve_executor, run_image_shards
from .tables import digest, plain
from .validate import ArgumentError, validated, whole_number

METHODS = ("cmi", "cmi smoothed", "mi", "attention", "attention+cmi", "whole image")
# An MMDiT (SD3, Flux) adds ConceptAttention (Helbling et al.): the case's words as concepts, softmaxed
# against each other in the attention-output space (nbhelpers.concept_attention).
CONCEPT_ATTENTION = "concept attention"
THRESHOLDS = np.linspace(0.1, 0.5, 50)


@dataclass
class LocalisationResult:
    """Per (image, word) records and a summary table (mean over records) per method."""

    records: list[dict]
    thresholds: np.ndarray
    iou_curves: dict  # method -> (n_records, n_thresholds)
    params: dict = field(default_factory=dict)

    def summary(self, kind: str | None = None):
        """pandas table: method, mIoU (best threshold on the evaluation set), mIoU (threshold chosen on
        the calibration half, scored on the other half), the chosen threshold, and mean AUROC.
        ``kind``: only the words of that :attr:`WordTarget.kind` (in the toy world "colour" words,
        whose information covers the whole object, or "noun" words, whose information lies where the
        shapes differ)."""
        import pandas as pd

        keep = np.array([kind is None or r.get("kind") == kind for r in self.records], bool)
        if not keep.any():
            kinds = sorted({str(r.get("kind")) for r in self.records})
            raise ArgumentError(f"no records of kind {kind!r}; the kinds here are {kinds}")
        recs = [r for r, k in zip(self.records, keep) if k]
        n = len(recs)
        image = np.array([r["image"] for r in recs])
        calib, held = image % 2 == 0, image % 2 == 1  # halves by image (an image's words stay together)
        rows = []
        for m, all_curves in self.iou_curves.items():
            curves = all_curves[keep]
            best = int(np.argmax(curves.mean(0)))
            t_cal = int(np.argmax(curves[calib].mean(0))) if calib.any() else best
            rows.append({"method": m, "mIoU (best threshold)": float(curves.mean(0)[best]),
                         "mIoU (calibrated threshold)": float(curves[held, t_cal].mean()) if held.any() else np.nan,
                         "threshold": float(self.thresholds[t_cal]),
                         "AUROC": float(np.nanmean([r["auroc"][m] for r in recs]))})
        return pd.DataFrame(rows).set_index("method")

    def auroc_interval(self, method: str, kind: str | None = None, level: float = 0.95, n_boot: int = 1000,
                       seed: int = 0) -> tuple[float, float, float]:
        """(mean AUROC of ``method``, lower, upper): a percentile bootstrap interval resampling images (an
        image's words together), for the words of ``kind`` (None: all)."""
        from .metrics import bootstrap_ci

        recs = [r for r in self.records if kind is None or r.get("kind") == kind]
        if not recs or method not in recs[0]["auroc"]:
            have = sorted(self.records[0]["auroc"]) if self.records else []
            raise ArgumentError(f"no AUROC of method {method!r} (kind {kind!r}); this study has {have}")
        values = np.array([r["auroc"][method] for r in recs], float)
        image = np.array([r["image"] for r in recs])
        ids = np.unique(image)
        rows_of = [np.flatnonzero(image == i) for i in ids]
        lo, hi = bootstrap_ci(lambda idx: np.nanmean(values[np.concatenate([rows_of[i] for i in idx])]), len(ids),
                              n_boot, seed, level)
        return float(np.nanmean(values)), lo, hi

    def miou_interval(self, method: str, threshold: str = "calibrated", kind: str | None = None, level: float = 0.95,
                      n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
        """(mIoU of ``method``, lower, upper) as in :meth:`summary`: ``threshold="best"`` picks the best of the
        thresholds on the evaluation set itself (the published protocol), ``"calibrated"`` picks it on the
        even-numbered images and scores the odd-numbered ones. The percentile bootstrap resamples images (an
        image's words together) and re-chooses the threshold in every resample; with fewer than two images
        the bounds are NaN."""
        from .metrics import bootstrap_ci

        if threshold not in ("calibrated", "best"):
            raise ArgumentError(f"threshold must be 'calibrated' or 'best', not {threshold!r}")
        if method not in self.iou_curves:
            raise ArgumentError(f"no IoU curves of method {method!r}; this study has {sorted(self.iou_curves)}")
        keep = np.array([kind is None or r.get("kind") == kind for r in self.records], bool)
        curves = self.iou_curves[method][keep]
        image = np.array([r["image"] for r in self.records])[keep]
        ids = np.unique(image)
        rows_of = [np.flatnonzero(image == i) for i in ids]

        def best(idx):
            return curves[np.concatenate([rows_of[i] for i in idx])].mean(0).max()

        def calibrated(idx):
            cal = [rows_of[i] for i in idx if ids[i] % 2 == 0]
            ev = [rows_of[i] for i in idx if ids[i] % 2 == 1]
            if not cal or not ev:
                return np.nan
            return curves[np.concatenate(ev), int(np.argmax(curves[np.concatenate(cal)].mean(0)))].mean()

        stat = best if threshold == "best" else calibrated
        value = float(stat(np.arange(len(ids))))
        lo, hi = bootstrap_ci(stat, len(ids), n_boot, seed, level) if len(ids) > 1 else (np.nan, np.nan)
        return value, lo, hi

    def to_dict(self) -> dict:
        kinds = sorted({r.get("kind") for r in self.records} - {None})
        return {"summary": self.summary().reset_index().to_dict(orient="records"), "n_records": len(self.records),
                "by_kind": {k: self.summary(k).reset_index().to_dict(orient="records") for k in kinds},
                "params": self.params}


def side_by_side(studies: dict[str, LocalisationResult], level: float = 0.95, n_boot: int = 1000,
                 seed: int = 0):
    """One table comparing localisation studies of several models (same images and masks), pandas with
    rows = methods and columns = (model, score): mIoU at the calibrated threshold with its ``level`` bootstrap
    interval over images (``"lo–hi"``), mIoU at the best threshold, the mean AUROC and its interval. A method a
    model does not offer (ConceptAttention on a UNet) is empty for it. The "whole image" baseline is kept as the chance row."""
    import pandas as pd

    if not studies:
        raise ArgumentError("side_by_side needs at least one study, e.g. {'toy': study_a, 'toy-dit': study_b}")
    cols, order = {}, {}
    for name, study in studies.items():
        summ = study.summary()
        order.update(dict.fromkeys(summ.index))
        for method in summ.index:
            mean, lo, hi = study.auroc_interval(method, level=level, n_boot=n_boot, seed=seed)
            cols.setdefault((name, "mIoU (calibrated threshold)"), {})[method] = summ.loc[method, "mIoU (calibrated threshold)"]
            _, mlo, mhi = study.miou_interval(method, "calibrated", level=level, n_boot=n_boot, seed=seed)
            cols.setdefault((name, f"mIoU {level:.0%} CI"), {})[method] = f"{mlo:.2f}–{mhi:.2f}"
            cols.setdefault((name, "mIoU (best threshold)"), {})[method] = summ.loc[method, "mIoU (best threshold)"]
            cols.setdefault((name, "AUROC"), {})[method] = mean
            cols.setdefault((name, f"AUROC {level:.0%} CI"), {})[method] = f"{lo:.2f}–{hi:.2f}"
    table = pd.DataFrame(cols).reindex(list(order))
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["model", "score"])
    return table


@dataclass
class WordTarget:
    """A word to localise and what it names: ``mask`` (H, W) bool at image resolution; ``kind`` groups
    words in the summary (e.g. "colour", "noun"); ``label`` identifies what the word names (e.g. the
    object's index); ``extra``: {name: mask} further masks the word's CMI map is scored against by AUROC
    (recorded as ``cmi vs <name>``)."""

    word: str
    mask: np.ndarray
    kind: str = "word"
    label: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class LocalisationCase:
    """One image's prompt and the words of it to localise."""

    prompt: str
    targets: tuple


def score_maps(maps: dict[str, np.ndarray], mask: np.ndarray) -> tuple[dict, dict]:
    """IoU curve over THRESHOLDS and AUROC for each method's map (upsampled to the mask's size)."""
    curves, aucs = {}, {}
    for m, raw in maps.items():
        up = minmax(upsample(raw, mask.shape[0])) if raw is not None else np.ones(mask.shape)
        curves[m] = np.array([iou(up >= t, mask) for t in THRESHOLDS])
        aucs[m] = auroc(up, mask) if raw is not None else 0.5
    return curves, aucs


RECORD_KEY = ("image", "target")


@validated
@cached("studies", ignore=("progress", "executor", "out", "images_per_shard"))
def localisation_study(model, images: np.ndarray, cases: list[LocalisationCase], n: int = 32,
                       attention_n: int = 8, seed: int = 0, batch_size: int = 32,
                       smooth: float = 1.0, form: str = "orthogonal", executor="local", out=None,
                       images_per_shard: int = 1) -> LocalisationResult:
    """Localise the words of each case in its image (``images[k]`` with ``cases[k]``). ``smooth``: σ
    of the ``cmi smoothed`` map, in latent pixels (fixed in advance, not tuned on the evaluation set).
    ``form``: the maps' form; the orthogonal one (the published choice) is non-negative per pixel,
    which a map to threshold needs, and its value is not the pointwise information of the image.

    ``executor``: "local", "ray" or a :class:`nbhelpers.executors.RayExecutor`; shards of
    ``images_per_shard`` images. ``out``: a folder whose ``records.jsonl`` receives each image's records (its
    IoU curves included) as it finishes, one row per (image, target); a study run again on the same folder
    resumes, computing only the images not there. Image ``k`` always uses seed ``seed + k``, so the result is
    the same whatever the executor and the order of completion."""
    if not smooth > 0:
        raise ArgumentError(f"smooth must be a positive σ in latent pixels, got {smooth!r}")
    if len(images) != len(cases):
        raise ArgumentError(f"{len(images)} images for {len(cases)} cases; give one LocalisationCase per image")
    images_per_shard = whole_number("images_per_shard", images_per_shard, 1, None, "images per shard")
    executor = resolve_executor(executor)
    params = dict(n=n, attention_n=attention_n, seed=seed, batch_size=batch_size, smooth=smooth, form=form)
    spec = None if out is None else dict(
        params, study="localisation", model=getattr(model, "name", "?"), n_images=len(cases),
        data=digest([np.asarray(im) for im in images],
                    [(c.prompt, [(t.word, t.kind, t.label, t.mask) for t in c.targets]) for c in cases]))
    work = {k: (images[k], c) for k, c in enumerate(cases) if c.targets}
    done = run_image_shards(model, _localisation_shard, work, params, executor, out, spec, RECORD_KEY,
                            images_per_shard, "localisation")
    records, curves = [], {}
    for k in sorted(done):
        for row in sorted(done[k], key=lambda r: r["target"]):
            for m, curve in row["iou"].items():
                curves.setdefault(m, []).append(np.asarray(curve, float))
            records.append({c: v for c, v in row.items() if c not in ("iou", "target")})
    return LocalisationResult(records, THRESHOLDS, {m: np.array(v) for m, v in curves.items()},
                              dict(n=n, attention_n=attention_n, seed=seed, n_images=len(cases), smooth=smooth))


def _localisation_shard(model, shard: dict) -> list[tuple[int, list[dict]]]:
    """Some images of a localisation study (on whichever worker): ``(k, rows)`` per image, a row per target
    with its IoU curve per method (over :data:`THRESHOLDS`) under ``"iou"``, as plain JSON-ready values."""
    from scipy.ndimage import gaussian_filter

    out = []
    for k, image, case in shard["items"]:
        words = list(dict.fromkeys(t.word for t in case.targets))
        x = model.latent_of(image)  # encoded once for both maps
        info = prompt_information(model, x, case.prompt, words=words, n=shard["n"], seed=shard["seed"] + k,
                                  batch_size=shard["batch_size"], form=shard["form"])
        att = word_attention_maps(model, x, case.prompt, words=words, n=shard["attention_n"], seed=shard["seed"] + k)
        concept = None
        if getattr(getattr(model, "family", None), "joint_attention", False):
            from .concept_attention import concept_attention_maps

            concept = concept_attention_maps(model, x, words, prompt=case.prompt, n=shard["attention_n"],
                                             seed=shard["seed"] + k)
        rows = []
        for j, t in enumerate(case.targets):
            cmi = info.words[t.word].map
            maps = {"cmi": cmi, "cmi smoothed": gaussian_filter(cmi, shard["smooth"], mode="nearest"),
                    "mi": info.prompt.map, "attention": att[t.word],
                    "attention+cmi": (minmax(att[t.word]) + minmax(cmi)) / 2, "whole image": None}
            if concept is not None:
                maps[CONCEPT_ATTENTION] = concept[t.word]
            c, a = score_maps(maps, t.mask)
            for name, extra in t.extra.items():
                a[f"cmi vs {name}"] = auroc(upsample(cmi, extra.shape[0]), extra)
            rows.append(plain({"image": k, "target": j, "word": t.word, "object": t.label, "prompt": case.prompt,
                               "auroc": a, "kind": t.kind, "cmi_value": info.words[t.word].value,
                               "iou": c}))
        out.append((k, rows))
    return out

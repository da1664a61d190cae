"""Reproduce the published tables: ``nbhelpers reproduce CONFIG`` (or ``python -m nbhelpers reproduce``).

A config (``configs/reproduce/*.yaml``) names one published table: the ``table`` it reproduces (a key of
:data:`TABLES`), the ``model``, the ``data`` (a loader of :mod:`nbhelpers.datasets` and its root folder), the
sample counts, the ``executor`` ("local", "ray" or {address, workers, ...} for a
:class:`~nbhelpers.executors.RayExecutor`) and the ``published`` numbers it is compared against (each
``{value: x}``, ``{low: a, high: b}`` for a published range, with an optional ``note``; or ``not stated``).
The result is a table, one row per metric: ours with a 95 % interval, the published number, the protocol
("published" or, where the published one peeks at the evaluation set, the "held-out" variant beside it).
It is written to ``<out>/table.csv`` and ``<out>/table.json``; the studies' own resumable tables live beside
it, so an interrupted reproduction resumes.

Command line overrides: ``--model``, ``--device``, ``--data-root``, ``--limit`` (first N items),
``--out``, ``--executor`` and ``--set KEY.SUB=VALUE`` (YAML values), e.g.
``nbhelpers reproduce configs/reproduce/infodecomp_localisation.yaml --data-root ~/coco --set samples.n=50``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NbhelpersError

CONFIG_KEYS = ("name", "paper", "table", "model", "device", "dtype", "data", "samples", "published", "executor",
               "out", "notes")


class ReproduceError(NbhelpersError, ValueError):
    """A reproduce config that cannot run as given (the message names the key and the fix)."""


@dataclass
class Reproduction:
    """One reproduced table: ``table`` (pandas: metric, protocol, ours, ci_low, ci_high, published, note),
    the config it ran and where it was written."""

    name: str
    table: object
    config: dict = field(default_factory=dict)
    out: Path | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": json.loads(self.table.to_json(orient="records")), "config": self.config}

    def __str__(self) -> str:
        return f"{self.name}\n{self.table.to_string(index=False)}"


# -- configs ------------------------------------------------------------------------------------------------
def load_config(path: str | Path) -> dict:
    """Read and check a reproduce config (YAML)."""
    from .yaml_config import read_mapping

    p = Path(path)
    options = sorted(q.name for q in (Path(__file__).resolve().parent.parent / "configs" / "reproduce").glob("*.yaml"))
    cfg = read_mapping(p, CONFIG_KEYS, ReproduceError, f"; the shipped ones are configs/reproduce/{options}")
    for key in ("name", "table", "model", "data"):
        if key not in cfg:
            raise ReproduceError(f"{p}: no {key!r}; a reproduce config names its table, model and data")
    if cfg["table"] not in TABLES:
        raise ReproduceError(f"{p}: table={cfg['table']!r} is not one we reproduce; known: {sorted(TABLES)}")
    _published(cfg)  # shape check
    return cfg


def override(cfg: dict, assignment: str) -> dict:
    """Apply ``KEY.SUB=VALUE`` (VALUE read as YAML) to a copy of ``cfg``."""
    import copy

    import yaml

    lhs, sep, rhs = assignment.partition("=")
    if not sep or not lhs.strip():
        raise ReproduceError(f"--set expects KEY.SUB=VALUE (e.g. samples.n=50), got {assignment!r}")
    out = copy.deepcopy(cfg)
    node, parts = out, lhs.strip().split(".")
    if parts[0] not in CONFIG_KEYS:
        raise ReproduceError(f"--set {assignment!r}: {parts[0]!r} is not a config key; allowed: {list(CONFIG_KEYS)}")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ReproduceError(f"--set {assignment!r}: {p!r} is not a mapping in the config")
    node[parts[-1]] = yaml.safe_load(rhs) if rhs.strip() else ""
    return out


def _published(cfg: dict) -> dict[str, dict]:
    """``published`` as {metric: {"value" | "low"/"high", "note"}} ("not stated" kept as a note)."""
    out = {}
    for metric, v in (cfg.get("published") or {}).items():
        if isinstance(v, (int, float)):
            v = {"value": float(v)}
        elif isinstance(v, str):
            v = {"note": v}
        if not isinstance(v, dict) or not ({"value", "note"} & set(v) or {"low", "high"} <= set(v)):
            raise ReproduceError(f"published.{metric}: give a number, {{value: x}}, {{low: a, high: b}} or "
                                 f"'not stated' (never a guess), got {v!r}")
        out[metric] = v
    return out


def _published_text(p: dict | None) -> str:
    if not p:
        return "not stated"
    if "value" in p:
        return f"{p['value']:g}"
    if "low" in p:
        return f"{p['low']:g}–{p['high']:g}"
    return str(p.get("note", "not stated"))


def _row(metric: str, protocol: str, ours: float, ci, published: dict | None, n: int, note: str = "") -> dict:
    lo, hi = ci if ci is not None else (np.nan, np.nan)
    pub = published or {}
    notes = "; ".join(x for x in (note, pub.get("note", "") if "value" in pub or "low" in pub else "") if x)
    return {"metric": metric, "protocol": protocol, "n": n, "ours": float(ours), "ci_low": float(lo),
            "ci_high": float(hi), "published": _published_text(published) if protocol == "published" else "—",
            "note": notes}


# -- running ------------------------------------------------------------------------------------------------
def _executor(cfg: dict):
    from .executors import RayExecutor, resolve_executor

    ex = cfg.get("executor", "local")
    if isinstance(ex, dict):
        return RayExecutor(**ex)
    return resolve_executor(ex)


def _data_root(cfg: dict) -> Path:
    data = cfg["data"]
    if not isinstance(data, dict) or "kind" not in data or "root" not in data:
        raise ReproduceError(f"data={data!r}: give {{kind: ..., root: FOLDER}} (e.g. kind: coco_it, root: ~/coco)")
    return Path(str(data["root"])).expanduser()


def run(cfg: dict, model=None) -> Reproduction:
    """Run a loaded config (see :func:`load_config`); ``model``: an already loaded model to use instead of
    ``cfg["model"]``."""
    from .model import load_model

    if model is None:
        model = load_model(cfg["model"], device=cfg.get("device", "auto"), dtype=cfg.get("dtype"))
    out = Path(cfg.get("out") or f"runs/reproduce/{cfg['name']}")
    out.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    rows = TABLES[cfg["table"]](cfg, model, out)
    table = pd.DataFrame(rows, columns=["metric", "protocol", "n", "ours", "ci_low", "ci_high", "published", "note"])
    rep = Reproduction(cfg["name"], table, cfg, out)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.json").write_text(json.dumps(rep.to_dict(), indent=1, default=str))
    return rep


def _samples(cfg: dict) -> dict:
    s = cfg.get("samples") or {}
    if not isinstance(s, dict):
        raise ReproduceError(f"samples={s!r}: give a mapping such as {{n: 100, seed: 0}}")
    return dict(s)


# -- the tables ---------------------------------------------------------------------------------------------
def _infodecomp_localisation(cfg: dict, model, out: Path) -> list[dict]:
    """Kong et al.'s COCO-IT localisation: mIoU (%) per map, best of 50 thresholds on the evaluation set
    (published) and a threshold chosen on the other half of the images (held-out), with AUROC."""
    from .datasets import coco
    from .localisation import localisation_study

    data, s = cfg["data"], _samples(cfg)
    if data["kind"] != "coco_it":
        raise ReproduceError(f"data.kind={data['kind']!r}: this table is measured on COCO-IT (kind: coco_it)")
    items = coco.coco_it(_data_root(cfg), split=data.get("split", "val2014"), limit=data.get("limit"))
    images, cases = coco.localisation_inputs(items, model.image_size)
    if not any(c.targets for c in cases):
        raise ReproduceError(f"no COCO-IT item under {_data_root(cfg)} has a word with a mask; check data.root")
    res = localisation_study(model, images, cases, executor=_executor(cfg), out=out / "localisation", **s)
    published = _published(cfg)
    rows = []
    for m, curves in res.iou_curves.items():
        for threshold, protocol, pub, note in (
                ("best", "published", published.get(m), "best of 50 thresholds chosen on the evaluation set itself"),
                ("calibrated", "held-out", None, "threshold chosen on the even-numbered images, scored on the odd-numbered")):
            value, lo, hi = (100 * v for v in res.miou_interval(m, threshold, seed=s.get("seed", 0)))
            rows.append(_row(f"mIoU % ({m})", protocol, value, None if np.isnan(lo) else (lo, hi), pub, len(curves),
                             note))
        mean, lo, hi = res.auroc_interval(m)
        rows.append(_row(f"AUROC ({m})", "threshold-free", mean, (lo, hi), None, len(res.records)))
    return rows


def _infodecomp_aro(cfg: dict, model, out: Path) -> list[dict]:
    """Kong et al.'s caption scoring on ARO: accuracy (%) of the true caption's information margin, Wilson
    95 % intervals."""
    from .captions import caption_scoring_study
    from .datasets import aro

    data, s = cfg["data"], _samples(cfg)
    if data["kind"] != "aro":
        raise ReproduceError(f"data.kind={data['kind']!r}: this table is measured on ARO (kind: aro)")
    published, rows = _published(cfg), []
    for kind in data.get("sets", ["relation", "attribution"]):
        items = aro.load_aro(_data_root(cfg), kind, limit=data.get("limit"))
        images, captions = aro.caption_inputs(items, model.image_size)
        study = caption_scoring_study(model, images, captions, executor=_executor(cfg), out=out / kind, **s)
        acc = study.accuracy()[kind]
        name = f"VG-{kind.capitalize()}"
        rows.append(_row(f"accuracy % ({name})", "published", 100 * acc["accuracy"],
                         tuple(100 * c for c in acc["ci95"]), published.get(name), acc["n"]))
    return rows


def _prompt_intervention(cfg: dict, model, out: Path) -> list[dict]:
    """Kong et al.'s prompt intervention: Pearson correlation of the change a word's removal makes with its CMI
    map (pixel level) and value (image level), bootstrap 95 % intervals. Items: COCO-IT, the first word."""
    from .datasets import coco
    from .intervention import intervention_study

    data, s = cfg["data"], _samples(cfg)
    if data["kind"] != "coco_it":
        raise ReproduceError(f"data.kind={data['kind']!r}: this config reads COCO-IT (kind: coco_it)")
    items = coco.coco_it(_data_root(cfg), split=data.get("split", "val2014"), limit=data.get("limit"))
    images, cases = coco.localisation_inputs(items, model.image_size)
    keep = [k for k, c in enumerate(cases) if c.targets]
    res = intervention_study(model, images[keep], [cases[k].prompt for k in keep],
                             [cases[k].targets[0].word for k in keep], **s)
    c = res.correlations(seed=s.get("seed", 0))
    published = _published(cfg)
    return [_row("Pearson r (pixel level)", "published", c["pixel_level"]["r"], c["pixel_level"]["ci95"],
                 published.get("pixel level"), c["n_images"]),
            _row("Pearson r (image level)", "published", c["image_level"]["r"], c["image_level"]["ci95"],
                 published.get("image level"), c["n_images"])]


def _pid_occupation_audit(cfg: dict, model, out: Path) -> list[dict]:
    """DiffusionPID's gender audit: redundancy of each group word with each occupation, normalised to [0, 1]
    across occupations, with bootstrap 95 % intervals over images."""
    from . import bias

    data, s = cfg["data"], _samples(cfg)
    if data.get("kind") != "prompt_lists":
        raise ReproduceError(f"data.kind={data.get('kind')!r}: this audit reads prompt lists (kind: prompt_lists, "
                             "subjects: LIST, group_words: [...])")
    subjects = bias.load_list(data["subjects"]) if isinstance(data["subjects"], str) else list(data["subjects"])
    if data.get("limit"):
        subjects = subjects[: int(data["limit"])]
    words = list(data["group_words"])
    rows_df = bias.pid_audit(model, subjects, words, out / "audit", executor=_executor(cfg), **s)
    summary = bias.pid_summary(rows_df, seed=s.get("seed", 0))
    published = _published(cfg)
    return [_row(f"redundancy, normalised ({r.group}, {r.subject})", "published", r["redundancy (normalised)"],
                 (r["ci_low (normalised)"], r["ci_high (normalised)"]), published.get(r.group), int(r.n),
                 f"{r.redundancy:.3g} nats") for _, r in summary.iterrows()]


def _segmentation_items(cfg: dict):
    from .datasets import segmentation

    data = cfg["data"]
    if data["kind"] == "imagenet_segmentation":
        names = data.get("names")
        if isinstance(names, str):  # a JSON file {wnid: word}
            names = json.loads(Path(names).expanduser().read_text())
        items = segmentation.load_imagenet_segmentation(_data_root(cfg), names=names, limit=data.get("limit"))
        unnamed = sorted({it.label for it in items if not it.word})
        if unnamed:
            raise ReproduceError(f"{len(unnamed)} synset(s) without a concept word (e.g. {unnamed[:3]}); give data.names: "
                                 "a JSON file or mapping {wnid: word} (gtsegs_ijcv.mat holds synset ids only)")
        return items
    if data["kind"] == "voc":
        return segmentation.load_voc(_data_root(cfg), split=data.get("split", "val"),
                                     single_class=bool(data.get("single_class", True)), limit=data.get("limit"))
    raise ReproduceError(f"data.kind={data['kind']!r}: ConceptAttention's benchmarks are imagenet_segmentation and voc")


def _average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of ``scores`` ranking the pixels of ``labels`` (mean precision at each positive)."""
    order = np.argsort(-scores.ravel(), kind="stable")
    y = labels.ravel()[order]
    if not y.any():
        return float("nan")
    hits = np.cumsum(y)
    return float((hits[y] / (np.flatnonzero(y) + 1)).mean())


def _conceptattention_segmentation(cfg: dict, model, out: Path) -> list[dict]:
    """ConceptAttention's zero-shot segmentation (Helbling et al.): each image's class word among the other
    concepts (``samples.concepts``, default ["background"]); a pixel is the class's when its map wins the
    softmax over concepts. Pixel accuracy, mean IoU of the two classes (object, rest) and average precision of
    the class's soft map, in %, per image then averaged, with bootstrap 95 % intervals over images. Needs an
    MMDiT (joint attention)."""
    from .concept_attention import concept_attention_maps
    from .datasets import square
    from .metrics import bootstrap_ci, iou, upsample

    family = getattr(model, "family", None)
    if not getattr(family, "joint_attention", False):
        raise ReproduceError(
            f"ConceptAttention needs a model whose text and image tokens share joint attention (an MMDiT: SD3, "
            f"Flux); {getattr(model, 'name', model)!r} ({getattr(family, 'title', type(model).__name__)}) attends "
            "to text by cross-attention. Set model: to an SD3 or Flux pipeline (e.g. --model flux-schnell)")
    s = _samples(cfg)
    others = list(s.pop("concepts", ["background"]))
    seed = int(s.pop("seed", 0))
    items = _segmentation_items(cfg)
    size = model.image_size
    acc, miou, ap = [], [], []
    from tqdm.auto import tqdm

    for k, it in enumerate(tqdm(items, desc="ConceptAttention", leave=False)):
        image, mask = square(it.image(), size, it.mask)
        concepts = [it.word] + [c for c in others if c != it.word]
        maps = concept_attention_maps(model, image, concepts, seed=seed + k, **s)
        up = np.stack([upsample(maps[c], size) for c in concepts])
        pred = up.argmax(0) == 0
        acc.append(100 * float((pred == mask).mean()))
        miou.append(100 * (iou(pred, mask) + iou(~pred, ~mask)) / 2)
        ap.append(100 * _average_precision(up[0], mask))
    published, rows = _published(cfg), []
    for name, vals in (("pixel accuracy", acc), ("mIoU", miou), ("mAP", ap)):
        v = np.asarray(vals, float)
        ci = bootstrap_ci(lambda i: np.nanmean(v[i]), len(v), 1000, seed) if len(v) > 1 else None
        rows.append(_row(f"{name} %", "published", np.nanmean(v), ci, published.get(name), len(v)))
    return rows


TABLES = {
    "infodecomp_localisation": _infodecomp_localisation,
    "infodecomp_aro": _infodecomp_aro,
    "prompt_intervention": _prompt_intervention,
    "pid_occupation_audit": _pid_occupation_audit,
    "conceptattention_segmentation": _conceptattention_segmentation,
}


# -- command line -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nbhelpers reproduce", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a YAML file such as configs/reproduce/infodecomp_localisation.yaml")
    ap.add_argument("--model", help="model name or folder (overrides model:)")
    ap.add_argument("--device", help="auto, cpu, cuda, mps")
    ap.add_argument("--data-root", help="the data set's root folder (overrides data.root)")
    ap.add_argument("--limit", type=int, help="only the first N items of the data set")
    ap.add_argument("--out", help="results folder (default runs/reproduce/NAME)")
    ap.add_argument("--executor", help="local or ray (the running Ray cluster)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.SUB=VALUE", help="override any config value")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config)
        for key, value in (("model", a.model), ("device", a.device), ("data.root", a.data_root),
                           ("data.limit", a.limit), ("out", a.out), ("executor", a.executor)):
            if value is not None:
                cfg = override(cfg, f"{key}={value}")
        for assignment in a.set:
            cfg = override(cfg, assignment)
        rep = run(cfg)
    except NbhelpersError as e:
        print(f"nbhelpers reproduce: {e}", file=sys.stderr)
        return 2
    print(rep)
    print(f"\nwritten: {rep.out / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

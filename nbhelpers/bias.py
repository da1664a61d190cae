"""Bias audits: subjects (occupations) × group dimensions (gender, ethnicity), with statistics a
reviewer accepts, resumable on disk.

:func:`run_audit` generates ``n`` images per (template, subject) cell, reads each image's group
attributes with a ``reader`` (any classifier of images; the toy world supplies its own),
and appends one row per image to ``<out>/images.csv`` (PNG files beside it) after every batch, so an
interrupted audit resumes where it stopped with nothing redone or lost. Each prompt has its own seeds
(:func:`cell_seeds`), so the cells' samples are independent. Optionally it measures, per
subject and group word, the PID redundancy between the group word and the subject word in "a <group>
<subject>" (how much of what the group word says about the image the subject word already says; see
:mod:`nbhelpers.pid`), into ``<out>/pid.csv``.

:func:`association_table` turns the rows into, per subject × dimension × group: the rate with a
bootstrap 95 % interval, the reference rate (``"parity"``: 1/number of groups; or ``"others"``: the
pooled rate of the other subjects), the effect size (Cohen's h), a permutation p-value (parity: random
relabelling of each image's group under exchangeable labels; others: permuting subject labels), and
Holm- and Benjamini–Hochberg-corrected p-values; ``flagged`` = Holm-corrected p < ``alpha``.

The audit knows no world: the toy world's reader, dimensions, planted truth and its own pictures behind
the model interface (``WorldPictures``) live in the world's ``audit`` module, a client of this one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import NbhelpersError
from .executors import resolve_executor, shards_of
from .tables import ResumableTable
from .validate import validated

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts"


class AuditError(NbhelpersError, ValueError):
    """A bad audit specification or an out-of-date results folder."""


# -- prompt lists ------------------------------------------------------------------------------------------
def load_list(name: str) -> list[str]:
    """A prompt list shipped in ``data/prompts/<name>.txt`` (one entry per line, # comments)."""
    path = DATA_DIR / f"{name}.txt"
    if not path.exists():
        options = sorted(p.stem for p in DATA_DIR.glob("*.txt"))
        raise AuditError(f"no prompt list {name!r} in {DATA_DIR}; available: {options}")
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


# -- the runner ------------------------------------------------------------------------------------------
@dataclass
class Audit:
    """An audit's results folder: ``images`` (one row per image) and ``pid`` (one row per PID estimate)."""

    folder: Path
    spec: dict

    def images(self):
        import pandas as pd

        p = self.folder / "images.csv"
        return pd.read_csv(p) if p.exists() else pd.DataFrame()

    def pid(self):
        import pandas as pd

        p = self.folder / "pid.csv"
        return pd.read_csv(p) if p.exists() else pd.DataFrame()


IMAGE_KEY = ("template", "subject", "seed")
PID_KEY = ("subject", "group", "seed")


@validated
def run_audit(model, subjects: list[str], out: str | Path, templates=("a {subject}",), n: int = 40, seed: int = 0,
              steps: int = 20, guidance: float = 3.0, reader=None, dimensions: dict | None = None,
              group_words: list[str] | None = None, n_pid: int = 0, pid_samples: int = 24, batch: int = 32,
              save_images: bool = True, seeds: str = "independent", executor="local") -> Audit:
    """Run (or resume) an audit into folder ``out``; see the module docstring.

    ``seeds``: "independent" (default) gives every prompt its own seeds, ``seed + i`` plus an offset
    hashed from the prompt (:func:`cell_seeds`), so no two cells share starting noise; "shared" draws
    every prompt from seeds ``seed, ..., seed + n - 1``. The starting noise largely decides a diffusion
    model's colour and composition, so shared seeds make the cells' errors move together (a seed set
    that leans one way drags every subject along) and, with several templates, make a subject's pooled
    images dependent, which the tests here assume they are not; keep "shared" for side-by-side pictures.

    ``reader(image) -> {dimension: group or None}`` and ``dimensions`` ({dimension: group values} the
    reader returns) are required: they say what is audited. ``templates`` contain ``{subject}``. ``group_words`` and ``n_pid`` > 0 add the PID redundancy
    of each group word with each subject in "a {group} {subject}" on ``n_pid`` generated images.

    ``executor``: "local" (this process), "ray" (the running Ray cluster) or a
    :class:`nbhelpers.executors.RayExecutor`. A shard is one ``batch`` of generations, read by ``reader`` on the
    worker (so the reader must be importable there, or picklable by Ray); rows and PNGs are written here as
    shards finish, each row once, and the table equals the local executor's for the same settings."""
    from .text import check_prompt

    if reader is None or not callable(reader):
        raise AuditError(f"reader={reader!r}: give a function image -> {{dimension: group}}, e.g. the toy world's "
                         "audit.read_groups, or a classifier for a real model")
    dimensions = _check_dimensions(dimensions)
    executor = resolve_executor(executor)
    out = Path(out)
    spec = dict(subjects=list(subjects), templates=list(templates), n=n, seed=seed, steps=steps, guidance=guidance,
                dimensions={k: list(v) for k, v in dimensions.items()}, group_words=list(group_words or []),
                n_pid=n_pid, pid_samples=pid_samples, model=getattr(model, "name", "?"), seeds=seeds)
    if seeds not in ("independent", "shared"):
        raise AuditError(f"seeds={seeds!r}; use 'independent' (each prompt its own seeds) or 'shared'")
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if old != spec:
            changed = sorted(k for k in spec if old.get(k) != spec[k])
            raise AuditError(f"{out} holds an audit with other settings (differs in {changed}); resume with the same "
                             "settings, or give a new folder")
    spec_path.write_text(json.dumps(spec, indent=1))
    for t in templates:
        if "{subject}" not in t:
            raise AuditError(f"template {t!r} lacks '{{subject}}'; write e.g. 'a photo of a {{subject}}'")
    prompts = [(t, s, t.format(subject=s)) for t in templates for s in subjects]
    for _, _, p in prompts:
        check_prompt(p)
        model.tokenize(p)  # too long / bad words fail now, not after an hour
    table = ResumableTable(out / "images.csv", IMAGE_KEY)
    todo = [(t, s, p, sd) for t, s, p in prompts for sd in cell_seeds(p, seed, n, seeds) if (t, s, sd) not in table]
    shards = [dict(cells=chunk, steps=steps, guidance=guidance, reader=reader, dimensions=list(dimensions),
                   images=save_images) for chunk in shards_of(todo, batch)]
    bar = tqdm(total=len(prompts) * n, initial=len(prompts) * n - len(todo), desc="audit images", mininterval=2)
    for _, results in executor.map(model, _audit_shard, shards):
        rows = []
        for row, im in results:
            if save_images:
                from PIL import Image

                cell = hashlib.sha1(f"{row['template']}|{row['subject']}".encode()).hexdigest()[:10]
                path = out / "images" / cell / f"{row['seed']}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(im).save(path)
                row["image"] = str(path.relative_to(out))
            rows.append(row)
        table.append(rows)  # saved as it goes: an interruption loses at most the shards in flight
        bar.update(len(results))
    bar.close()
    if group_words and n_pid > 0:
        _run_pid(model, subjects, group_words, out, n_pid, pid_samples, seed, steps, guidance, seeds, executor)
    return Audit(out, spec)


def _audit_shard(model, shard: dict) -> list[tuple[dict, np.ndarray | None]]:
    """One batch of an audit (on whichever worker): generate the cells' images, read each; returns
    ``(row, image or None)`` per cell, the image uint8 (H, W, 3) when it is to be saved."""
    cells = shard["cells"]
    gen = model.generate([c[2] for c in cells], seed=[c[3] for c in cells], steps=shard["steps"],
                         guidance=shard["guidance"])
    out = []
    for (t, s, p, sd), im in zip(cells, gen.images):
        att = shard["reader"](im)
        row = {"template": t, "subject": s, "seed": sd, "prompt": p}
        row.update({d: att.get(d) for d in shard["dimensions"]})
        out.append((row, np.asarray(im) if shard["images"] else None))
    return out


def _check_dimensions(dimensions) -> dict:
    if not dimensions or not isinstance(dimensions, dict) or any(len(tuple(g)) < 2 for g in dimensions.values()):
        raise AuditError(f"dimensions={dimensions!r}: give {{dimension: (group, group, ...)}} with at least two groups "
                         "each, e.g. {'gender': ('female', 'male')} (an audit's own: audit.spec['dimensions'])")
    return {k: tuple(v) for k, v in dimensions.items()}


def cell_seeds(prompt: str, seed: int, n: int, seeds: str = "independent") -> list[int]:
    """The ``n`` generation seeds of one audit cell: ``seed + i``, plus (``seeds="independent"``) an
    offset in [0, 2**32) hashed from the prompt, stable across runs and machines."""
    offset = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) if seeds == "independent" else 0
    return [offset + seed + i for i in range(n)]


@validated
def pid_audit(model, subjects: list[str], group_words: list[str], out: str | Path, n_pid: int = 4,
              pid_samples: int = 24, seed: int = 0, steps: int = 20, guidance: float = 3.0,
              seeds: str = "independent", executor="local"):
    """The PID part of an audit alone (DiffusionPID's occupation audit): for each subject and group word,
    ``n_pid`` images of "a <group> <subject>", each decomposed (redundancy of the group word with the subject
    word, :func:`nbhelpers.pid.partial_information`), into ``<out>/pid.csv`` (resumable, any executor).
    Returns the rows (a DataFrame); :func:`pid_summary` turns them into per-subject redundancies."""
    import pandas as pd

    from .tables import study_folder

    if n_pid < 1:
        raise AuditError(f"n_pid={n_pid}: give at least one image per (subject, group word)")
    if seeds not in ("independent", "shared"):
        raise AuditError(f"seeds={seeds!r}; use 'independent' (each prompt its own seeds) or 'shared'")
    words = list(group_words)
    if not words:
        raise AuditError("group_words=[]: give the group words whose redundancy with each subject is measured, "
                         "e.g. ['female', 'male']")
    spec = dict(study="pid_audit", subjects=list(subjects), group_words=words, n_pid=n_pid,
                pid_samples=pid_samples, seed=seed, steps=steps, guidance=guidance, seeds=seeds,
                model=getattr(model, "name", "?"))
    out = study_folder(out, spec, AuditError)
    for s in subjects:
        for g in words:
            model.tokenize(f"a {g} {s}")  # too long / bad words fail now
    _run_pid(model, subjects, words, out, n_pid, pid_samples, seed, steps, guidance, seeds, resolve_executor(executor))
    return pd.read_csv(out / "pid.csv")


def pid_summary(rows, n_boot: int = 2000, seed: int = 0):
    """Per subject × group word: mean redundancy (nats) with a bootstrap 95 % interval over images, and the
    same normalised to [0, 1] across subjects (min-max of the means per group word, as DiffusionPID reports;
    the interval mapped by the same affine map)."""
    import pandas as pd

    from .metrics import bootstrap_ci

    out = []
    for (s, g), grp in rows.groupby(["subject", "group"], sort=True):
        r = grp["redundancy"].to_numpy(float)
        lo, hi = bootstrap_ci(lambda i: r[i].mean(), len(r), n_boot, seed) if len(r) > 1 else (np.nan, np.nan)
        out.append({"subject": s, "group": g, "n": len(r), "redundancy": float(r.mean()), "ci_low": lo, "ci_high": hi})
    table = pd.DataFrame(out)
    for g, grp in table.groupby("group"):
        lo, hi = grp.redundancy.min(), grp.redundancy.max()
        scale = (hi - lo) if hi > lo else 1.0
        for c in ("redundancy", "ci_low", "ci_high"):
            table.loc[grp.index, f"{c} (normalised)"] = (grp[c] - lo) / scale
    return table


def _run_pid(model, subjects, group_words, out: Path, n_pid, samples, seed, steps, guidance, seeds, executor):
    table = ResumableTable(out / "pid.csv", PID_KEY)
    cells = [(s, g, sd) for s in subjects for g in group_words for sd in cell_seeds(f"a {g} {s}", seed, n_pid, seeds)
             if (s, g, sd) not in table]
    shards = [dict(cell=c, samples=samples, steps=steps, guidance=guidance) for c in cells]
    bar = tqdm(total=len(cells), desc="audit PID", mininterval=2)
    for _, row in executor.map(model, _pid_shard, shards):
        table.append([row])
        bar.update(1)
    bar.close()


def _pid_shard(model, shard: dict) -> dict:
    """One PID estimate of an audit (on whichever worker): generate "a <group> <subject>" and decompose."""
    from .pid import partial_information

    s, g, sd = shard["cell"]
    prompt = f"a {g} {s}"
    image = model.generate(prompt, seed=sd, steps=shard["steps"], guidance=shard["guidance"]).images[0]
    r = partial_information(model, image, prompt, g, s, context="none", n=shard["samples"], seed=sd)
    return {"subject": s, "group": g, "seed": sd, "prompt": prompt,
            "redundancy": r.values["redundancy"], "redundancy_se": r.stderr["redundancy"],
            "i_group": r.info["i1"].value, "i_subject": r.info["i2"].value, "i_joint": r.info["i12"].value,
            "redundant_share": r.values["redundancy"] / max(r.info["i1"].value, 1e-9)}


# -- statistics ------------------------------------------------------------------------------------------
def cohens_h(p: float, p0: float) -> float:
    """Cohen's h effect size of a proportion p against p0 (0.2 small, 0.5 medium, 0.8 large)."""
    return float(2 * np.arcsin(np.sqrt(p)) - 2 * np.arcsin(np.sqrt(p0)))


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error control). Written here because scipy
    offers only false-discovery-rate corrections (``false_discovery_control``: BH, BY) and
    statsmodels' ``multipletests`` would be a dependency for these eight lines."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    m = len(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false-discovery-rate control): scipy's
    ``false_discovery_control``."""
    from scipy.stats import false_discovery_control

    p = np.asarray(pvalues, float)
    return false_discovery_control(p, method="bh") if len(p) else p


def _perm_pvalue_parity(x: np.ndarray, k: int, p0: float, n_perm: int, rng) -> float:
    """Two-sided randomisation p-value of the rate of group k among labels ``x`` under H0: each image
    is in group k with probability p0 independently (labels exchangeable with the null draw)."""
    obs = abs((x == k).mean() - p0)
    sims = rng.random((n_perm, len(x))) < p0
    null = np.abs(sims.mean(1) - p0)
    return float((1 + (null >= obs - 1e-12).sum()) / (n_perm + 1))


def _perm_pvalue_others(is_g: np.ndarray, in_subject: np.ndarray, n_perm: int, rng) -> float:
    """Two-sided permutation p-value of the rate difference subject vs others, permuting subject labels.
    For a binary outcome the subject's count under a random permutation is hypergeometric, so the
    permutations are drawn from that distribution directly (same test, no sorting)."""
    n, n_s = len(is_g), int(in_subject.sum())
    good = int(is_g.sum())
    obs = abs(is_g[in_subject].mean() - is_g[~in_subject].mean())
    k = rng.hypergeometric(good, n - good, n_s, size=n_perm)
    null = np.abs(k / n_s - (good - k) / (n - n_s))
    return float((1 + (null >= obs - 1e-12).sum()) / (n_perm + 1))


def association_table(images, dimensions: dict | None = None, reference: str = "parity", alpha: float = 0.05,
                      n_boot: int = 2000, n_perm: int = 10000, seed: int = 0):
    """Per subject × dimension × group: rate, bootstrap 95 % CI, reference, Cohen's h, permutation
    p-value, Holm and BH adjusted p-values, ``flagged`` (Holm < alpha). ``images``: the audit's rows
    (a DataFrame with ``subject`` and one column per dimension). Images where the reader found nothing
    for a dimension are left out of that dimension (counted in ``n_unread``)."""
    import pandas as pd

    if reference not in ("parity", "others"):
        raise AuditError(f"reference must be 'parity' or 'others', not {reference!r}")
    dimensions = _check_dimensions(dimensions)
    rng = np.random.default_rng(seed)
    rows = []
    for dim, groups in dimensions.items():
        if dim not in images:
            raise AuditError(f"the audit has no column {dim!r}; its columns are {list(images.columns)}")
        read = images[images[dim].isin(groups)]
        labels = read[dim].map({g: i for i, g in enumerate(groups)}).to_numpy()
        subjects_col = read["subject"].to_numpy()
        for subj in sorted(images["subject"].unique()):
            mask = subjects_col == subj
            x = labels[mask]
            n_unread = int((images["subject"] == subj).sum() - mask.sum())
            for k, g in enumerate(groups):
                if len(x) == 0:
                    continue
                rate = float((x == k).mean())
                boots = (x[rng.integers(0, len(x), (n_boot, len(x)))] == k).mean(1)
                lo, hi = np.quantile(boots, [0.025, 0.975])
                if reference == "parity":
                    p0 = 1.0 / len(groups)
                    pval = _perm_pvalue_parity(x, k, p0, n_perm, rng)
                else:
                    p0 = float((labels[~mask] == k).mean()) if (~mask).any() else np.nan
                    pval = _perm_pvalue_others((labels == k).astype(float), mask, n_perm, rng)
                rows.append({"subject": subj, "dimension": dim, "group": g, "n": int(len(x)), "n_unread": n_unread,
                             "rate": rate, "ci_low": float(lo), "ci_high": float(hi), "reference": p0,
                             "cohens_h": cohens_h(rate, p0), "p_value": pval})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # one test per subject × dimension (for two groups the two rows are the same test): correct over those
    first = table.groupby(["subject", "dimension"]).head(1).index
    holm_adj = pd.Series(holm(table.loc[first, "p_value"]), index=first)
    bh_adj = pd.Series(benjamini_hochberg(table.loc[first, "p_value"]), index=first)
    key = table[["subject", "dimension"]].apply(tuple, axis=1)
    holm_by = dict(zip(key[first], holm_adj))
    bh_by = dict(zip(key[first], bh_adj))
    table["p_holm"] = key.map(holm_by).to_numpy()
    table["p_bh"] = key.map(bh_by).to_numpy()
    table["flagged"] = table["p_holm"] < alpha
    table["_size"] = table["cohens_h"].abs()
    return table.sort_values(["flagged", "_size"], ascending=False).drop(columns="_size").reset_index(drop=True)


@dataclass
class AuditSummary:
    """Flagged (subject, dimension) pairs with the group they lean to, and the full table."""

    table: object = field(repr=False)
    flagged: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"flagged": self.flagged}


def summarise(table) -> AuditSummary:
    """The flagged subjects: for each flagged (subject, dimension), the group it is drawn as more
    often than the reference, with rate and interval."""
    flagged = []
    for (subj, dim), grp in table[table.flagged].groupby(["subject", "dimension"]):
        top = grp.loc[(grp.rate - grp.reference).idxmax()]
        flagged.append({"subject": subj, "dimension": dim, "group": top.group, "rate": float(top.rate),
                        "ci": [float(top.ci_low), float(top.ci_high)], "p_holm": float(top.p_holm),
                        "cohens_h": float(top.cohens_h)})
    return AuditSummary(table, flagged)


# -- comparisons: against a known truth, against another audit, across guidance ------------------------------
def truth_table(summary: AuditSummary, truth: dict):
    """The audit's flags set against a known truth ``{(subject, dimension): (group, rate)}`` (the toy
    world's planted biases): one row per true bias with the measured rate and interval when flagged.
    ``.attrs``: ``every_true_bias_flagged``, ``extra_flags`` (flagged but not in the truth) and
    ``true_rates_in_intervals`` (every flagged true bias's interval covers its true rate)."""
    import pandas as pd

    flagged = {(f["subject"], f["dimension"]): f for f in summary.flagged}
    table = pd.DataFrame([{"subject": s, "dimension": d, "true group": g, "true rate": r, "flagged": (s, d) in flagged,
                           "measured rate": flagged.get((s, d), {}).get("rate", np.nan),
                           "95% interval": flagged.get((s, d), {}).get("ci")} for (s, d), (g, r) in truth.items()])
    table.attrs.update(every_true_bias_flagged=set(truth) <= set(flagged), extra_flags=sorted(set(flagged) - set(truth)),
                       true_rates_in_intervals=all(f["ci"][0] <= truth[k][1] <= f["ci"][1]
                                                   for k, f in flagged.items() if k in truth))
    return table


def compare_audits(data_table, model_table):
    """Two audits of the same subjects (e.g. the training pictures and the model) side by side, for
    the groups the model leans towards (rate above its reference); ``.attrs["model_only"]``: the
    (subject, dimension) pairs flagged in the model but not in the data, the biases the model added."""
    both = data_table.merge(model_table, on=["subject", "dimension", "group"], suffixes=(" (data)", " (model)"))
    shown = both[both["rate (model)"] > both["reference (model)"]][
        ["subject", "dimension", "group", "rate (data)", "flagged (data)", "rate (model)", "flagged (model)"]]
    shown = shown.sort_values(["flagged (model)", "subject"], ascending=[False, True]).reset_index(drop=True)
    flagged_in = {name: {(f["subject"], f["dimension"]) for f in summarise(t).flagged}
                  for name, t in (("data", data_table), ("model", model_table))}
    shown.attrs.update(data_flagged=sorted(flagged_in["data"]),
                       model_only=sorted(flagged_in["model"] - flagged_in["data"]))
    return shown


def audits_side_by_side(tables: dict, truth: dict | None = None):
    """Audits of several models (same subjects, dimensions and reference) side by side: one row per
    (subject, dimension, group) that is a known bias (``truth`` {(subject, dimension): (group, rate)}) or that
    any audit flags (the group it leans to); columns ``planted`` (the true rate, when known) and, per model,
    its rate, 95 % interval ("lo–hi") and whether it is flagged (Holm). ``.attrs["flagged"]``: {model: flagged
    (subject, dimension) pairs}; ``.attrs["missed"]``: {model: known biases it does not flag};
    ``.attrs["extra"]``: {model: flags that are not known biases}."""
    import pandas as pd

    if not tables:
        raise AuditError("audits_side_by_side needs at least one audit table, e.g. {'toy': table}")
    truth = truth or {}
    flagged = {name: {(f["subject"], f["dimension"]): f["group"] for f in summarise(t).flagged}
               for name, t in tables.items()}
    keys = {(s, d, g) for (s, d), (g, _) in truth.items()}
    keys |= {(s, d, g) for f in flagged.values() for (s, d), g in f.items()}
    rows = []
    for s, d, g in sorted(keys):
        row = {("", "subject"): s, ("", "dimension"): d, ("", "group"): g,
               ("", "planted"): truth[(s, d)][1] if truth.get((s, d), (None,))[0] == g else np.nan}
        for name, t in tables.items():
            hit = t[(t.subject == s) & (t.dimension == d) & (t.group == g)]
            if hit.empty:
                row.update({(name, "rate"): np.nan, (name, "95% CI"): "", (name, "flagged"): False})
                continue
            r = hit.iloc[0]
            row.update({(name, "rate"): float(r.rate), (name, "95% CI"): f"{r.ci_low:.2f}–{r.ci_high:.2f}",
                        (name, "flagged"): bool(r.flagged)})
        rows.append(row)
    out = pd.DataFrame(rows)
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["model", "value"])
    out = out.set_index([("", "subject"), ("", "dimension"), ("", "group")])
    out.index.names = ["subject", "dimension", "group"]
    out.attrs.update(flagged={name: sorted(f) for name, f in flagged.items()},
                     missed={name: sorted(set(truth) - set(f)) for name, f in flagged.items()},
                     extra={name: sorted(set(f) - set(truth)) for name, f in flagged.items()})
    return out


def rates_by_guidance(tables: dict, subjects):
    """Each subject's leaning (the groups drawn above their reference in the first table) followed
    across audits at several guidance scales: ``tables`` {guidance: association table}; a long table
    with a ``guidance`` column (rates with intervals)."""
    import pandas as pd

    first = next(iter(tables.values()))
    leaning = first[first.subject.isin(list(subjects)) & (first.rate > first.reference)][["subject", "dimension", "group"]]
    return pd.concat([t.merge(leaning).assign(guidance=g) for g, t in tables.items()], ignore_index=True)


def truth_frame(truth: dict):
    """``{(subject, dimension): (group, rate)}`` as a table with columns subject, dimension, group, planted."""
    import pandas as pd

    return pd.DataFrame([{"subject": s, "dimension": d, "group": g, "planted": r} for (s, d), (g, r) in truth.items()],
                        columns=["subject", "dimension", "group", "planted"])


def true_rates_in_intervals(table, truth: dict):
    """Rows of an association table for the true biases ``{(subject, dimension): (group, rate)}``, with
    the true rate beside the measured one; ``.attrs["all_covered"]``: every interval covers its true rate."""
    rows = table.merge(truth_frame(truth))[["subject", "dimension", "group", "planted", "rate", "ci_low", "ci_high"]]
    rows.attrs["all_covered"] = bool(rows.ci_low.le(rows.planted).all() and rows.planted.le(rows.ci_high).all())
    return rows

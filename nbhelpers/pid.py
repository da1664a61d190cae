"""Partial information decomposition (PID) of two prompt words, after DiffusionPID (Dewan et al., 2024).

For an image x and two words y1, y2 of a prompt with context c (the rest of the prompt for the
conditional PID, "CPID"; nothing for the plain PID), three information terms come from one shared
(α, ε) draw and one batched UNet call per batch (see ``nbhelpers.immse``):

    i1 = i(x; y1 | c),   i2 = i(x; y2 | c),   i12 = i(x; y1, y2 | c).

**Redundancy measure: minimum specific information (Williams & Beer's I_min).** At the level of a
population, R = Σ_x p(x) min_k I_spec(x; Y_k) with the specific information
I_spec(x; Y_k) = E_{y_k ~ p(y_k|x)} i(x; y_k) (:func:`williams_beer_pid`). For one image and the words
actually in its prompt, the specific informations are the observed pointwise terms, so

    R = min(i1, i2),  U1 = i1 - R,  U2 = i2 - R,  S = i12 - i1 - i2 + R = i12 - max(i1, i2)

at image level (from the totals) and, separately, per pixel (from the maps; pixel maps of R, U, S do
not sum to the image-level values because the minimum is taken per pixel). Pointwise values can be
negative (the standard form) and are reported as they are; figures may clip and say so. I_min is
known to over-state redundancy for independent sources (the "copy" case: R = 1 bit, S = 1 bit).
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .immse import InfoResult, LogSNRSampler, combined_stderr, information_terms
from .cache import cached
from .text import RepeatedWordWarning
from .validate import ArgumentError, validated

TERMS = ("redundancy", "unique1", "unique2", "synergy")
CONTEXTS = ("rest", "none")


def decompose(i1: float, i2: float, i12: float) -> dict:
    """Minimum-information PID of three (pointwise) information values: R, U1, U2, S (same units).
    Works elementwise on arrays (per-pixel maps)."""
    r = np.minimum(i1, i2)
    return {"redundancy": r, "unique1": i1 - r, "unique2": i2 - r, "synergy": i12 - i1 - i2 + r}


def williams_beer_pid(p_joint: np.ndarray, i1, i2, i12) -> dict:
    """Population-level PID under I_min for discrete (x, y1, y2) with joint ``p_joint[x, y1, y2]``.

    ``i1(x, y1)``, ``i2(x, y2)``, ``i12(x, y1, y2)``: pointwise informations (exact, or estimated by
    a denoiser). Returns I(X; Y1), I(X; Y2), I(X; Y1, Y2) and R, U1, U2, S, in the units given."""
    p = np.asarray(p_joint, np.float64)
    px = p.sum((1, 2))
    out = {"I1": 0.0, "I2": 0.0, "I12": 0.0, "redundancy": 0.0}
    for x in range(p.shape[0]):
        if px[x] == 0:
            continue
        p_y1 = p[x].sum(1) / px[x]
        p_y2 = p[x].sum(0) / px[x]
        spec1 = sum(p_y1[a] * i1(x, a) for a in range(p.shape[1]) if p_y1[a] > 0)
        spec2 = sum(p_y2[b] * i2(x, b) for b in range(p.shape[2]) if p_y2[b] > 0)
        out["I1"] += px[x] * spec1
        out["I2"] += px[x] * spec2
        out["redundancy"] += px[x] * min(spec1, spec2)
        out["I12"] += sum(p[x, a, b] * i12(x, a, b) for a, b in itertools.product(range(p.shape[1]), range(p.shape[2]))
                          if p[x, a, b] > 0)
    r = out["redundancy"]
    out.update(unique1=out["I1"] - r, unique2=out["I2"] - r, synergy=out["I12"] - out["I1"] - out["I2"] + r)
    return out


@dataclass
class PIDResult:
    """Image-level PID terms (value, stderr) and per-pixel maps, in ``units``; the three information
    terms they come from; the four prompts used."""

    words: tuple[str, str]
    context: str
    prompts: dict
    info: dict  # "i1", "i2", "i12" -> InfoResult
    values: dict
    stderr: dict
    maps: dict
    units: str = "nats"
    params: dict = field(default_factory=dict)

    @property
    def redundant_share(self) -> float:
        """R / i12: the share of the two words' joint information that either word alone carries
        (≈ 1 for synonyms, at most ½ for words with independent information)."""
        return float(self.values["redundancy"] / self.info["i12"].value) if self.info["i12"].value > 0 else float("nan")

    def to(self, units: str) -> "PIDResult":
        if units == self.units:
            return self
        f = {"bits": 1 / np.log(2), "nats": np.log(2)}[units]
        return PIDResult(self.words, self.context, dict(self.prompts), {k: r.to(units) for k, r in self.info.items()},
                         {k: v * f for k, v in self.values.items()}, {k: v * f for k, v in self.stderr.items()},
                         {k: m * f for k, m in self.maps.items()}, units, dict(self.params))

    def table(self):
        import pandas as pd

        names = {"redundancy": "redundancy R", "unique1": f"unique to '{self.words[0]}'",
                 "unique2": f"unique to '{self.words[1]}'", "synergy": "synergy S"}
        rows = [{"term": names[k], "value": self.values[k], "stderr": self.stderr[k], "units": self.units} for k in TERMS]
        rows += [{"term": f"i(x; {lab} | context)", "value": self.info[key].value, "stderr": self.info[key].stderr,
                  "units": self.units} for key, lab in (("i1", self.words[0]), ("i2", self.words[1]),
                                                         ("i12", " + ".join(self.words)))]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {"words": list(self.words), "context": self.context, "prompts": self.prompts, "units": self.units,
                "values": self.values, "stderr": self.stderr, "params": self.params}


@validated
def pid_prompts(model, prompt: str, word1: str, word2: str, context: str = "rest", policy: str = "delete") -> dict:
    """The four prompts of a (C)PID: context only, +word1, +word2, and both."""
    if context not in CONTEXTS:
        raise ArgumentError(f"context={context!r} is not one of {CONTEXTS}")
    tp = model.tokenize(prompt)
    hits1, hits2 = tp.find(word1), tp.find(word2)  # raise a clear error if missing
    w1, w2 = hits1[0], hits2[0]
    if context == "rest":
        for word, hits in ((word1, hits1), (word2, hits2)):
            if len(hits) > 1:
                warnings.warn(f"{word!r} occurs {len(hits)} times in {prompt!r}; the context removes every occurrence "
                              "(the result's params['occurrences'] records it)", RepeatedWordWarning, stacklevel=3)
    if set(w1.tokens) & set(w2.tokens):
        raise ArgumentError(f"word1={word1!r} and word2={word2!r} overlap in {prompt!r}; pick two different words")
    if context == "rest":
        without1 = model.remove_word(prompt, word1, policy=policy)
        without2 = model.remove_word(prompt, word2, policy=policy)
        return {"c": model.remove_word(without1, word2, policy=policy), "c+y1": without2, "c+y2": without1,
                "c+y1+y2": prompt}
    both = " ".join([word1, word2] if w1.start < w2.start else [word2, word1])
    return {"c": "", "c+y1": word1, "c+y2": word2, "c+y1+y2": both}


@validated
@cached("pid")
def partial_information(model, image, prompt: str, word1: str, word2: str, context: str = "rest", n: int = 64,
                        form: str = "orthogonal", seed: int = 0, policy: str = "delete", batch_size: int = 32,
                        sampler: LogSNRSampler | None = None) -> PIDResult:
    """PID of ``word1`` and ``word2`` about ``image`` (context "rest": conditioned on the rest of the
    prompt, CPID; "none": the two words alone against the empty prompt)."""

    prompts = pid_prompts(model, prompt, word1, word2, context, policy)
    x = model.latent_of(image)
    names = list(prompts)
    enc = model.encode_text([prompts[k] for k in names])
    conds = {k: enc[i : i + 1] for i, k in enumerate(names)}
    pairs = {"i1": ("c", "c+y1"), "i2": ("c", "c+y2"), "i12": ("c", "c+y1+y2")}
    res = information_terms(model, x, conds, pairs, n=n, form=form, seed=seed, sampler=sampler,
                            batch_size=batch_size, keep_map=True)
    i1, i2, i12 = (res[k].value for k in ("i1", "i2", "i12"))
    values = {k: float(v) for k, v in decompose(i1, i2, i12).items()}
    maps = decompose(res["i1"].map, res["i2"].map, res["i12"].map)
    # standard errors from the shared samples: R follows the smaller term, S = i12 - the larger one
    w = {k: res[k].weighted_samples() for k in pairs}
    small, large = ("i1", "i2") if i1 <= i2 else ("i2", "i1")
    per_sample = {"redundancy": w[small], "unique1": w["i1"] - w[small], "unique2": w["i2"] - w[small],
                  "synergy": w["i12"] - w[large]}
    stderr = {k: combined_stderr(v, res["i1"].logsnr, res["i1"].params) for k, v in per_sample.items()}
    tp = model.tokenize(prompt)
    occurrences = {word1: len(tp.find(word1)), word2: len(tp.find(word2))}
    return PIDResult((word1, word2), context, prompts, res, values, stderr, maps, "nats",
                     dict(res["i1"].params, prompt=prompt, policy=policy, occurrences=occurrences))


@validated
def pid_table(model, items: list[tuple], n: int = 32, seed: int = 0, context: str = "rest"):
    """PID of many (image, prompt, word1, word2, label) items: a pandas table with R, U1, U2, S, i12
    (nats) and the redundant share, one row per item."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for k, (image, prompt, w1, w2, label) in enumerate(tqdm(items, desc="PID", leave=False)):
        r = partial_information(model, image, prompt, w1, w2, context=context, n=n, seed=seed + k)
        rows.append({"label": label, "prompt": prompt, "word1": w1, "word2": w2, **r.values,
                     "i12": r.info["i12"].value, "redundant share": r.redundant_share})
    return pd.DataFrame(rows)


def discrete_pid_case(name: str) -> np.ndarray:
    """Joint p[x, y1, y2] of the textbook PID cases: "redundant" (x = y1 = y2), "unique" (x = y1, y2
    independent), "xor", "and", "copy" (x = (y1, y2)); sources are uniform independent bits unless
    stated."""
    p = np.zeros((4, 2, 2)) if name == "copy" else np.zeros((2, 2, 2))
    for a, b in itertools.product((0, 1), (0, 1)):
        if name == "redundant":
            if a == b:
                p[a, a, b] = 0.5
            continue
        x = {"unique": a, "xor": a ^ b, "and": a & b, "copy": 2 * a + b}[name]
        p[x, a, b] = 0.25
    return p


# Published I_min values in bits (Williams & Beer 2010; Griffith & Koch 2014)
PUBLISHED_IMIN_BITS = {
    "redundant": {"redundancy": 1.0, "unique1": 0.0, "unique2": 0.0, "synergy": 0.0},
    "unique": {"redundancy": 0.0, "unique1": 1.0, "unique2": 0.0, "synergy": 0.0},
    "xor": {"redundancy": 0.0, "unique1": 0.0, "unique2": 0.0, "synergy": 1.0},
    "and": {"redundancy": 0.311, "unique1": 0.0, "unique2": 0.0, "synergy": 0.5},
    "copy": {"redundancy": 1.0, "unique1": 0.0, "unique2": 0.0, "synergy": 1.0},
}


def textbook_errors(table):
    """From a long table (case, term, source "estimated"/"published", bits, stderr_bits) one row per
    (case, term): estimated, published, stderr_bits, error (estimated − published, bits) and z (error in
    standard errors; 0 where both are exact)."""
    wide = table.pivot_table(index=["case", "term"], columns="source", values=["bits", "stderr_bits"])
    out = wide["bits"][["estimated", "published"]].copy()
    out["stderr_bits"] = wide["stderr_bits"]["estimated"]
    out["error"] = out["estimated"] - out["published"]
    se = out["stderr_bits"].where(out["stderr_bits"] > 0)
    out["z"] = (out["error"] / se).fillna(0.0)
    return out.reset_index()


def discrete_pid_with_denoiser(p_joint: np.ndarray, support: torch.Tensor, n: int = 20000, seed: int = 0,
                               sampler: LogSNRSampler | None = None, n_draws: int = 400) -> dict:
    """Population-level I_min PID (nats) of a discrete case, with every pointwise term estimated by
    the I-MMSE estimator (standard form, unbiased per x) on the exact discrete denoiser.

    Returns the terms of :func:`williams_beer_pid` and, under ``"stderr"``, each term's standard error:
    the pointwise estimates are independent (each its own seed) with known standard errors, and the
    PID (a weighted sum with a minimum) is recomputed on ``n_draws`` normal perturbations of them
    (seed-fixed), so a check against the exact values can use a tolerance of a few standard errors."""
    from .closed_form import DiscreteDenoiser

    den = DiscreteDenoiser(support)
    p = np.asarray(p_joint, np.float64)
    px = p.sum((1, 2))
    sampler = sampler or LogSNRSampler(0.0, 2.0, 6.0)

    def logp(cond_p):
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(cond_p / cond_p.sum()))[None]

    cache: dict = {}

    def estimate(x, cond_p):
        key = (x, tuple(np.round(cond_p / cond_p.sum(), 12)))
        if key not in cache:
            r = information_terms(den, den.latents(x), {"w": logp(px), "s": logp(cond_p)}, {"i": ("w", "s")}, n=n,
                                  form="standard", sampler=sampler, batch_size=n, seed=seed + len(cache),
                                  keep_map=False, progress=False)["i"]
            cache[key] = (len(cache), r.value, r.stderr)
        return cache[key]

    def pid_with(values):
        def term(x, cond_p):
            return values[estimate(x, cond_p)[0]]

        return williams_beer_pid(p, lambda x, a: term(x, p[:, a, :].sum(1)), lambda x, b: term(x, p[:, :, b].sum(1)),
                                 lambda x, a, b: term(x, p[:, a, b]))

    out = williams_beer_pid(p, lambda x, a: estimate(x, p[:, a, :].sum(1))[1],
                            lambda x, b: estimate(x, p[:, :, b].sum(1))[1], lambda x, a, b: estimate(x, p[:, a, b])[1])
    entries = sorted(cache.values())
    value = np.array([v for _, v, _ in entries])
    se = np.array([s for _, _, s in entries])
    rng = np.random.default_rng(seed)
    draws = [pid_with(value + se * rng.standard_normal(len(value))) for _ in range(n_draws)]
    out["stderr"] = {k: float(np.std([d[k] for d in draws], ddof=1)) for k in out}
    return out

"""Information decomposition of prompts and images (Kong et al., ICLR 2024), on a ``DiffusionModel``.

- :func:`prompt_information`: in one shared pass, the MI of the whole prompt with the image,
  i(x; prompt), and for each word the conditional MI i(x; word | rest of the prompt), each with a
  per-pixel map and a standard error.
- :func:`mutual_information`, :func:`conditional_mutual_information`: the single terms.
- :func:`caption_scores`: rank candidate captions of one image by i(x; caption) (ARO-style).

Conditions: the null condition is the empty prompt (no classifier-free guidance anywhere); "the rest
of the prompt" removes the word by the model's removal policy (``"delete"`` by default, see
``nbhelpers.text``). Units: nats (``.to("bits")`` on results). The estimator itself is
:func:`nbhelpers.immse.information_terms`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .immse import FORMS, InfoResult, LogSNRSampler, combined_stderr, information_terms, mi_curve  # noqa: F401
from .cache import cached
from .text import RepeatedWordWarning
from .validate import ArgumentError, samples, validated


@dataclass
class PromptInformation:
    """``prompt``: i(x; prompt) against the null prompt (None when not asked for); ``words``: word →
    i(x; word | rest). Each result's ``form`` says whether it is the pointwise information."""

    prompt_text: str
    prompt: InfoResult | None
    words: dict[str, InfoResult]
    reduced_prompts: dict[str, str] = field(default_factory=dict)

    def to(self, units: str) -> "PromptInformation":
        return PromptInformation(self.prompt_text, None if self.prompt is None else self.prompt.to(units),
                                 {w: r.to(units) for w, r in self.words.items()},
                                 dict(self.reduced_prompts))

    def table(self):
        """A pandas table: term, value, stderr, units."""
        import pandas as pd

        rows = [] if self.prompt is None else [
            {"term": f"{self.prompt.symbol}(x; '{self.prompt_text}')", "value": self.prompt.value,
             "stderr": self.prompt.stderr, "units": self.prompt.units, "form": self.prompt.form}]
        rows += [{"term": f"{r.symbol}(x; {w} | rest)", "value": r.value, "stderr": r.stderr, "units": r.units,
                  "form": r.form} for w, r in self.words.items()]
        return pd.DataFrame(rows)


@validated(rules={"n": samples})
@cached("info")
def prompt_information(model, image, prompt: str, words: list[str] | None = None, n: int | str = 64,
                       form: str = "standard", seed: int = 0, policy: str = "delete", batch_size: int = 32,
                       sampler: LogSNRSampler | None = None, keep_map: bool = True, include_prompt: bool = True,
                       target_stderr: float | None = None,
                       occurrence: dict[str, int] | None = None) -> PromptInformation:
    """MI of ``prompt`` and CMI of each of ``words`` (default: every distinct word of the prompt)
    with ``image``, all from the same ``n`` samples of (α, ε) and one batched UNet call per batch.

    Only the conditions the terms need are evaluated: the full prompt, each prompt without a word,
    and the empty prompt only when ``include_prompt`` (i(x; prompt) against the null prompt).
    ``form="standard"`` is the pointwise information of this image (unbiased); ``"orthogonal"`` is
    lower-variance and non-negative per pixel but is not the information of one image (results say
    which form they are). ``n="auto"`` with ``target_stderr`` (nats) samples until every term
    reaches that precision (see :func:`nbhelpers.immse.information_terms`).

    A word that occurs several times ("a red circle left of a red square") is removed at *every*
    occurrence unless ``occurrence`` picks one ({word: 0-based index}); each word's result records
    ``params["occurrences"]`` (how many there are) and ``params["removed"]`` ("all" or the index), and
    naming such a word without picking one warns (:class:`~nbhelpers.text.RepeatedWordWarning`)."""
    tp = model.tokenize(prompt)
    asked = words is not None
    if words is None:
        words = list(dict.fromkeys(w.text for w in tp.words))
    if not include_prompt and not words:
        raise ArgumentError("nothing to estimate: give words, or include_prompt=True for i(x; prompt)")
    occurrence = dict(occurrence or {})
    unknown = sorted(set(occurrence) - set(words))
    if unknown:
        raise ArgumentError(f"occurrence names {unknown}, which are not among the words asked for {words}")
    counts = {w: len(tp.find(w)) for w in words}  # raises WordNotInPromptError for a missing word
    for w in words:
        if asked and counts[w] > 1 and w not in occurrence:
            warnings.warn(f"{w!r} occurs {counts[w]} times in {prompt!r}; every occurrence is removed for its "
                          f"term. Pick one with occurrence={{{w!r}: 0}} (0-based)", RepeatedWordWarning, stacklevel=3)
    reduced = {w: model.remove_word(prompt, w, policy=policy, occurrence=occurrence.get(w)) for w in words}
    x = model.latent_of(image)
    names = (["null"] if include_prompt else []) + ["full"] + [f"-{w}" for w in words]
    texts = ([""] if include_prompt else []) + [prompt] + [reduced[w] for w in words]
    cond_all = model.encode_text(texts)
    conds = {nm: cond_all[i : i + 1] for i, nm in enumerate(names)}
    pairs = {"prompt": ("null", "full")} if include_prompt else {}
    pairs.update({f"word:{w}": (f"-{w}", "full") for w in words})
    res = information_terms(model, x, conds, pairs, n=n, form=form, seed=seed, sampler=sampler,
                            batch_size=batch_size, keep_map=keep_map, target_stderr=target_stderr)
    for r in res.values():
        r.params.update(prompt=prompt, policy=policy)
    for w in words:
        res[f"word:{w}"].params.update(occurrences=counts[w], removed=occurrence.get(w, "all"),
                                       reduced_prompt=reduced[w])
    return PromptInformation(prompt, res.get("prompt"), {w: res[f"word:{w}"] for w in words}, reduced)


@validated(rules={"n": samples})
def mutual_information(model, image, prompt: str, n: int | str = 64, form: str = "standard", seed: int = 0,
                       **kwargs) -> InfoResult:
    """i(x; prompt) in nats: what the prompt tells about this image, against the empty prompt
    (two conditions per sample). ``form="standard"``: the pointwise information (unbiased)."""
    return prompt_information(model, image, prompt, words=[], n=n, form=form, seed=seed, **kwargs).prompt


@validated(rules={"n": samples})
def conditional_mutual_information(model, image, prompt: str, word: str, n: int | str = 64,
                                   form: str = "standard", seed: int = 0, policy: str = "delete",
                                   occurrence: int | None = None, **kwargs) -> InfoResult:
    """i(x; word | rest of the prompt) in nats, with its per-pixel map: the prompt with and without
    the word (two conditions per sample; the empty prompt is not evaluated). A repeated word is
    removed everywhere unless ``occurrence`` (0-based) picks one (see :func:`prompt_information`)."""
    return prompt_information(model, image, prompt, words=[word], n=n, form=form, seed=seed, policy=policy,
                              include_prompt=False, occurrence=None if occurrence is None else {word: occurrence},
                              **kwargs).words[word]


@dataclass
class CaptionScores:
    """i(x; caption) for each candidate caption (nats), their standard errors, and the best."""

    captions: list[str]
    values: np.ndarray
    stderr: np.ndarray
    diff_stderr: np.ndarray  # stderr of (value - value of the best), from the shared noise
    form: str = "standard"

    @property
    def best(self) -> int:
        return int(np.argmax(self.values))


@validated
@cached("info")
def caption_scores(model, image, captions: list[str], n: int = 64, form: str = "standard", seed: int = 0,
                   batch_size: int = 32, sampler: LogSNRSampler | None = None) -> CaptionScores:
    """Score candidate captions of one image by i(x; caption); all captions share one noise draw, so
    their differences are estimated far more precisely than each value.

    The default is the standard form: with shared noise the difference of two captions' scores is
    then the difference of their denoising errors, which a caption that conflicts with the image
    raises. The orthogonal form ``||ε̂(z) − ε̂(z|caption)||²`` grows with *any* change a caption
    makes to the prediction, a conflicting one included, so it ranks conflicting captions high
    (measured in lesson 01 and ``tests/test_captions.py``)."""
    if not captions:
        raise ArgumentError("captions=[]: give at least one caption to score")
    x = model.latent_of(image)
    cond_all = model.encode_text([""] + list(captions))
    conds = {"null": cond_all[:1]}
    conds.update({f"c{i}": cond_all[i + 1 : i + 2] for i in range(len(captions))})
    pairs = {f"c{i}": ("null", f"c{i}") for i in range(len(captions))}
    res = information_terms(model, x, conds, pairs, n=n, form=form, seed=seed, sampler=sampler,
                            batch_size=batch_size, keep_map=False)
    rs = [res[f"c{i}"] for i in range(len(captions))]
    values = np.array([r.value for r in rs])
    weighted = np.stack([r.weighted_samples() for r in rs])
    best = int(np.argmax(values))
    diff_se = np.array([combined_stderr(w - weighted[best], rs[0].logsnr, rs[0].params) for w in weighted])
    return CaptionScores(list(captions), values, np.array([r.stderr for r in rs]), diff_se, form)


@validated
@cached("info")
def caption_margins(model, image, true_caption: str, others: list[str], n: int = 32, form: str = "standard",
                    seed: int = 0, batch_size: int = 32, sampler: LogSNRSampler | None = None) -> list[InfoResult]:
    """For each caption in ``others``: i(x; true) − i(x; other), estimated directly as the information
    term with ``other`` as the weak condition and ``true_caption`` as the strong one. With shared noise
    this equals the difference of the two captions' scores exactly, and needs no empty prompt (one
    condition fewer than :func:`caption_scores`). Positive: the true caption explains the image better."""
    if not others:
        raise ArgumentError("others=[]: give at least one other caption to compare with")
    x = model.latent_of(image)
    enc = model.encode_text([true_caption] + list(others))
    conds = {"true": enc[:1]}
    conds.update({f"o{i}": enc[i + 1 : i + 2] for i in range(len(others))})
    res = information_terms(model, x, conds, {f"o{i}": (f"o{i}", "true") for i in range(len(others))}, n=n,
                            form=form, seed=seed, sampler=sampler, batch_size=batch_size, keep_map=False)
    return [res[f"o{i}"] for i in range(len(others))]


def forms_table(denoiser, x: torch.Tensor, weak, strong, exact: np.ndarray | None = None, n: int = 2000,
                seed: int = 0, sampler: LogSNRSampler | None = None):
    """Both forms of the pointwise information of each sample in ``x`` (N, C, H, W) alone, beside the
    exact value when known (e.g. ``GaussianDenoiser.pointwise_mi``): a pandas table with one row per
    sample (nats). Shows that the standard form is the information of *this* sample and the
    orthogonal form is not (it only agrees on average over samples)."""
    import pandas as pd

    rows = []
    for j in range(x.shape[0]):
        cj = lambda c: c if c is None or c.shape[0] == 1 else c[j : j + 1]  # noqa: E731
        row = {"sample": j}
        if exact is not None:
            row["exact log p(x|y)/p(x)"] = float(exact[j])
        for form in FORMS[::-1]:
            r = information_terms(denoiser, x[j : j + 1], {"w": cj(weak), "s": cj(strong)}, {"t": ("w", "s")}, n=n,
                                  form=form, seed=seed + j, sampler=sampler, keep_map=False)["t"]
            row[f"{r.symbol} ({form})"], row[f"± ({form})"] = r.value, r.stderr
        rows.append(row)
    return pd.DataFrame(rows).set_index("sample")

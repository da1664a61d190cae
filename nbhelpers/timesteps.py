"""How an image forms step by step (after Park, Ju & Lee 2024, "Explaining the diffusion process",
and DAAM's per-step cross-attention).

- :func:`trace`: one generation with every step's latent x_t, noise estimate and predicted clean
  image (decoded lazily), and each word's cross-attention map at every step (conditional branch).
- :func:`word_relevance`: per step and word, (a) gradient-weighted attention relevance: the attention
  probabilities times the gradient of the text's effect ``||ε̂(z|prompt) − ε̂(z|∅)||²`` with respect to
  them, rectified, summed over pixels, heads and the word's sub-tokens and averaged over layers; and
  (b) influence: ``mean ||ε̂(z|prompt) − ε̂(z|prompt without the word)||²``, the per-step integrand of
  the word's orthogonal conditional MI (see :mod:`nbhelpers.info`); :func:`stage_shares` averages
  the words' shares over a stage's steps.
- :func:`prediction_change`: how much the predicted clean image moves from one step to the next.
- :func:`step_schedule`: uniform, early- or late-focused (exponentially spaced) step indices.
- :func:`concept_emergence`: at each step, which attributes the predicted clean image already shows
  (as read by the ``reader`` passed in: any image classifier; the toy world supplies its checker's
  ``emergence_reader``), and the step each one settles.

Steps are indexed 0 … S−1 from pure noise to the last step; every result carries the steps' log-SNRs
(nats). All UNet passes of one analysis go in one batch (``max_batch`` splits it). Saliency at one
step (DF-RISE, DF-CAM) and its faithfulness are in :mod:`nbhelpers.saliency`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .attention import AttentionStore, attention_probs_with_grad, capture_cross_attention
from .cache import cached
from .errors import WordNotInPromptError
from .validate import ArgumentError, seeds as seed_list, validated


# -- schedules ----------------------------------------------------------------------------------------
def step_schedule(n_steps: int, n: int, focus: str = "uniform") -> list[int]:
    """``n`` distinct step indices out of ``n_steps``: evenly spaced (``"uniform"``), or exponentially
    spaced so that they crowd the start (``"early"``: the noisy, semantic steps) or the end
    (``"late"``: the detail steps)."""
    if focus not in ("uniform", "early", "late"):
        raise ArgumentError(f"focus must be 'uniform', 'early' or 'late', not {focus!r}")
    if not 1 <= n <= n_steps:
        raise ArgumentError(f"n must be between 1 and n_steps={n_steps}, got {n}")
    if focus == "uniform":
        idx = np.linspace(0, n_steps - 1, n)
    else:
        idx = np.geomspace(1, n_steps, n) - 1  # 0 ... n_steps-1, dense near 0
    out = sorted({int(round(i)) for i in idx})
    k = 0
    while len(out) < n:  # rounding merged some: fill with the nearest free indices
        if k not in out:
            out.append(k)
        k += 1
    out = sorted(out)[:n]
    return out if focus != "late" else sorted(n_steps - 1 - i for i in out)


# -- a traced generation --------------------------------------------------------------------------------
@dataclass
class Trace:
    """One generation with its trajectory and per-step cross-attention.

    ``word_maps``: (S, W, h, w) mean cross-attention probability of each word (mean over its
    sub-tokens, layers and heads; conditional branch) at each step; ``logsnrs``: (S,) nats."""

    prompt: str
    seed: int
    words: list[str]
    generation: object = field(repr=False)
    word_maps: np.ndarray = field(repr=False)
    logsnrs: np.ndarray = field(repr=False)
    timesteps: np.ndarray = field(repr=False)
    params: dict = field(default_factory=dict)
    _decoded: dict = field(default_factory=dict, repr=False)

    @property
    def n_steps(self) -> int:
        return len(self.logsnrs)

    @property
    def image(self) -> np.ndarray:
        """The final image, uint8 (H, W, 3)."""
        return self.generation.images[0]

    def latent(self, step: int) -> torch.Tensor:
        """x_t at the start of ``step``, (1, C, h, w)."""
        return self.generation.trajectory[step].latent

    def images(self, which: str = "pred_x0") -> np.ndarray:
        """Decoded images of every step, uint8 (S, H, W, 3): ``"pred_x0"`` (predicted clean image)
        or ``"latent"`` (x_t). Decoded once, on first use."""
        if which not in ("pred_x0", "latent"):
            raise ArgumentError(f"which must be 'pred_x0' or 'latent', not {which!r}")
        if which not in self._decoded:
            lat = torch.cat([getattr(s, which) for s in self.generation.trajectory])
            self._decoded[which] = self.generation._model.decode(lat)
        return self._decoded[which]

    def word_map(self, word: str, step: int | None = None) -> np.ndarray:
        """(h, w) attention map of ``word`` at ``step`` (None: mean over steps)."""
        if word not in self.words:
            raise WordNotInPromptError(f"{word!r} is not among the traced words {self.words}")
        m = self.word_maps[:, self.words.index(word)]
        return m.mean(0) if step is None else m[step]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "words": self.words, "logsnrs": self.logsnrs.tolist(),
                "params": self.params}


def _words_of(model, prompt: str, words) -> tuple[object, list[str]]:
    tp = model.tokenize(prompt)
    if words is None:
        return tp, list(dict.fromkeys(w.text for w in tp.words))
    words = [words] if isinstance(words, str) else list(words)
    for w in words:
        tp.token_indices(w)  # raises WordNotInPromptError with advice
    return tp, words


@validated
@cached("timesteps")
def trace(model, prompt: str, seed: int = 0, steps: int = 20, guidance: float = 3.0, words=None,
          budget_mb: float = 256.0) -> Trace:
    """Generate ``prompt`` with the pipeline's own sampler, recording every step (see :class:`Trace`).
    Attention is captured through the attention-processor API (conditional rows only) and
    aggregated on the fly; only per-step word maps are kept."""
    tp, words = _words_of(model, prompt, words)
    store = AttentionStore(model.latent_shape[-2:], keep_steps="all", n_prompts=1, budget_mb=budget_mb)
    with capture_cross_attention(model, store, count_calls=True):
        gen = model.generate(prompt, seed=seed, steps=steps, guidance=guidance, trajectory=True)
    per_step = store.step_maps()
    columns = {w: model.word_positions(prompt, w) for w in words}
    maps = np.stack([np.stack([per_step[k][0, columns[w]].mean(0).numpy() for w in words])
                     for k in sorted(per_step)])
    logsnrs = np.array([s.logsnr for s in gen.trajectory])
    timesteps = np.array([s.timestep for s in gen.trajectory])
    return Trace(prompt, int(seed), words, gen, maps, logsnrs, timesteps,
                 dict(steps=steps, guidance=guidance, model=getattr(model, "name", "?")))


# -- word relevance per step ------------------------------------------------------------------------------
@dataclass
class StepRelevance:
    """Per step and word: ``attention`` (S, W) gradient-weighted attention relevance and
    ``attention_maps`` (S, W, h, w) its spatial form; ``influence`` (S, W), the mean squared change
    of the noise estimate when the word is removed (per latent element; the per-step integrand of
    the word's orthogonal CMI before the α weight). ``steps`` are the analysed step indices."""

    words: list[str]
    steps: list[int]
    logsnrs: np.ndarray
    attention: np.ndarray
    attention_maps: np.ndarray = field(repr=False)
    influence: np.ndarray = field(repr=False)

    def _columns(self, words) -> list[int]:
        words = self.words if words is None else [words] if isinstance(words, str) else list(words)
        for w in words:
            if w not in self.words:
                raise WordNotInPromptError(f"{w!r} is not among the analysed words {self.words}")
        return [self.words.index(w) for w in words]

    def shares(self, which: str = "attention", words=None) -> np.ndarray:
        """Each word's share of the step's total (rows sum to 1), (S, W). ``words`` (a subset, e.g.
        the content words): their columns only, renormalised so that they share the step among
        themselves, (S, len(words))."""
        v = getattr(self, which)
        sh = v / np.maximum(v.sum(1, keepdims=True), 1e-30)
        if words is None:
            return sh
        sh = sh[:, self._columns(words)]
        return sh / sh.sum(1, keepdims=True)

    def dominant(self, which: str = "attention", words=None) -> list[str]:
        """The word with the largest relevance at each analysed step (among ``words``, default all)."""
        cols = self._columns(words)
        return [self.words[cols[i]] for i in getattr(self, which)[:, cols].argmax(1)]

    def rows(self, steps) -> list[int]:
        """Row indices of the step indices ``steps`` (each must be one of :attr:`steps`)."""
        missing = [int(k) for k in steps if int(k) not in self.steps]
        if missing:
            raise ArgumentError(f"steps {missing} were not analysed; these were: {self.steps}")
        return [self.steps.index(int(k)) for k in steps]

    def to_dict(self) -> dict:
        return {"words": self.words, "steps": self.steps, "logsnrs": self.logsnrs.tolist(),
                "attention": self.attention.tolist(), "influence": self.influence.tolist()}


@validated(skip=("steps",))
@cached("timesteps")
def word_relevance(model, tr: Trace, steps: list[int] | None = None, layers: str | None = None,
                   max_batch: int = 64) -> StepRelevance:
    """Relevance of each traced word at each of ``steps`` (default: all) — see :class:`StepRelevance`.
    ``layers`` restricts the attention relevance to cross-attention layers whose name contains it."""
    steps = list(range(tr.n_steps)) if steps is None else [int(s) for s in steps]
    for s in steps:
        if not 0 <= s < tr.n_steps:
            raise ArgumentError(f"step {s} is outside 0..{tr.n_steps - 1}")
    tp = model.tokenize(tr.prompt)
    z = torch.cat([tr.latent(s) for s in steps])
    a = torch.tensor(tr.logsnrs[steps], dtype=torch.float64)
    S, W = len(steps), len(tr.words)
    cond = model.condition(tr.prompt)
    # the empty prompt and each word removed, all steps in one no-grad batch; the full prompt's ε̂
    # comes from the gradient pass below (computed once)
    prompts = [model.remove_word(tr.prompt, w) for w in tr.words]
    conds = torch.cat([model.null_condition(), model.condition(prompts)])  # (1 + W, L, D)
    zz = z.repeat_interleave(1 + W, 0)
    aa = a.repeat_interleave(1 + W)
    cc = conds.repeat(S, 1, 1)
    e = model.eps(zz, aa, cc, max_batch=max_batch).view(S, 1 + W, *z.shape[1:])
    e_null, e_removed = e[:, 0], e[:, 1:]
    e_full = torch.empty_like(e_null)
    token_groups = [model.word_positions(tr.prompt, w) for w in tr.words]
    rel = np.zeros((S, W))
    rel_maps = np.zeros((S, W, *model.latent_shape[-2:]))
    for i0 in range(0, S, max_batch):
        sl = slice(i0, min(S, i0 + max_batch))
        with attention_probs_with_grad(model, layers) as rec:
            e_c = model.eps(z[sl], a[sl], cond, grad=True)
            e_full[sl] = e_c.detach()
            score = (e_c - e_null[sl]).pow(2).sum()
            probs = [p for v in rec.values() for p in v]
            grads = torch.autograd.grad(score, probs)
        n_layers = len(probs)
        b = sl.stop - sl.start
        for p, g in zip(probs, grads):
            r = (p.detach() * g).clamp(min=0)  # (b·heads, N, L)
            heads = r.shape[0] // b
            r = r.view(b, heads, *r.shape[1:]).sum(1)  # (b, N, L)
            side = int(round(r.shape[1] ** 0.5))
            spatial = r.transpose(1, 2).reshape(b, r.shape[2], side, r.shape[1] // side)
            spatial = torch.nn.functional.interpolate(spatial, size=model.latent_shape[-2:], mode="bilinear",
                                                      align_corners=False)
            for j, idx in enumerate(token_groups):
                rel[sl, j] += r[:, :, idx].sum(dim=(1, 2)).numpy() / n_layers
                rel_maps[sl, j] += spatial[:, idx].sum(1).numpy() / n_layers
    # (b) influence: mean squared change of ε̂ when each word is removed
    influence = (e_removed - e_full[:, None]).pow(2).mean(dim=(2, 3, 4)).numpy()
    return StepRelevance(list(tr.words), steps, tr.logsnrs[steps], rel, rel_maps, influence)


def stage_shares(rel: StepRelevance, stages: dict, words=None, which: str = "influence") -> dict:
    """Per stage (name → step indices, e.g. an early and a late :func:`step_schedule`) and word: the
    mean over the stage's steps of the word's share of the step's total relevance ``which`` (the share
    among *all* analysed words, so that a stage's values need not sum to 1 when ``words`` is a subset;
    dimensionless). ``{stage: {word: share}}``."""
    cols = rel._columns(words)
    sh = rel.shares(which)
    return {name: {rel.words[c]: float(v) for c, v in zip(cols, sh[rel.rows(steps)][:, cols].mean(0))}
            for name, steps in stages.items()}


def prediction_change(images: np.ndarray, steps) -> float:
    """Mean absolute change of the predicted image from each of ``steps`` to the next step, averaged
    over pixels, channels and those steps (a step without a successor is skipped). ``images``: (S, H, W, 3)
    per step, e.g. ``Trace.images("pred_x0")``; the result is in the images' units (0-255 for uint8)."""
    images = np.asarray(images)
    pairs = [int(k) for k in steps if 0 <= int(k) < len(images) - 1]
    if not pairs:
        raise ArgumentError(f"none of the steps {list(steps)} has a next step among {len(images)} images")
    return float(np.mean([np.abs(images[k + 1].astype(float) - images[k].astype(float)).mean() for k in pairs]))


# -- concept emergence ------------------------------------------------------------------------------------
@dataclass
class Emergence:
    """Per image and attribute the step from which the predicted clean image shows the attribute
    it ends with (``settled``; S if never stable), and per step the fraction of images whose
    prediction already shows it (``curves``, attribute → (S,)). ``table()`` is the tidy version."""

    attributes: list[str]
    settled: np.ndarray  # (n_images, n_attributes) step index
    curves: dict
    logsnrs: np.ndarray
    prompts: list[str]
    final_correct: np.ndarray | None = None  # (n_images, n_attributes): final image matches the prompt

    def table(self):
        """pandas: one row per (prompt, attribute) with the settling step and its log-SNR."""
        import pandas as pd

        rows = []
        for i, p in enumerate(self.prompts):
            for j, att in enumerate(self.attributes):
                s = int(self.settled[i, j])
                rows.append({"prompt": p, "attribute": att, "settled_step": s,
                             "settled_logsnr": float(self.logsnrs[min(s, len(self.logsnrs) - 1)])})
        return pd.DataFrame(rows)

    def mean_settled(self) -> dict[str, float]:
        return {att: float(self.settled[:, j].mean()) for j, att in enumerate(self.attributes)}

    def order_test(self, earlier: str, later: str, n_boot: int = 2000, seed: int = 0) -> dict:
        """Is ``earlier`` settled before ``later``? Mean paired difference (steps) of later − earlier
        with a bootstrap 95 % interval over images, and the share of images where it holds."""
        from .metrics import bootstrap_ci

        d = self.settled[:, self.attributes.index(later)] - self.settled[:, self.attributes.index(earlier)]
        lo, hi = bootstrap_ci(lambda idx: float(d[idx].mean()), len(d), n_boot=n_boot, seed=seed)
        return {"mean_difference": float(d.mean()), "ci": (lo, hi), "share_earlier": float((d > 0).mean()),
                "share_tied": float((d == 0).mean())}

    def to_dict(self) -> dict:
        return {"attributes": self.attributes, "mean_settled": self.mean_settled(),
                "curves": {k: v.tolist() for k, v in self.curves.items()}, "logsnrs": self.logsnrs.tolist(),
                "n_images": len(self.prompts)}


def _emergence_readings(model, shard: dict) -> tuple[list, np.ndarray]:
    """One batch of :func:`concept_emergence`: generate ``shard["prompts"]`` with their seeds and read every
    step's predicted clean image and the final image. Returns (readings per image, log-SNRs per step)."""
    gen = model.generate(shard["prompts"], seed=shard["seeds"], steps=shard["steps"], guidance=shard["guidance"],
                         trajectory=True)
    reader = shard["reader"]
    logsnrs = np.array([s.logsnr for s in gen.trajectory])
    n = len(gen.prompts)
    x0 = model.decode(torch.cat([s.pred_x0 for s in gen.trajectory]))  # (S·n, H, W, 3), step-major
    per_step = x0.reshape(len(gen.trajectory), n, *x0.shape[1:])
    readings = []
    for b in range(n):
        seq = [reader(per_step[k, b]) for k in range(len(gen.trajectory))]
        seq.append(reader(gen.images[b]))  # the final image
        readings.append(seq)
    return readings, logsnrs


@validated(rules={"seeds": seed_list})
@cached("timesteps", ignore=("progress", "executor"))
def concept_emergence(model, prompts: list[str], seeds: list[int] | None = None, steps: int = 20,
                      guidance: float = 1.0, reader=None, attributes=("colour", "position", "size", "shape"),
                      batch: int = 32, executor="local") -> Emergence:
    """Generate each prompt (one seed each), read every step's predicted clean image with
    ``reader(image) -> {attribute: value} or None`` (required: e.g. the toy world's
    ``concepts.emergence_reader``, or any classifier of the attributes) and find
    when each attribute settles on its final value. The default ``guidance=1.0`` reads the model's own
    conditional predictions; with guidance, early predictions are extrapolations (they decode to
    distorted colours on the toy model). ``executor``: "local", "ray" or a
    :class:`nbhelpers.executors.RayExecutor`; one shard per ``batch`` of prompts, read on the worker (the reader
    must be importable or picklable there), the same result whatever the executor."""
    from .executors import resolve_executor
    if reader is None or not callable(reader):
        raise ArgumentError("concept_emergence needs reader=, a function image -> {attribute: value} or None that "
                         "reads the attributes in an image, e.g. the toy world's "
                         "concepts.emergence_reader (got "
                         f"{'nothing' if reader is None else type(reader).__name__})")
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ArgumentError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt")
    attributes = list(attributes)
    shards = [dict(prompts=list(prompts[i:i + batch]), seeds=seeds[i:i + batch], steps=steps, guidance=guidance,
                   reader=reader) for i in range(0, len(prompts), batch)]
    by_shard = {}
    for k, result in tqdm(resolve_executor(executor).map(model, _emergence_readings, shards), total=len(shards),
                          desc="emergence", disable=len(shards) <= 1):
        by_shard[k] = result
    readings = [seq for k in sorted(by_shard) for seq in by_shard[k][0]]  # per image: list over steps of dict|None
    logsnrs = by_shard[0][1]
    S = len(logsnrs)
    settled = np.full((len(prompts), len(attributes)), S)
    shows = np.zeros((len(prompts), len(attributes), S), bool)
    for i, seq in enumerate(readings):
        final = seq[-1]
        for j, att in enumerate(attributes):
            if final is None:
                continue
            ok = np.array([r is not None and r[att] == final[att] for r in seq[:-1]])
            shows[i, j] = ok
            bad = np.nonzero(~ok)[0]
            settled[i, j] = 0 if len(bad) == 0 else bad[-1] + 1
    curves = {att: shows[:, j].mean(0) for j, att in enumerate(attributes)}
    return Emergence(attributes, settled, curves, logsnrs, list(prompts))

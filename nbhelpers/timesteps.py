"""How an image forms step by step (after Park, Ju & Lee 2024, "Explaining the diffusion process",
and DAAM's per-step cross-attention).

- :func:`trace`: one generation with every step's latent x_t, noise estimate and predicted clean
  image (decoded lazily), and each word's cross-attention map at every step (conditional branch).
- :func:`word_relevance`: per step and word, (a) gradient-weighted attention relevance: the attention
  probabilities times the gradient of the text's effect ``||ε̂(z|prompt) − ε̂(z|∅)||²`` with respect to
  them, rectified, summed over pixels, heads and the word's sub-tokens and averaged over layers; and
  (b) influence: ``mean ||ε̂(z|prompt) − ε̂(z|prompt without the word)||²``, the per-step integrand of
  the word's orthogonal conditional MI (see :mod:`nbhelpers.info`).
- :func:`rise_saliency` (DF-RISE): random coarse masks on the latent at one step; the masked region is
  replaced by fresh noise (which carries no information and keeps the latent's statistics); each
  mask is scored by the similarity of the masked pass's predicted clean latent to the unmasked one;
  saliency = Σ score·mask / (N·p), i.e. normalised by the mask density.
- :func:`gradcam_saliency` (DF-CAM): class-activation maps on a UNet block at one step, for the
  similarity of the predicted clean latent to the final latent. By default HiResCAM's element-wise
  gradient × activation (its magnitude); ``weighting="gradcam"`` gives classic Grad-CAM.

The similarity is Pearson's correlation of the two latents (the cosine of their deviations from each
channel's spatial mean), not the raw cosine. A flat background carries no content but most of a latent's
energy, so a raw cosine is decided by the background: on the toy world DF-RISE with the raw cosine ranked
the object's pixels *below* a random map (AUROC 0.42-0.44 on 10 images), with the correlation at 0.70-0.78. Classic
Grad-CAM (channel-averaged gradients, rectified) picks the object or exactly its complement depending on
the signs of a few channels (AUROC 0.02 to 0.99 from image to image, mean 0.60); the element-wise
magnitude does not average signs away (AUROC ≥ 0.9 on every one of 20 images).
- :func:`faithfulness`: insertion and deletion curves on the latent in saliency order, each point
  scored with SSIM of the decoded prediction against the decoded unperturbed prediction, their AUCs,
  and the same for random orders as the baseline.
- :func:`step_schedule`: uniform, early- or late-focused (exponentially spaced) step indices.
- :func:`concept_emergence`: at each step, which attributes the predicted clean image already shows
  (as read by the ``reader`` passed in: any image classifier; the toy world supplies its checker's
  ``emergence_reader``), and the step each one settles.

Steps are indexed 0 … S−1 from pure noise to the last step; every result carries the steps' log-SNRs
(nats). All UNet passes of one analysis go in one batch (``max_batch`` splits it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .attention import AttentionStore, attention_probs_with_grad, capture_cross_attention
from .errors import WordNotInPromptError
from .hooks import module_hooks
from .metrics import ssim
from .cache import cached


# -- schedules ----------------------------------------------------------------------------------------
def step_schedule(n_steps: int, n: int, focus: str = "uniform") -> list[int]:
    """``n`` distinct step indices out of ``n_steps``: evenly spaced (``"uniform"``), or exponentially
    spaced so that they crowd the start (``"early"``: the noisy, semantic steps) or the end
    (``"late"``: the detail steps)."""
    if focus not in ("uniform", "early", "late"):
        raise ValueError(f"focus must be 'uniform', 'early' or 'late', not {focus!r}")
    if not 1 <= n <= n_steps:
        raise ValueError(f"n must be between 1 and n_steps={n_steps}, got {n}")
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
            raise ValueError(f"which must be 'pred_x0' or 'latent', not {which!r}")
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


@cached("timesteps")
def trace(model, prompt: str, seed: int = 0, steps: int = 20, guidance: float = 3.0, words=None,
          budget_mb: float = 256.0) -> Trace:
    """Generate ``prompt`` with the pipeline's own sampler, recording every step (see :class:`Trace`).
    Attention is captured through the attention-processor API (conditional rows only) and
    aggregated on the fly; only per-step word maps are kept."""
    tp, words = _words_of(model, prompt, words)
    store = AttentionStore(model.latent_shape[-2:], keep_steps="all", n_prompts=1, budget_mb=budget_mb)
    with capture_cross_attention(model.pipe.unet, store, count_calls=True):
        gen = model.generate(prompt, seed=seed, steps=steps, guidance=guidance, trajectory=True)
    per_step = store.step_maps()
    maps = np.stack([np.stack([per_step[k][0, tp.token_indices(w)].mean(0).numpy() for w in words])
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

    def shares(self, which: str = "attention") -> np.ndarray:
        """Each word's share of the step's total (rows sum to 1), (S, W)."""
        v = getattr(self, which)
        return v / np.maximum(v.sum(1, keepdims=True), 1e-30)

    def dominant(self, which: str = "attention") -> list[str]:
        """The word with the largest relevance at each analysed step."""
        return [self.words[i] for i in getattr(self, which).argmax(1)]

    def to_dict(self) -> dict:
        return {"words": self.words, "steps": self.steps, "logsnrs": self.logsnrs.tolist(),
                "attention": self.attention.tolist(), "influence": self.influence.tolist()}


@cached("timesteps")
def word_relevance(model, tr: Trace, steps: list[int] | None = None, layers: str | None = None,
                   max_batch: int = 64) -> StepRelevance:
    """Relevance of each traced word at each of ``steps`` (default: all) — see :class:`StepRelevance`.
    ``layers`` restricts the attention relevance to cross-attention layers whose name contains it."""
    steps = list(range(tr.n_steps)) if steps is None else [int(s) for s in steps]
    for s in steps:
        if not 0 <= s < tr.n_steps:
            raise ValueError(f"step {s} is outside 0..{tr.n_steps - 1}")
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
    token_groups = [tp.token_indices(w) for w in tr.words]
    rel = np.zeros((S, W))
    rel_maps = np.zeros((S, W, *model.latent_shape[-2:]))
    for i0 in range(0, S, max_batch):
        sl = slice(i0, min(S, i0 + max_batch))
        with attention_probs_with_grad(model.pipe.unet, layers) as rec:
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


# -- saliency at one step ---------------------------------------------------------------------------------
@dataclass
class Saliency:
    """A saliency map (h, w) at latent resolution for one step, with how it was made."""

    map: np.ndarray
    step: int
    logsnr: float
    method: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "step": self.step, "logsnr": self.logsnr, "params": self.params}


def _pred_x0(model, z, a, cond, max_batch):
    e = model.eps(z, a, cond, max_batch=max_batch)
    return model.pred_x0(z, a, e)


def _check_step(tr: Trace, step: int) -> int:
    step = int(step)
    if not 0 <= step < tr.n_steps:
        raise ValueError(f"step {step} is outside 0..{tr.n_steps - 1} (this trace has {tr.n_steps} steps)")
    return step


def _similarity_rows(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each latent in ``a`` (N, C, h, w) with ``ref`` (1, C, h, w): the cosine of
    their deviations from each channel's spatial mean (see the module docstring for why). Shape (N,)."""
    a = a - a.mean(dim=(2, 3), keepdim=True)
    ref = ref - ref.mean(dim=(2, 3), keepdim=True)
    return torch.nn.functional.cosine_similarity(a.flatten(1), ref.flatten(1).expand(a.shape[0], -1), dim=1)


@torch.no_grad()
@cached("timesteps")
def rise_saliency(model, tr: Trace, step: int, n_masks: int = 256, p: float = 0.5, cells: int = 4, seed: int = 0,
                  max_batch: int = 128) -> Saliency:
    """DF-RISE saliency at ``step`` (see the module docstring): ``n_masks`` random masks of
    ``cells``×``cells`` cells kept with probability ``p``, bilinearly upsampled with a random shift."""
    step = _check_step(tr, step)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    h, w = model.latent_shape[-2:]
    g = torch.Generator().manual_seed(int(seed))
    grid = (torch.rand(n_masks, 1, cells, cells, generator=g) < p).float()
    ch, cw = -(-h // cells), -(-w // cells)
    up = torch.nn.functional.interpolate(grid, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear",
                                         align_corners=False)
    dx = torch.randint(0, ch, (n_masks,), generator=g)
    dy = torch.randint(0, cw, (n_masks,), generator=g)
    masks = torch.stack([up[i, :, dx[i]:dx[i] + h, dy[i]:dy[i] + w] for i in range(n_masks)])  # (N, 1, h, w)
    z = tr.latent(step)
    a = float(tr.logsnrs[step])
    cond = model.condition(tr.prompt)
    noise = torch.randn(z.shape, generator=g)
    ref = _pred_x0(model, z, a, cond, max_batch)
    zm = masks * z + (1 - masks) * noise
    x0 = _pred_x0(model, zm, a, cond, max_batch)
    scores = _similarity_rows(x0, ref)
    sal = (scores.view(-1, 1, 1) * masks[:, 0]).sum(0) / (n_masks * p)
    return Saliency(sal.numpy(), step, a, "DF-RISE", dict(n_masks=n_masks, p=p, cells=cells, seed=seed))


def unet_blocks(model) -> list[str]:
    """Names of the UNet blocks :func:`gradcam_saliency` can explain."""
    unet = model.pipe.unet
    return ([f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"]
            + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))])


@cached("timesteps")
def gradcam_saliency(model, tr: Trace, step: int, block: str | list[str] | None = None,
                     weighting: str = "hires") -> Saliency:
    """DF-CAM at ``step`` on UNet ``block`` (a name from :func:`unet_blocks`, or a list whose
    max-normalised maps are averaged; default: the last up block but one), for the similarity (Pearson)
    of the predicted clean latent to the final latent. ``weighting``: ``"hires"`` (default) is
    |Σ_k ∂s/∂A_k ⊙ A_k| per location (HiResCAM's element-wise product, as a magnitude, since a
    similarity has no "class" whose sign would matter); ``"gradcam"`` is classic Grad-CAM,
    ReLU(Σ_k mean(∂s/∂A_k)·A_k). Map (h, w), ≥ 0, at latent resolution."""
    step = _check_step(tr, step)
    if weighting not in ("hires", "gradcam"):
        raise ValueError(f"weighting must be 'hires' or 'gradcam', not {weighting!r}")
    names = unet_blocks(model)
    blocks = [block] if isinstance(block, str) else list(block or [names[-2]])
    for b in blocks:
        if b not in names:
            raise ValueError(f"unknown UNet block {b!r}; choose one of {names}")
    modules = dict(model.pipe.unet.named_modules())
    acts: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:  # the blocks' activations, through the hook layer
        for b in blocks:
            stack.enter_context(module_hooks(modules[b], forward=lambda m, i, o, b=b: acts.__setitem__(
                b, o[0] if isinstance(o, tuple) else o)))
        z = tr.latent(step)
        a = float(tr.logsnrs[step])
        e = model.eps(z, a, model.condition(tr.prompt), grad=True)
        x0 = model.pred_x0(z, a, e)
        score = _similarity_rows(x0, tr.generation.latents[:1].to(x0)).sum()
        grads = torch.autograd.grad(score, [acts[b] for b in blocks])
    cams = []
    for b, grad in zip(blocks, grads):
        act = acts[b].detach()
        if weighting == "hires":
            cam = (grad * act).sum(1, keepdim=True).abs()
        else:
            cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=model.latent_shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[0, 0]
        cams.append(cam / cam.max() if len(blocks) > 1 and cam.max() > 0 else cam)
    params = dict(block=blocks if len(blocks) > 1 else blocks[0], weighting=weighting)
    return Saliency(torch.stack(cams).mean(0).numpy(), step, a, "DF-CAM", params)


# -- faithfulness -----------------------------------------------------------------------------------------
@dataclass
class Faithfulness:
    """Insertion and deletion curves (SSIM to the unperturbed prediction at each fraction of latent
    pixels inserted/deleted) in saliency order and for ``n_random`` random orders, and their AUCs.
    Deletion: lower AUC = more faithful; insertion: higher AUC = more faithful."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray = field(repr=False)  # (n_random, n_points)
    random_insertion: np.ndarray = field(repr=False)
    method: str = ""
    step: int = 0

    @staticmethod
    def _auc(x, y) -> float:
        return float(np.trapezoid(y, x))

    @property
    def deletion_auc(self) -> float:
        return self._auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> float:
        return self._auc(self.fractions, self.insertion)

    @property
    def random_deletion_auc(self) -> float:
        return float(np.mean([self._auc(self.fractions, r) for r in self.random_deletion]))

    @property
    def random_insertion_auc(self) -> float:
        return float(np.mean([self._auc(self.fractions, r) for r in self.random_insertion]))

    def to_dict(self) -> dict:
        return {"method": self.method, "step": self.step, "deletion_auc": self.deletion_auc,
                "insertion_auc": self.insertion_auc, "random_deletion_auc": self.random_deletion_auc,
                "random_insertion_auc": self.random_insertion_auc}


@torch.no_grad()
@cached("timesteps")
def faithfulness(model, tr: Trace, saliency: Saliency, n_points: int = 11, n_random: int = 4, seed: int = 0,
                 max_batch: int = 128) -> Faithfulness:
    """Insertion/deletion curves for ``saliency`` at its step (see :class:`Faithfulness`). Deleted
    latent pixels are replaced by fresh noise; insertion starts from that noise and puts the step's
    latent pixels back, most salient first. All perturbed passes share one batch."""
    step = saliency.step
    z = tr.latent(step)
    a = float(tr.logsnrs[step])
    h, w = z.shape[-2:]
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(z.shape, generator=g)
    orders = [np.argsort(-saliency.map.ravel(), kind="stable")]
    orders += [torch.randperm(h * w, generator=g).numpy() for _ in range(n_random)]
    fractions = np.linspace(0, 1, n_points)
    batch = []
    for order in orders:
        for kind in ("deletion", "insertion"):
            for f in fractions:
                keep = torch.zeros(h * w)
                keep[torch.from_numpy(order[: int(round(f * h * w))].copy())] = 1
                keep = keep.view(1, 1, h, w)
                batch.append(z * (1 - keep) + noise * keep if kind == "deletion" else noise * (1 - keep) + z * keep)
    cond = model.condition(tr.prompt)
    zb = torch.cat([z] + batch)
    images = model.decode(_pred_x0(model, zb, a, cond, max_batch))
    ref, rest = images[0], images[1:]
    scores = np.array([ssim(im, ref) for im in rest]).reshape(len(orders), 2, n_points)
    return Faithfulness(fractions, scores[0, 0], scores[0, 1], scores[1:, 0], scores[1:, 1], saliency.method, step)


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


@cached("timesteps")
def concept_emergence(model, prompts: list[str], seeds: list[int] | None = None, steps: int = 20,
                      guidance: float = 1.0, reader=None, attributes=("colour", "position", "size", "shape"),
                      batch: int = 32) -> Emergence:
    """Generate each prompt (one seed each), read every step's predicted clean image with
    ``reader(image) -> {attribute: value} or None`` (required: e.g. the toy world's
    ``concepts.emergence_reader``, or any classifier of the attributes) and find
    when each attribute settles on its final value. The default ``guidance=1.0`` reads the model's own
    conditional predictions; with guidance, early predictions are extrapolations (they decode to
    distorted colours on the toy model)."""
    if reader is None or not callable(reader):
        raise ValueError("concept_emergence needs reader=, a function image -> {attribute: value} or None that "
                         "reads the attributes in an image, e.g. the toy world's "
                         "concepts.emergence_reader (got "
                         f"{'nothing' if reader is None else type(reader).__name__})")
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt")
    attributes = list(attributes)
    readings = []  # per image: list over steps of dict|None
    logsnrs = None
    for i in tqdm(range(0, len(prompts), batch), desc="emergence", disable=len(prompts) <= batch):
        gen = model.generate(prompts[i:i + batch], seed=seeds[i:i + batch], steps=steps, guidance=guidance,
                             trajectory=True)
        logsnrs = np.array([s.logsnr for s in gen.trajectory])
        n = len(gen.prompts)
        x0 = model.decode(torch.cat([s.pred_x0 for s in gen.trajectory]))  # (S·n, H, W, 3), step-major
        per_step = x0.reshape(len(gen.trajectory), n, *x0.shape[1:])
        for b in range(n):
            seq = [reader(per_step[k, b]) for k in range(len(gen.trajectory))]
            seq.append(reader(gen.images[b]))  # the final image
            readings.append(seq)
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

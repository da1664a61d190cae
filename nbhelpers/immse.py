"""The I-MMSE information estimator over the Denoiser protocol, after Kong et al. (ICLR 2024).

For the Gaussian channel ``z_α = sqrt(σ(α))·x + sqrt(σ(-α))·ε`` (α = log-SNR, nats) and two
conditions ``c_weak ⊂ c_strong`` (e.g. the empty prompt and a caption, or a caption without a word
and the full caption), the pointwise information that ``c_strong`` adds about ``x`` is

- standard form (unbiased for one x):
  ``i = ½ ∫ E_ε[ ||ε - ε̂(z|c_weak)||² - ||ε - ε̂(z|c_strong)||² ] dα``
- orthogonal form (lower variance, non-negative per pixel; equal to the standard form in
  expectation over x, not for one x): ``iᵒ = ½ ∫ E_ε ||ε̂(z|c_weak) - ε̂(z|c_strong)||² dα``.

The integral over α is estimated by importance sampling from a truncated logistic (stratified), with
the same (α, ε) for every condition of one estimate (common random numbers) and all conditions of a
batch in one denoiser call. Pixel maps are the integrand per latent pixel, summed over channels, so a
map sums to its scalar. Everything is in nats; ``.to("bits")`` converts.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

FORMS = ("orthogonal", "standard")
LN2 = math.log(2.0)


# --- log-SNR sampling ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogSNRSampler:
    """Truncated logistic(loc, scale) on ``[loc - clip·scale, loc + clip·scale]``.

    ``sample(u)`` maps uniforms u ∈ (0, 1) to (α, weight) with weight = 1/density =
    ``scale·tanh(clip/2) / (σ(s)σ(-s))``, s = (α - loc)/scale, so that E[f(α)·weight] = ∫ f dα over
    the truncated range."""

    loc: float = 1.0
    scale: float = 2.0
    clip: float = 3.0

    @classmethod
    def for_model(cls, model, clip: float = 3.0, loc: float | None = None, scale: float | None = None):
        """loc/scale spanning the model's trained log-SNR range (``model.logsnr_range``) unless given."""
        rng = getattr(model, "logsnr_range", None)
        if rng is None:
            return cls(1.0 if loc is None else loc, 2.0 if scale is None else scale, clip)
        lo, hi = rng
        return cls((lo + hi) / 2 if loc is None else loc, (hi - lo) / (2 * clip) if scale is None else scale, clip)

    @property
    def range(self) -> tuple[float, float]:
        return (self.loc - self.clip * self.scale, self.loc + self.clip * self.scale)

    def sample(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = u.double()
        lo, hi = torch.sigmoid(torch.tensor(-self.clip, dtype=torch.float64)), torch.sigmoid(
            torch.tensor(self.clip, dtype=torch.float64))
        p = lo + u * (hi - lo)
        alpha = self.loc + self.scale * (torch.log(p) - torch.log1p(-p))
        return alpha, self.weight(alpha)

    def weight(self, alpha) -> torch.Tensor:
        """1 / density of the truncated logistic at ``alpha`` (float64 tensor)."""
        s = (torch.as_tensor(alpha, dtype=torch.float64) - self.loc) / self.scale
        return self.scale * math.tanh(self.clip / 2) / (torch.sigmoid(s) * torch.sigmoid(-s))

    @classmethod
    def of(cls, result: "InfoResult") -> "LogSNRSampler":
        """The sampler a result was estimated with."""
        p = result.params
        return cls(p["loc"], p["scale"], p["clip"])


def stratified_uniforms(n: int, generator: torch.Generator) -> torch.Tensor:
    """n uniforms, one in each of n equal strata of (0, 1), in random order."""
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    return u[torch.randperm(n, generator=generator)]


# --- results -----------------------------------------------------------------------------------------
@dataclass
class InfoResult:
    """An information estimate. ``value`` and ``stderr`` in ``units``; ``map``: (h, w) at latent
    resolution, summing to ``value`` (None if not kept); ``per_item``: one value per image when several
    were estimated at once; ``logsnr``/``gap``: every sample's α and unweighted integrand (the
    α-curve); ``params``: what was used."""

    value: float
    stderr: float
    units: str = "nats"
    map: np.ndarray | None = None
    per_item: np.ndarray | None = None
    logsnr: np.ndarray | None = None
    gap: np.ndarray | None = None
    params: dict = field(default_factory=dict)

    def to(self, units: str) -> "InfoResult":
        """The same estimate in "nats" or "bits"."""
        if units not in ("nats", "bits"):
            raise ValueError(f"units must be 'nats' or 'bits', not {units!r}")
        if units == self.units:
            return self
        f = 1 / LN2 if units == "bits" else LN2

        def sc(a):
            return None if a is None else a * f

        return InfoResult(self.value * f, self.stderr * f, units, sc(self.map), sc(self.per_item), self.logsnr,
                          sc(self.gap), dict(self.params))

    def upsampled_map(self, size: int) -> np.ndarray:
        """The map bilinearly upsampled to ``size``×``size`` pixels for display (per-pixel density
        rescaled so that it still sums to ``value``)."""
        if self.map is None:
            raise ValueError("this result kept no map; estimate with keep_map=True")
        m = torch.from_numpy(np.asarray(self.map, np.float64))[None, None]
        up = torch.nn.functional.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        return (up * (m.numel() / up.numel())).numpy()

    def __repr__(self) -> str:
        return f"InfoResult({self.value:.4g} ± {self.stderr:.2g} {self.units})"

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("map", "per_item", "logsnr", "gap"):
            if d[k] is not None:
                d[k] = np.asarray(d[k]).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InfoResult":
        d = dict(d)
        for k in ("map", "per_item", "logsnr", "gap"):
            if d.get(k) is not None:
                d[k] = np.asarray(d[k], dtype=np.float64)
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "InfoResult":
        return cls.from_dict(json.loads(Path(path).read_text()))


# --- the engine ----------------------------------------------------------------------------------------
def _take(cond, idx: torch.Tensor, n_items: int):
    """Rows ``idx`` of a per-item condition (batch n_items), or the single condition repeated."""
    if cond is None:
        return None
    if cond.shape[0] == 1:
        return cond.expand(len(idx), *cond.shape[1:])
    if cond.shape[0] != n_items:
        raise ValueError(f"a condition has batch {cond.shape[0]}; give 1 or one per image ({n_items})")
    return cond[idx.to(cond.device)]


@torch.no_grad()
def information_terms(denoiser, x: torch.Tensor, conds: dict[str, Any], pairs: dict[str, tuple[str, str]],
                      n: int = 100, form: str = "orthogonal", seed: int = 0, sampler: LogSNRSampler | None = None,
                      batch_size: int = 64, keep_map: bool = True, progress: bool | None = None,
                      stratified: bool = True) -> dict[str, InfoResult]:
    """Estimate several information terms of the same images with shared noise.

    ``x``: clean latents (N, C, H, W) (or one (C, H, W)); ``conds``: name → condition (batch 1 or N;
    None = unconditional); ``pairs``: label → (weak, strong) condition names, each giving
    i(x; strong | weak). ``n`` samples of (α, ε) per image, stratified in α, shared by all
    conditions (``stratified=False`` draws α independently, as the published code does); each
    denoiser call holds every condition for ``batch_size`` samples.
    Returns label → :class:`InfoResult` (for N > 1: value = mean over images, per_item set)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if x.ndim == 3:
        x = x[None]
    for label, (weak, strong) in pairs.items():
        for name in (weak, strong):
            if name not in conds:
                raise KeyError(f"pair {label!r} names condition {name!r}, which is not among {list(conds)}")
    sampler = sampler or LogSNRSampler.for_model(denoiser)
    names = list(conds)
    k_of = {nm: i for i, nm in enumerate(names)}
    n_items = x.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.cat([stratified_uniforms(n, gen) if stratified else torch.rand(n, generator=gen, dtype=torch.float64)
                   for _ in range(n_items)])
    alphas, weights = sampler.sample(u)
    item = torch.arange(n_items).repeat_interleave(n)
    total = n_items * n
    h, w = x.shape[-2:]
    per_sample = {lab: torch.empty(total, dtype=torch.float64) for lab in pairs}
    maps = {lab: torch.zeros(n_items, h, w, dtype=torch.float64) for lab in pairs} if keep_map else None
    K = len(names)
    step = max(1, batch_size)
    bar = tqdm(total=total, desc="information", disable=(total < 2000) if progress is None else not progress,
               leave=False)
    for s in range(0, total, step):
        idx = item[s : s + step]
        b = len(idx)
        a = alphas[s : s + step]
        wt = weights[s : s + step]
        x_b = x[idx].float()
        eps = torch.randn(x_b.shape, generator=gen)
        sa = torch.sigmoid(a).sqrt().float().view(-1, 1, 1, 1)
        sb = torch.sigmoid(-a).sqrt().float().view(-1, 1, 1, 1)
        z = sa * x_b + sb * eps
        cs = [_take(conds[nm], idx, n_items) for nm in names]
        if any(c is None for c in cs):
            if not all(c is None for c in cs):
                null = getattr(denoiser, "null_condition", None)
                if null is None:
                    raise ValueError("mixing None with other conditions needs denoiser.null_condition()")
                cs = [null().expand(b, *null().shape[1:]) if c is None else c for c in cs]
                cond = torch.cat(cs)
            else:
                cond = None
        else:
            cond = torch.cat(cs)
        e_hat = denoiser.eps(z.repeat(K, 1, 1, 1), a.repeat(K), cond).float().view(K, b, *x_b.shape[1:])
        for lab, (weak, strong) in pairs.items():
            ew, es = e_hat[k_of[weak]], e_hat[k_of[strong]]
            if form == "orthogonal":
                pix = (ew - es).pow(2).sum(1)
            else:
                pix = ((eps - ew).pow(2) - (eps - es).pow(2)).sum(1)
            pix = 0.5 * pix.double()  # (b, h, w): ½ × MMSE gap at α
            per_sample[lab][s : s + b] = pix.sum((1, 2))
            if keep_map:
                maps[lab].index_add_(0, idx, pix * wt.view(-1, 1, 1))
        bar.update(b)
    bar.close()
    out = {}
    params = dict(n=n, form=form, seed=seed, stratified=stratified, loc=sampler.loc, scale=sampler.scale, clip=sampler.clip,
                  n_images=n_items, batch_size=batch_size, denoiser_calls=math.ceil(total / step))
    for lab in pairs:
        gap = per_sample[lab]
        vals = gap * weights  # importance-weighted integrand: unbiased for ∫ ½ gap dα
        per_item = vals.view(n_items, n).mean(1)
        value = float(per_item.mean())
        stderr = float(vals.std(unbiased=True) / math.sqrt(total)) if total > 1 else float("nan")
        m = maps[lab] / n if keep_map else None
        out[lab] = InfoResult(value, stderr, "nats",
                              None if m is None else (m[0].numpy() if n_items == 1 else m.mean(0).numpy()),
                              per_item.numpy() if n_items > 1 else None, alphas.numpy(), gap.numpy(),
                              dict(params, pair=list(pairs[lab])))
    return out


def mi_curve(result: InfoResult, bins: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binned α-curve of a result: (bin centres, mean ½·MMSE gap, its standard error), in the
    result's units per unit of log-SNR."""
    a, g = np.asarray(result.logsnr), np.asarray(result.gap)
    edges = np.linspace(a.min(), a.max(), bins + 1)
    which = np.clip(np.digitize(a, edges) - 1, 0, bins - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    mean = np.array([g[which == i].mean() if (which == i).any() else np.nan for i in range(bins)])
    se = np.array([g[which == i].std() / max(1, (which == i).sum()) ** 0.5 if (which == i).sum() > 1 else np.nan
                   for i in range(bins)])
    return centres, mean, se

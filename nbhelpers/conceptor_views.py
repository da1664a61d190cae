"""Figures and the per-token slider for lesson 03 (concept decomposition). Figures draw what they are
given; the slider regenerates images through :mod:`nbhelpers.conceptor`. Headless (papermill,
``NBHELPERS_HEADLESS=1``) the slider draws its default state as an ordinary figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .plotting import image_grid
from .widgets import _show, is_headless  # noqa: F401  (is_headless re-exported for notebooks)


def decomposition_bars(dec, k: int | None = None, title: str | None = None):
    """Horizontal bars of the top-k coefficients α (largest on top)."""
    rows = dec.top(k)
    labels = [lab for lab, _ in rows][::-1]
    vals = [a for _, a in rows][::-1]
    fig, ax = plt.subplots(figsize=(5, 0.35 * len(rows) + 1.2))
    ax.barh(labels, vals, color="#4c72b0")
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    ax.set_xlabel("coefficient α (MLP output, unitless)")
    ax.set_title(title or f"'{dec.concept}' as a mixture of tokens (top {len(rows)})")
    ax.margins(x=0.2)
    fig.tight_layout()
    return fig


def training_figure(dec, k: int | None = None):
    """Left: the denoising loss per step (and a running mean); right: α of the final top-k tokens at each
    checkpoint, with the validation similarity that picked the best step."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    loss = np.asarray(dec.losses)
    if len(loss):
        ax1.plot(np.arange(1, len(loss) + 1), loss, lw=0.5, alpha=0.4, color="grey", label="per step")
        w = max(1, len(loss) // 20)
        ax1.plot(np.arange(w, len(loss) + 1), np.convolve(loss, np.ones(w) / w, mode="valid"), color="k",
                 label=f"running mean ({w})")
        ax1.legend(fontsize=7)
    ax1.set_xlabel("step")
    ax1.set_ylabel("denoising loss (ε-MSE)")
    ax1.set_title("training loss")
    hist = np.asarray(dec.alpha_history)
    for lab, _ in dec.top(k):
        ax2.plot(dec.history_steps, hist[:, dec.index(lab)], marker="o", ms=3, label=lab)
    ax2.axvline(dec.best_step, color="k", ls=":", lw=1)
    ax2.set_xlabel("step")
    ax2.set_ylabel("α")
    ax2.legend(fontsize=7, ncol=2)
    ax3 = ax2.twinx()
    ax3.plot(dec.history_steps, dec.val_similarity, color="grey", ls="--", lw=1)
    ax3.set_ylabel("validation similarity (dashed)", fontsize=8)
    ax2.set_title(f"coefficients; best step {dec.best_step} (dotted)")
    fig.tight_layout()
    return fig


def compare_rows(rows: dict, ncols: int | None = None, size: float = 1.4, suptitle: str | None = None):
    """Rows of images with the same seeds: ``{row title: images (N, H, W, 3)}``."""
    names = list(rows)
    n = max(len(rows[r]) for r in names)
    ncols = ncols or n
    fig, axes = plt.subplots(len(names), ncols, figsize=(size * ncols + 1.6, size * len(names) + 0.3), squeeze=False)
    for i, r in enumerate(names):
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(rows[r]):
                ax.imshow(rows[r][j], interpolation="nearest")
        axes[i, 0].set_ylabel(r, rotation=0, ha="right", va="center", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def single_image_figure(sid, title: str | None = None):
    """The full-mixture image of one seed, the image from the few kept tokens, and their weights."""
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.6), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, im, t in ((axes[0], sid.reference, "full mixture"), (axes[1], sid.image, f"{len(sid.tokens)} kept tokens")):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    labels = [lab for lab, _ in sid.tokens][::-1]
    axes[2].barh(labels, [a for _, a in sid.tokens][::-1], color="#dd8452")
    axes[2].set_xlabel("α")
    sims = f"; similarity after the last removal {sid.trace[-1]:.2f}" if sid.trace else ""
    axes[2].set_title(f"seed {sid.seed}: kept (threshold {sid.threshold}){sims}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def manipulation_grid(images: dict, scales, size: float = 1.5, title: str | None = None):
    """``{token: images (len(scales), H, W, 3)}``: one row per token, one column per weight scale."""
    rows = {f"{tok}": imgs for tok, imgs in images.items()}
    fig = compare_rows(rows, size=size, suptitle=title)
    for j, s in enumerate(scales):
        fig.axes[j].set_title(f"× {s:g}", fontsize=8)
    return fig


def token_sliders(model, dec, seeds=(0, 1, 2, 3), k: int | None = None, max_scale: float = 3.0,
                  steps: int | None = None):
    """One slider per top token: move it to scale that token's weight (0 removes it, 1 is as learned)
    and see the same seeds regenerated from the changed mixture."""
    import ipywidgets as w

    from .conceptor import mix_images

    top = [lab for lab, _ in dec.top(k)]
    keys = {f"t{i}": lab for i, lab in enumerate(top)}
    cache: dict = {}

    def draw(**scales):
        key = tuple(round(float(scales[s]), 3) for s in keys)
        if key not in cache:
            a = np.array(dec.alphas, np.float64)
            for s, lab in keys.items():
                a[dec.index(lab)] *= float(scales[s])
            if a.sum() <= 0:
                print("every weight is zero; raise one")
                return
            cache[key] = mix_images(model, dec, list(seeds), alphas=a, steps=steps)
        changed = ", ".join(f"{keys[s]} ×{scales[s]:g}" for s in keys if abs(scales[s] - 1) > 1e-9) or "as learned"
        image_grid(cache[key], [f"seed {s}" for s in seeds], ncols=len(seeds), size=1.6,
                   suptitle=f"'{dec.concept}' mixture: {changed}")

    controls = {s: w.FloatSlider(value=1.0, min=0.0, max=max_scale, step=0.25, description=lab,
                                 continuous_update=False) for s, lab in keys.items()}
    return _show(draw, controls, {s: 1.0 for s in keys}, vertical=True)  # many sliders: stacked

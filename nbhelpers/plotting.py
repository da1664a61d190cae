"""Figures. Functions here draw what they are given; they compute nothing of substance."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np


def image_grid(images, titles=None, ncols: int = 8, size: float = 1.7, suptitle: str | None = None, fontsize=8):
    """A grid of uint8 images (N, H, W, 3) with optional titles; returns the figure."""
    images = list(images)
    n = max(1, len(images))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, im in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(im, interpolation="nearest")
        if titles is not None:
            ax.set_title(_wrap(titles[i]), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 22) -> str:
    words, lines, line = str(text).split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines)


def word_masks_figure(image: np.ndarray, word_masks: list, size: float = 1.5):
    """The image, then one panel per word with its ground-truth mask (function words greyed)."""
    n = len(word_masks) + 1
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.5))
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    for ax, (w, m) in zip(axes[1:], word_masks):
        if m is None:
            ax.imshow(np.zeros(image.shape[:2]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(w, fontsize=9, color="0.6")
        else:
            ax.imshow(image, interpolation="nearest")
            ax.imshow(np.ma.masked_where(~m, m), cmap="autumn", alpha=0.55, interpolation="nearest")
            ax.set_title(w, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def trajectory_figure(latent_images, x0_images, logsnrs, title: str | None = None, size: float = 1.4):
    """Two rows over denoising steps: the noisy latent decoded (x_t) and the predicted clean image,
    each column labelled with its log-SNR (nats)."""
    n = len(x0_images)
    fig, axes = plt.subplots(2, n, figsize=(size * n, 2 * size + 0.6), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(latent_images[j], interpolation="nearest")
        axes[1, j].imshow(x0_images[j], interpolation="nearest")
        axes[0, j].set_title(f"α={logsnrs[j]:.1f}", fontsize=8)
        for i in range(2):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("x_t", fontsize=9)
    axes[1, 0].set_ylabel("predicted x₀", fontsize=9)
    fig.suptitle(title or "denoising trajectory (log-SNR α in nats; noise falls to the right)", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_bars(table: dict, title: str = "", threshold: dict | None = None):
    """Bar chart of accuracies (0..1) by name, with optional dashed thresholds."""
    import seaborn as sns

    names, values = list(table), [table[k] for k in table]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 1.5, 2.8))
    sns.barplot(x=names, y=values, ax=ax, color="#4C72B0")
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{100 * v:.0f}%", ha="center", fontsize=8)
        if threshold and names[i] in threshold:
            ax.hlines(threshold[names[i]], i - 0.4, i + 0.4, colors="crimson", linestyles="--")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction correct")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save_figure(fig, output_dir: str | None, name: str) -> None:
    """Write ``fig`` to ``output_dir/name.png`` when an output folder is set (reports)."""
    if output_dir:
        from pathlib import Path

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(output_dir) / f"{name}.png", dpi=110, bbox_inches="tight")

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


def mmse_figure(alphas, curves: dict, fill: tuple[str, str] | None = None, title: str = "", ylabel="ε-MMSE"):
    """ε-MMSE against log-SNR α for several conditions; ``fill`` shades the gap between two curves
    (half its area is the information, in nats)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for label, y in curves.items():
        ax.plot(alphas, y, label=label)
    if fill:
        ax.fill_between(alphas, curves[fill[0]], curves[fill[1]], alpha=0.25, color="C2",
                        label="gap: ½·area = information")
    ax.set_xlabel("log-SNR α (nats)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def alpha_curve_figure(curves: dict, units: str = "nats", title: str = ""):
    """Binned α-curves: label → (bin centres, mean ½·MMSE gap, stderr), as returned by ``info.mi_curve``."""
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    for label, (c, m, se) in curves.items():
        ax.plot(c, m, marker="o", ms=3, label=label)
        ax.fill_between(c, m - se, m + se, alpha=0.2)
    ax.set_xlabel("log-SNR α (nats)")
    ax.set_ylabel(f"½ MMSE gap ({units} per unit α)")
    ax.set_title(title or "where along the noise levels the information sits", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def maps_figure(image: np.ndarray, maps: dict, subtitles: dict | None = None, size: float = 2.0,
                units: str = "nats", clip_negative: bool = False):
    """The image, then each map (already upsampled to the image size) over a faded copy of it.
    Colour bars are in ``units`` per pixel; ``clip_negative`` clips negative values (and says so)."""
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.7))
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        m = np.asarray(m)
        if clip_negative:
            m = np.clip(m, 0, None)
        ax.imshow(image, interpolation="nearest", alpha=0.35)
        im = ax.imshow(m, cmap="magma", alpha=0.75, interpolation="bilinear")
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=6)
        sub = (subtitles or {}).get(name, "")
        ax.set_title(f"{name}\n{sub}".strip(), fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"per-pixel maps ({units} per pixel{', negatives clipped' if clip_negative else ''})", fontsize=9)
    fig.tight_layout()
    return fig


def interval_bars(table: dict, title: str = "", chance: float | None = None, ylabel: str = "accuracy"):
    """Bars with 95 % intervals: name → (value, (lo, hi))."""
    names = list(table)
    vals = np.array([table[k][0] for k in names])
    # an interval ends at the value itself when every trial succeeded (Wilson's upper end is 1 up to rounding)
    lo = np.clip(vals - np.array([table[k][1][0] for k in names]), 0, None)
    hi = np.clip(np.array([table[k][1][1] for k in names]) - vals, 0, None)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 1.6, 2.8))
    ax.bar(names, vals, yerr=[lo, hi], capsize=4, color="#4C72B0")
    if chance is not None:
        ax.axhline(chance, color="crimson", ls="--", lw=1, label="chance")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def scatter_figure(x, y, xlabel: str, ylabel: str, title: str = ""):
    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    ax.scatter(x, y, s=14, alpha=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def grouped_bars(table, x: str, hue: str, y: str, title: str = "", ylabel: str = ""):
    """seaborn grouped bar chart of a tidy table (e.g. PID terms by case, estimated vs published)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    sns.barplot(data=table, x=x, y=y, hue=hue, ax=ax)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel or y)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def strip_compare(table, x: str, y: str, title: str = "", ylabel: str = ""):
    """seaborn strip + box plot of a value across groups (e.g. redundant share: synonyms vs others)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    sns.boxplot(data=table, x=x, y=y, ax=ax, color="0.9", showfliers=False)
    sns.stripplot(data=table, x=x, y=y, ax=ax, size=4)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel or y)
    fig.tight_layout()
    return fig


def step_figure(x_t: np.ndarray, x0: np.ndarray, attention: np.ndarray | None, word: str | None, step: int,
                logsnr: float, size: float = 2.2):
    """One denoising step: x_t decoded, the predicted clean image, and (if given) a word's
    cross-attention map (latent resolution, shown over the prediction)."""
    n = 3 if attention is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.5))
    axes[0].imshow(x_t, interpolation="nearest")
    axes[0].set_title("x_t (decoded)", fontsize=9)
    axes[1].imshow(x0, interpolation="nearest")
    axes[1].set_title("predicted x₀", fontsize=9)
    if attention is not None:
        axes[2].imshow(x0, interpolation="nearest", alpha=0.35)
        axes[2].imshow(attention, cmap="magma", alpha=0.75, interpolation="bilinear",
                       extent=(-0.5, x0.shape[1] - 0.5, x0.shape[0] - 0.5, -0.5))
        axes[2].set_title(f"attention: '{word}'", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"step {step}  (log-SNR α = {logsnr:.2f} nats)", fontsize=10)
    fig.tight_layout()
    return fig


def attention_steps_figure(x0_images, word_maps: np.ndarray, words: list[str], steps: list[int], logsnrs,
                           size: float = 1.3):
    """Rows: the predicted clean image, then each word's cross-attention map, at the chosen steps."""
    rows, cols = 1 + len(words), len(steps)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.8, size * rows + 0.4), squeeze=False)
    for j, s in enumerate(steps):
        axes[0, j].imshow(x0_images[s], interpolation="nearest")
        axes[0, j].set_title(f"step {s}\nα={logsnrs[s]:.1f}", fontsize=7)
        for i, w in enumerate(words):
            axes[i + 1, j].imshow(word_maps[s, i], cmap="magma", interpolation="bilinear")
    for i, label in enumerate(["predicted x₀"] + [f"'{w}'" for w in words]):
        axes[i, 0].set_ylabel(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("cross-attention of each word, step by step (each map on its own colour scale)", fontsize=9)
    fig.tight_layout()
    return fig


def relevance_heatmap(values: np.ndarray, words: list[str], steps: list[int], title: str = "",
                      label: str = "share of the step's relevance"):
    """seaborn heat map, words × steps (e.g. each word's share of the attention relevance)."""
    import pandas as pd
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(0.32 * len(steps) + 2.2, 0.32 * len(words) + 1.4))
    sns.heatmap(pd.DataFrame(np.asarray(values).T, index=words, columns=steps), ax=ax, cmap="viridis",
                cbar_kws={"label": label})
    ax.set_xlabel("step (noise → image)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def faithfulness_figure(results: dict, title: str = ""):
    """Deletion and insertion curves (SSIM to the unperturbed prediction) per saliency method, with the
    random-order baseline (mean ± sd); AUCs in the legend."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0), sharey=True)
    for k, (kind, ax) in enumerate(zip(("deletion", "insertion"), axes)):
        first = next(iter(results.values()))
        rnd = getattr(first, f"random_{kind}")
        ax.plot(first.fractions, rnd.mean(0), color="0.4", ls="--",
                label=f"random order (AUC {getattr(first, f'random_{kind}_auc'):.3f})")
        ax.fill_between(first.fractions, rnd.mean(0) - rnd.std(0), rnd.mean(0) + rnd.std(0), color="0.7", alpha=0.4)
        for i, (name, r) in enumerate(results.items()):
            ax.plot(r.fractions, getattr(r, kind), color=f"C{i}", marker="o", ms=3,
                    label=f"{name} (AUC {getattr(r, f'{kind}_auc'):.3f})")
        ax.set_xlabel(f"fraction of latent pixels {'deleted' if kind == 'deletion' else 'inserted'}")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} AUC = more faithful)", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("SSIM to the unperturbed prediction")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def emergence_figure(curves: dict, settled_table, title: str = ""):
    """Left: per step, the share of images whose predicted clean image already shows each attribute
    as it ends; right: the step each attribute settles (box + strip, seaborn)."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2))
    for name, y in curves.items():
        axes[0].plot(np.arange(len(y)), y, marker="o", ms=3, label=name)
    axes[0].set_xlabel("step (noise → image)")
    axes[0].set_ylabel("share of images showing it")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    axes[0].set_title("what the predicted x₀ already shows", fontsize=9)
    order = sorted(curves, key=lambda a: settled_table[settled_table.attribute == a].settled_step.mean())
    sns.boxplot(data=settled_table, x="attribute", y="settled_step", order=order, ax=axes[1], color="0.9",
                showfliers=False)
    sns.stripplot(data=settled_table, x="attribute", y="settled_step", order=order, ax=axes[1], size=3, alpha=0.6)
    axes[1].set_ylabel("step it settles")
    axes[1].set_title("when each attribute is decided", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def nothing_to_show(message: str):
    """A small figure that says why there is no plot (e.g. an audit whose reader read no image)."""
    fig, ax = plt.subplots(figsize=(5.0, 1.0))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, wrap=True)
    ax.set_axis_off()
    return fig


def bias_heatmap(table, dimension: str, title: str = ""):
    """seaborn heat map, subjects × groups of one dimension: rate minus the reference rate (signed
    percentage points), flagged cells marked with *."""
    import seaborn as sns

    if table.empty or not (table.dimension == dimension).any():
        return nothing_to_show(f"{dimension}: no image was read into a group, nothing to compare")
    t = table[table.dimension == dimension].copy()
    t["excess"] = 100 * (t.rate - t.reference)
    grid = t.pivot(index="subject", columns="group", values="excess")
    marks = t.pivot(index="subject", columns="group", values="flagged").reindex_like(grid)
    labels = grid.round(0).astype(int).astype(str) + np.where(marks.to_numpy(dtype=bool), "*", "")
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 2.4, 0.32 * grid.shape[0] + 1.4))
    lim = max(5.0, float(np.nanmax(np.abs(grid.to_numpy()))))
    sns.heatmap(grid, annot=labels, fmt="", cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, ax=ax,
                cbar_kws={"label": "rate − reference (points)"})
    ax.set_title(title or f"{dimension}: how much more often each group is drawn (* flagged, Holm)", fontsize=9)
    fig.tight_layout()
    return fig


def guidance_rates(rows, planted=None, title: str = ""):
    """The same subjects audited at several guidance scales: each (subject, dimension = group) row's rate
    with its 95 % interval, one colour per guidance (``rows``: columns subject, dimension, group,
    guidance, rate, ci_low, ci_high); 0.5 marked, and known true rates (``planted``: columns subject,
    dimension, group, planted) as black bars."""
    import seaborn as sns

    def label(df):
        return df.subject + " · " + df.dimension + " = " + df.group

    t = rows.assign(label=label(rows))
    labels = list(dict.fromkeys(t.sort_values("label").label))
    scales = sorted(t.guidance.unique())
    colours = sns.color_palette("crest", len(scales))
    fig, ax = plt.subplots(figsize=(5.2, 0.4 * len(labels) + 1.3))
    for k, (g, colour) in enumerate(zip(scales, colours)):
        r = t[t.guidance == g].set_index("label").reindex(labels).dropna(subset=["rate"])
        y = np.array([labels.index(lab) for lab in r.index]) + (k - (len(scales) - 1) / 2) * 0.22
        ax.errorbar(r.rate, y, xerr=[(r.rate - r.ci_low).clip(lower=0), (r.ci_high - r.rate).clip(lower=0)],
                    fmt="o", ms=4, color=colour, capsize=3, label=f"guidance {g:g}")
    ax.axvline(0.5, color="0.6", lw=0.8, ls="--")
    if planted is not None and len(planted):
        p = planted.assign(label=label(planted))
        p = p[p.label.isin(labels)]
        ax.scatter(p.planted, [labels.index(lab) for lab in p.label], marker="|", s=200, color="black", zorder=3,
                   label="planted")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of images (95 % bootstrap interval)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or f"the same subjects at {len(scales)} guidance scales", fontsize=9)
    fig.tight_layout()
    return fig


def forest_plot(table, dimension: str, group: str, title: str = ""):
    """Rate of ``group`` per subject with its bootstrap 95 % interval, the reference rate, flagged
    subjects in red; subjects sorted by rate."""
    if table.empty or not ((table.dimension == dimension) & (table.group == group)).any():
        return nothing_to_show(f"{dimension} = {group}: no image was read into this group")
    t = table[(table.dimension == dimension) & (table.group == group)].sort_values("rate")
    fig, ax = plt.subplots(figsize=(5.0, 0.28 * len(t) + 1.2))
    y = np.arange(len(t))
    flagged = t.flagged.to_numpy(bool)
    for sel, colour in ((~flagged, "#4C72B0"), (flagged, "crimson")):
        if sel.any():
            r = t[sel]
            ax.errorbar(r.rate, y[sel], xerr=[(r.rate - r.ci_low).clip(lower=0), (r.ci_high - r.rate).clip(lower=0)],
                        fmt="o", ms=4, color=colour, capsize=3)
    ax.scatter(t.reference, y, marker="|", color="0.3", s=60, label="reference")
    ax.set_yticks(y)
    ax.set_yticklabels(t.subject, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share drawn as '{group}' (95 % bootstrap interval)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or f"{dimension} = {group} by subject (red: flagged after Holm correction)", fontsize=9)
    fig.tight_layout()
    return fig

"""Widgets for notebooks. Headless (papermill, ``NBHELPERS_HEADLESS=1``) each widget draws its
default state as an ordinary figure instead, so reports show it."""
from __future__ import annotations

import os

import numpy as np

import matplotlib.pyplot as plt

from .cache import cached


def is_headless() -> bool:
    return os.environ.get("NBHELPERS_HEADLESS", "0") == "1"


def _show(draw, controls: dict, defaults: dict, vertical: bool = False):
    """Display interactive controls around ``draw(**values)`` (in a row, or stacked with ``vertical``);
    headless, one call with the defaults. Returns None, so that a notebook cell ending with an
    explorer call does not display the widget a second time."""
    if is_headless():
        draw(**defaults)
        plt.show()
        return None
    import ipywidgets as w
    from IPython.display import display

    def _draw(**kw):
        draw(**kw)
        plt.show()

    out = w.interactive_output(_draw, controls)
    row = w.VBox if vertical else w.HBox
    box = w.VBox([row(list(controls.values())), out])
    display(box)
    return None


@cached("generate")
def explorer_image(model, prompt: str, seed: int, steps: int, guidance: float) -> np.ndarray:
    """One generated image, uint8 (H, W, 3), cached on disk so that going back to a seed is instant."""
    return model.generate(prompt, seed=seed, steps=steps, guidance=guidance).images[0]


def prompt_explorer(model, prompt: str = "a big red circle on the left", seed: int = 0, steps: int = 25,
                    guidance: float = 3.0, describe=None):
    """Type a prompt, pick a seed and a guidance scale, and see the generated image. ``describe``:
    an optional function image (uint8 H×W×3) → short text, shown under the prompt (e.g. what a
    classifier reads in the image; the toy world's is its ``concepts.describe``)."""
    import ipywidgets as w

    def draw(prompt, seed, guidance):
        fig, ax = plt.subplots(figsize=(3, 3.3))
        try:
            img = explorer_image(model, prompt, seed, steps, guidance)
        except ValueError as e:  # bad prompt: show the message instead of a traceback
            ax.text(0.5, 0.5, str(e), wrap=True, ha="center", va="center", fontsize=8)
            ax.axis("off")
            return
        ax.imshow(img, interpolation="nearest")
        ax.axis("off")
        ax.set_title(prompt if describe is None else f"{prompt}\n{describe(img)}", fontsize=8)

    controls = {
        "prompt": w.Text(value=prompt, description="prompt", continuous_update=False,
                         layout=w.Layout(width="420px")),
        "seed": w.IntSlider(value=seed, min=0, max=99, description="seed", continuous_update=False),
        "guidance": w.FloatSlider(value=guidance, min=1.0, max=8.0, step=0.5, description="guidance",
                                  continuous_update=False),
    }
    return _show(draw, controls, dict(prompt=prompt, seed=seed, guidance=guidance))


def word_map_explorer(image, info, units: str = "nats"):
    """Pick a word of an already-estimated :class:`nbhelpers.info.PromptInformation` and see its
    conditional-information map next to the whole prompt's map, with both α-curves."""
    import ipywidgets as w

    from .info import mi_curve
    from .plotting import alpha_curve_figure, maps_figure

    info = info.to(units)
    size = np.asarray(image).shape[0]

    def draw(word):
        r = info.words[word]
        maps_figure(np.asarray(image), {f"i(x; {word} | rest)": r.upsampled_map(size),
                                        "i(x; prompt)": info.prompt.upsampled_map(size)},
                    {f"i(x; {word} | rest)": f"{r.value:.2f} ± {r.stderr:.2f} {units}",
                     "i(x; prompt)": f"{info.prompt.value:.2f} ± {info.prompt.stderr:.2f} {units}"}, units=units)
        plt.show()
        alpha_curve_figure({f"{word} | rest": mi_curve(r), "whole prompt": mi_curve(info.prompt)}, units=units)

    words = list(info.words)
    controls = {"word": w.Dropdown(options=words, value=words[0], description="word")}
    return _show(draw, controls, {"word": words[0]})


def pid_explorer(model, image, prompt: str, word1: str, word2: str, n: int = 32, seed: int = 0):
    """Pick two words of ``prompt`` and the context mode; see the four PID maps and their values."""
    import ipywidgets as w

    from .pid import partial_information
    from .plotting import maps_figure

    words = list(dict.fromkeys(wd.text for wd in model.tokenize(prompt).words))
    cache: dict = {}
    size = np.asarray(image).shape[0]

    def draw(word1, word2, context):
        if word1 == word2:
            print("pick two different words")
            return
        key = (word1, word2, context)
        if key not in cache:
            cache[key] = partial_information(model, image, prompt, word1, word2, context=context, n=n, seed=seed)
        r = cache[key]
        from .metrics import upsample

        names = {"redundancy": "redundancy", "unique1": f"unique '{word1}'", "unique2": f"unique '{word2}'",
                 "synergy": "synergy"}
        maps_figure(np.asarray(image), {names[k]: upsample(m, size) for k, m in r.maps.items()},
                    {names[k]: f"{r.values[k]:.2f} ± {r.stderr[k]:.2f} nats" for k in r.maps}, clip_negative=True)

    controls = {"word1": w.Dropdown(options=words, value=word1, description="word 1"),
                "word2": w.Dropdown(options=words, value=word2, description="word 2"),
                "context": w.ToggleButtons(options=["rest", "none"], value="rest", description="context")}
    return _show(draw, controls, {"word1": word1, "word2": word2, "context": "rest"})


def step_scrubber(trace, word: str | None = None, step: int | None = None):
    """Slide over the denoising steps of a :class:`nbhelpers.timesteps.Trace`: x_t, the predicted
    clean image and the chosen word's cross-attention at that step."""
    import ipywidgets as w

    from .plotting import step_figure

    x_t, x0 = trace.images("latent"), trace.images("pred_x0")
    word = word or trace.words[0]
    step = trace.n_steps // 2 if step is None else step

    def draw(step, word):
        step_figure(x_t[step], x0[step], trace.word_map(word, step), word, step, float(trace.logsnrs[step]))

    controls = {"step": w.IntSlider(value=step, min=0, max=trace.n_steps - 1, description="step",
                                    continuous_update=True),
                "word": w.Dropdown(options=trace.words, value=word, description="word")}
    return _show(draw, controls, {"step": step, "word": word})


def audit_table_explorer(table, columns=("subject", "dimension", "group", "n", "rate", "ci_low", "ci_high",
                                         "reference", "cohens_h", "p_value", "p_holm", "flagged")):
    """Filter (dimension, flagged only) and sort (by any column) an audit's association table."""
    import ipywidgets as w
    from IPython.display import display

    cols = [c for c in columns if c in table.columns]
    dims = ["all"] + sorted(table.dimension.unique())

    def draw(dimension, flagged_only, sort_by, descending):
        t = table if dimension == "all" else table[table.dimension == dimension]
        if flagged_only:
            t = t[t.flagged]
        display(t.sort_values(sort_by, ascending=not descending)[cols].round(3).reset_index(drop=True))

    controls = {"dimension": w.Dropdown(options=dims, value="all", description="dimension"),
                "flagged_only": w.Checkbox(value=False, description="flagged only"),
                "sort_by": w.Dropdown(options=cols, value="p_holm" if "p_holm" in cols else cols[0], description="sort by"),
                "descending": w.Checkbox(value=False, description="descending")}
    defaults = {"dimension": "all", "flagged_only": False, "sort_by": controls["sort_by"].value, "descending": False}
    if is_headless():
        draw(**defaults)
        return None
    out = w.interactive_output(draw, controls)
    box = w.VBox([w.HBox(list(controls.values())), out])
    display(box)
    return None

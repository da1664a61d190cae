"""Widgets, drawn headless (their default state as an ordinary figure, as in the exported reports)."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

from nbhelpers import widgets


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.setenv("NBHELPERS_HEADLESS", "1")
    plt.close("all")
    yield
    plt.close("all")


def test_prompt_explorer_shows_what_describe_says(tiny_model, headless):
    """``describe`` (image → text) is shown under the prompt and gets the image drawn; without it, the
    title is the prompt alone: the widget itself reads nothing into the image."""
    seen = []

    def describe(image):
        seen.append(np.asarray(image))
        return "described"

    assert widgets.prompt_explorer(tiny_model, "a red circle", seed=1, steps=2, describe=describe) is None
    assert plt.gcf().axes[0].get_title() == "a red circle\ndescribed"
    assert len(seen) == 1 and seen[0].dtype == np.uint8 and seen[0].ndim == 3
    assert np.array_equal(seen[0], tiny_model.generate("a red circle", seed=1, steps=2, guidance=3.0).images[0])
    plt.close("all")
    widgets.prompt_explorer(tiny_model, "a red circle", seed=1, steps=2)
    assert plt.gcf().axes[0].get_title() == "a red circle"


def test_the_world_describer_reads_the_checker(headless):
    from nbhelpers.toyworld import concepts, world

    img = world.lone_scene("red", "circle", "big", "left").render()
    assert concepts.describe(img) == "checker sees: big red circle (left)"
    assert concepts.describe(np.full((32, 32, 3), world.BACKGROUND, np.uint8)) == "checker sees: nothing"

"""The on-disk result cache: hits skip the UNet entirely, every part of the key matters, the model is
re-attached on loading, bad entries are recomputed, and `nbhelpers cache info/clear` work."""
import json
import warnings

import numpy as np
import pytest
import torch

from nbhelpers import cache
from nbhelpers.info import prompt_information


@pytest.fixture
def cache_on(tmp_path):
    cache.configure(enabled=True, directory=tmp_path / "cache")
    yield tmp_path / "cache"
    cache.configure()


class UNetCalls:
    """Counts UNet forward calls of a model while active."""

    def __init__(self, model):
        self.model, self.n = model, 0

    def __enter__(self):
        self.handle = self.model.pipe.unet.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _image(model, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (model.image_size, model.image_size, 3), dtype=np.uint8)


def test_hit_skips_the_unet_and_returns_the_same_numbers(tiny_model, cache_on):
    img = _image(tiny_model)
    with UNetCalls(tiny_model) as first:
        a = prompt_information(tiny_model, img, "a red circle", n=8)
    with UNetCalls(tiny_model) as second:
        b = prompt_information(tiny_model, img, "a red circle", n=8)
    assert first.n > 0 and second.n == 0
    assert b.prompt.value == a.prompt.value and b.prompt.stderr == a.prompt.stderr
    np.testing.assert_array_equal(b.words["red"].map, a.words["red"].map)
    assert cache.info()["kinds"]["info"]["entries"] == 1


@pytest.mark.parametrize("change", ["prompt", "image", "n", "seed"])
def test_every_part_of_the_key_matters(tiny_model, cache_on, change):
    img = _image(tiny_model)
    base = dict(image=img, prompt="a red circle", n=8, seed=0)
    prompt_information(tiny_model, **base)
    other = dict(base)
    other[change] = {"prompt": "a blue circle", "image": _image(tiny_model, 1), "n": 12, "seed": 1}[change]
    with UNetCalls(tiny_model) as calls:
        prompt_information(tiny_model, **other)
    assert calls.n > 0


def test_changing_a_weight_changes_the_model_fingerprint(tiny_model):
    before = cache.model_fingerprint(tiny_model)
    w = tiny_model.pipe.unet.conv_out.bias
    with torch.no_grad():
        w.add_(1e-3)
    try:
        assert cache.model_fingerprint(tiny_model) != before
    finally:
        with torch.no_grad():
            w.sub_(1e-3)
    assert cache.model_fingerprint(tiny_model) == before


def test_results_pointing_to_the_model_are_reattached_to_it(toy_model, cache_on):
    from nbhelpers.timesteps import trace

    a = trace(toy_model, "a red circle on the left", seed=0, steps=4)
    stored = next(cache_on.glob("timesteps/*/*.pkl")).stat().st_size
    assert stored < 2_000_000, "the model's weights must not be pickled into the cache"
    b = trace(toy_model, "a red circle on the left", seed=0, steps=4)
    assert b is not a and b.generation._model is toy_model
    np.testing.assert_array_equal(b.images("pred_x0"), a.images("pred_x0"))
    np.testing.assert_array_equal(b.word_maps, a.word_maps)


def test_unreadable_entry_is_recomputed_with_a_warning(tiny_model, cache_on):
    img = _image(tiny_model)
    a = prompt_information(tiny_model, img, "a red circle", n=8)
    entry = next(cache_on.glob("info/*/*.pkl"))
    entry.write_bytes(b"truncated")
    with UNetCalls(tiny_model) as calls, pytest.warns(UserWarning, match="unreadable entry"):
        b = prompt_information(tiny_model, img, "a red circle", n=8)
    assert calls.n > 0 and b.prompt.value == a.prompt.value
    assert entry.stat().st_size > 100  # stored again


def test_unhashable_arguments_and_switched_off_cache_compute(tiny_model, cache_on, monkeypatch):
    calls = []

    @cache.cached("demo")
    def f(x, fn):
        calls.append(1)
        return fn(x)

    assert f(2, lambda v: v + 1) == 3 and f(2, lambda v: v + 1) == 3
    assert len(calls) == 2 and not cache.entries("demo")  # a lambda has no stable name: never cached
    assert f(2, abs) == 2 and f(2, abs) == 2
    assert len(calls) == 3 and len(cache.entries("demo")) == 1
    cache.configure(enabled=False, directory=cache_on)
    assert f(3, abs) == 3 and f(3, abs) == 3
    assert len(calls) == 5 and len(cache.entries("demo")) == 1


def test_cli_info_and_clear(tiny_model, cache_on, capsys):
    from nbhelpers.cli import main

    prompt_information(tiny_model, _image(tiny_model), "a red circle", n=8)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache_on) in out and "info" in out and "1 entries" in out
    assert main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    assert main(["cache", "clear", "--kind", "pid"]) == 0
    assert "no cached results of kind 'pid'" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert cache.info()["entries"] == 0

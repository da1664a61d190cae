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
    stored = next(cache_on.glob("timesteps/*/*.safetensors")).stat().st_size
    assert stored < 2_000_000, "the model's weights must not be stored in the cache"
    b = trace(toy_model, "a red circle on the left", seed=0, steps=4)
    assert b is not a and b.generation._model is toy_model
    np.testing.assert_array_equal(b.images("pred_x0"), a.images("pred_x0"))
    np.testing.assert_array_equal(b.word_maps, a.word_maps)


def test_unreadable_entry_is_recomputed_with_a_warning(tiny_model, cache_on):
    img = _image(tiny_model)
    a = prompt_information(tiny_model, img, "a red circle", n=8)
    entry = next(cache_on.glob("info/*/*.safetensors"))
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


# -- the storage format: data only, lossless, and nothing in an entry can run code -----------------------------
import dataclasses  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402  (only to craft a hostile entry)
import re  # noqa: E402
from pathlib import Path, PurePosixPath  # noqa: E402

from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from nbhelpers import safe_codec  # noqa: E402


def assert_same(a, b, where="value"):
    """Exact equality of value, type, dtype and shape, recursively (nan equals nan, bit for bit)."""
    if safe_codec.is_model(a):
        assert b is a, f"{where}: the model was not re-attached"
        return
    assert type(a) is type(b), f"{where}: {type(a).__name__} became {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} became {b.dtype}{b.shape}"
        if a.dtype == object:
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
                assert_same(x, y, f"{where}[{i}]")
        else:
            assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} became {b.dtype}"
        raw = (lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8))
        assert torch.equal(raw(a), raw(b)), where
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert len(a) == len(b), where
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):  # same keys in the same order
            assert_same(ka, kb, f"{where} key {ka!r}")
            assert_same(va, vb, f"{where}[{ka!r}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, Image.Image):
        assert (a.mode, a.size, a.tobytes(), a.getpalette()) == (b.mode, b.size, b.tobytes(), b.getpalette()), where
    else:
        assert a == b, f"{where}: {a!r} became {b!r}"


def _every_type():
    from nbhelpers.immse import InfoResult, LogSNRSampler
    from nbhelpers.text import Word
    from nbhelpers.toyworld import world

    pal = Image.new("P", (3, 2))
    pal.putpalette([(7 * i) % 256 for i in range(768)])
    return {
        "plain": [None, True, False, 0, -7, 2**200, -(2**64) - 3, 1.5, -0.0, float("nan"), float("inf"),
                  float("-inf"), 1e-310, "é ✓ \x00", b"\x00\xff", 2 - 3j],
        "tuple vs list": ((1, [2, (3,)]), [(1,), []], ()),
        (1, "tuple key"): {frozenset({1, 2}): "frozenset key", None: 0, 3.5: {"nested": {(1, 2): [set()]}}},
        "sets": [{1, "a", (2, 3)}, frozenset({b"x"}), set()],
        "arrays": [np.arange(6, dtype=np.int16).reshape(2, 3), np.zeros((0, 4), np.float32), np.array(3.0),
                   np.array([True, False]), np.arange(4, dtype=">f8"), np.ones(2, np.longdouble),
                   np.array([1 + 2j], np.complex128), np.array([np.nan, -np.inf], np.float16),
                   np.array(["2020-01-01", "NaT"], "M8[D]"), np.arange(3, dtype=np.uint64) * 2**62,
                   np.array([["ab", "ç"], ["", "xyz"]]), np.array([b"a\xff", b""]),
                   np.array([1, "a", None, (2, 3)], dtype=object), np.arange(12.0).reshape(3, 4)[:, ::2]],
        "scalars": [np.float32(1.5), np.float64("nan"), np.int64(-3), np.uint8(255), np.bool_(True), np.str_("hé"),
                    np.datetime64("2020-01-02"), np.complex64(1j), np.longdouble(1) / 3],
        "tensors": [torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(2, dtype=torch.float16),
                    torch.tensor(3.0), torch.zeros(0, 2, dtype=torch.int64), torch.tensor([True]),
                    torch.randn(2, dtype=torch.complex128), torch.randn(4, 4)[1:, ::2],
                    torch.randn(3, requires_grad=True) * 1],
        "types": [torch.bfloat16, torch.device("cpu"), np.dtype("<U3"), np.dtype(">i2")],
        "paths": [Path("/a/b"), PurePosixPath("c/d")],
        "images": [Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3)), pal,
                   Image.fromarray(np.arange(4, dtype=np.uint8).reshape(2, 2), "L")],
        "dataclasses": [LogSNRSampler(0.5, 2.0), Word("red", 0, 2, 3, (5, 6)),
                        InfoResult(1.25, 0.5, map=np.ones((2, 2), np.float32), params={"n": 8}),
                        {scene: i for i, scene in enumerate(world.sample_scenes(2, seed=0, kind="pair"))}],
    }


def test_round_trip_of_every_supported_type(tmp_path, monkeypatch):
    from nbhelpers.immse import LogSNRSampler

    value = _every_type()
    path = tmp_path / "entry.safetensors"
    safe_codec.save(value, path)

    def boom(self):
        raise AssertionError("decoding must not call __post_init__ (or any method)")

    monkeypatch.setattr(LogSNRSampler, "__post_init__", boom)
    back = safe_codec.load(path)
    t = value["tensors"][-1]
    value["tensors"][-1] = t.detach()  # stored detached
    assert_same(value, back)
    assert back["tensors"][-1].requires_grad is False
    with pytest.raises(dataclasses.FrozenInstanceError):  # still a frozen dataclass
        back["dataclasses"][0].loc = 1.0
    a = back["arrays"][0]
    a[0, 0] = 9  # arrays come back writable
    # the tree is JSON and the tensors are plain tensors: what the file holds
    tree, tensors = safe_codec.encode(value)
    json.dumps(tree, allow_nan=False)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert_same(value, safe_codec.decode(json.loads(json.dumps(tree)), tensors))


def test_encode_refuses_what_it_cannot_store_by_name(tiny_model, cache_on):
    @dataclasses.dataclass
    class Foreign:
        x: int = 1

    class Sub(dict):
        pass

    for bad, name in ((object(), "object"), (Foreign(), "Foreign"), (Sub(), "Sub"), ([1, {"k": print}], "builtin"),
                      (np.zeros(2, dtype=[("a", "i4")]), "dtype")):
        with pytest.raises(safe_codec.Unsupported, match=name):
            safe_codec.encode(bad)
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError, match="contains itself"):
        safe_codec.encode(cyclic)

    calls = []

    @cache.cached("demo")
    def f(x):
        calls.append(1)
        return {"x": x, "fn": print}

    for _ in range(2):
        with pytest.warns(UserWarning, match="could not store.*builtin"):
            assert f(1)["fn"] is print
    assert len(calls) == 2 and not cache.entries("demo")
    assert not list(cache_on.rglob("*.tmp*"))


def _image_args(model):
    return dict(image=_image(model), prompt="a red circle", n=8)


@cache.cached("demo")
def _generate(model, prompt: str, seed: int):
    return model.generate(prompt, seed=seed, steps=3, trajectory=True)


def test_real_results_round_trip_through_the_cache(tiny_model, cache_on):
    from nbhelpers.pid import partial_information
    from nbhelpers.timesteps import trace

    calls = [
        lambda: prompt_information(tiny_model, **_image_args(tiny_model)),
        lambda: _generate(tiny_model, "a red circle", 3),
        lambda: trace(tiny_model, "a red circle", seed=1, steps=3),
        lambda: partial_information(tiny_model, _image(tiny_model), "a red circle", "red", "circle", n=8),
    ]
    for call in calls:
        a = call()
        with UNetCalls(tiny_model) as second:
            b = call()
        assert second.n == 0 and b is not a
        assert_same(a, b, type(a).__name__)
    assert len(list(cache_on.rglob("*.safetensors"))) == 4 and not list(cache_on.rglob("*.pkl"))

    gen_a, gen_b = _generate(tiny_model, "a red circle", 3), _generate(tiny_model, "a red circle", 3)
    assert gen_b._model is tiny_model and len(gen_b.trajectory) == 3
    np.testing.assert_array_equal(gen_b.decode_step(1), gen_a.decode_step(1))
    tr = trace(tiny_model, "a red circle", seed=1, steps=3)
    assert tr.generation._model is tiny_model
    assert tr.images("latent").shape[0] == 3


class _RunsCode:
    """A pickle that would create ``marker`` when loaded by a pickle loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _crafted_safetensors(path, tree, tensors=None):
    save_file(tensors or {}, str(path), metadata={"nbhelpers_format": safe_codec.FORMAT, "nbhelpers": json.dumps(tree)})


def _hostile_trees(marker):
    argv = ["touch", str(marker)]
    evil = pickle.dumps(_RunsCode(marker)).hex()
    return {
        "class outside nbhelpers": {"t": "dataclass", "cls": "subprocess:Popen", "f": {"args": argv}},
        "function": {"t": "dataclass", "cls": "os:system", "f": {"command": f"touch {marker}"}},
        "foreign object reached through nbhelpers": {"t": "dataclass", "cls": "nbhelpers.safe_codec:os.system",
                                                     "f": {}},
        "nested": {"t": "dict", "v": [["x", {"t": "dataclass", "cls": "builtins:eval", "f": {"source": "1"}}]]},
        "not a dataclass of nbhelpers": {"t": "dataclass", "cls": "nbhelpers.cache:Uncacheable", "f": {}},
        "unknown tag": {"t": "pickle", "v": evil},
        "wrong fields": {"t": "dataclass", "cls": "nbhelpers.immse:LogSNRSampler", "f": {"loc": 1.0}},
        "missing tensor": {"t": "ndarray", "dtype": "<f4", "shape": [2], "raw": False, "data": "0"},
        "object dtype": {"t": "ndarray", "dtype": "|O", "shape": [1], "raw": True, "data": "0"},
    }


def test_hostile_entries_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "entry.safetensors"
    for name, tree in _hostile_trees(marker).items():
        _crafted_safetensors(path, tree)
        with pytest.raises(safe_codec.DecodeError):
            safe_codec.load(path)
        assert not marker.exists(), name
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(safe_codec.DecodeError):
        safe_codec.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("attack", ["pickle", "class outside nbhelpers", "unknown tag", "stale pickle entry"])
def test_crafted_entry_cannot_run_code_and_is_recomputed(tiny_model, cache_on, tmp_path, attack):
    marker = tmp_path / "MARKER"
    args = _image_args(tiny_model)
    a = prompt_information(tiny_model, **args)
    entry = next(cache_on.glob("info/*/*.safetensors"))
    if attack == "pickle":
        entry.write_bytes(pickle.dumps(_RunsCode(marker)))
    elif attack == "stale pickle entry":  # a file of the earlier format at the same key is never opened
        entry.with_suffix(".pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
        entry.unlink()
    else:
        _crafted_safetensors(entry, _hostile_trees(marker)[attack])
    with UNetCalls(tiny_model) as calls, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = prompt_information(tiny_model, **args)
    assert not marker.exists()
    assert calls.n > 0
    assert_same(a, b)
    dropped = [w for w in caught if "unreadable entry" in str(w.message)]
    assert len(dropped) == (0 if attack == "stale pickle entry" else 1)
    assert_same(a, safe_codec.load(entry, tiny_model))  # stored again, in the safe format
    if attack == "stale pickle entry":
        assert cache.stale() == [entry.with_suffix(".pkl")] and cache.info()["stale_files"] == 1
        assert cache.info()["entries"] == 1
        assert cache.clear() == 2 and not list(cache_on.rglob("*.pkl"))
        assert not marker.exists()


def test_truncated_entry_is_recomputed_with_a_warning(tiny_model, cache_on):
    args = _image_args(tiny_model)
    a = prompt_information(tiny_model, **args)
    entry = next(cache_on.glob("info/*/*.safetensors"))
    data = entry.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 20, 0):
        entry.write_bytes(data[:cut])
        with UNetCalls(tiny_model) as calls, pytest.warns(UserWarning, match="unreadable entry"):
            b = prompt_information(tiny_model, **args)
        assert calls.n > 0
        assert_same(a, b)
        assert_same(a, safe_codec.load(entry, tiny_model))  # stored again


def test_cli_mentions_and_clears_stale_entries(cache_on, capsys):
    from nbhelpers.cli import main

    old = cache_on / "pid" / "ab" / "abcd.pkl"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old format")
    old.with_suffix(".json").write_text("{}")
    assert cache.entries() == [] and cache.info()["stale_files"] == 1
    assert main(["cache", "info"]) == 0
    assert "earlier cache format" in capsys.readouterr().out
    assert main(["cache", "clear", "--kind", "pid"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert not old.exists() and not old.with_suffix(".json").exists()


def test_the_package_never_loads_code_bearing_formats():
    root = Path(cache.__file__).parent
    for f in sorted(root.rglob("*.py")):
        src = f.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|marshal|shelve)\b", src,
                             re.M), f"{f.name} imports a code-bearing serialiser"
        for call in re.findall(r"torch\.load\([^\n]*", src):
            assert "weights_only=True" in call, f"{f.name}: {call}"

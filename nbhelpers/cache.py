"""On-disk cache of expensive results, shared by notebooks, widgets and reports.

A result is stored under a key made of the function, the **model's fingerprint** (its configs, dtype,
device type and a checksum of every weight), the **content** of every image/tensor/array argument,
the prompt and every other parameter (defaults included), and the nbhelpers source code itself (any
code change starts a fresh cache, so a fixed bug never serves a stale number). Re-running a notebook
or moving a widget back to a value already seen then loads the result instead of recomputing it.

- Location: ``$NBHELPERS_CACHE_DIR``, else ``$XDG_CACHE_HOME/nbhelpers``, else ``~/.cache/nbhelpers``.
- Switch off with ``NBHELPERS_CACHE=0`` (the tests do, so that every test computes what it checks) or
  ``nbhelpers.cache.configure(enabled=False)``.
- ``nbhelpers cache info`` prints what is stored; ``nbhelpers cache clear [--kind K]`` removes it.

Each entry is one ``<key>.safetensors`` file (with ``<key>.json`` beside it: what was computed, when,
how long it took). The result is written by :mod:`nbhelpers.safe_codec`: its arrays and tensors as the
file's tensors, everything else as a JSON tree in the file's metadata. Loading is parsing, never running
code: the JSON can only name a fixed set of plain types and dataclasses defined in ``nbhelpers``, which are
rebuilt field by field without calling any of their methods, so an entry someone crafted or corrupted can
at worst fail to load. An entry that does not load (truncated, garbled, naming an unknown tag or a class
from elsewhere) is dropped with a warning and recomputed. Files of the older code-bearing format
(``*.pkl``) are never opened; ``nbhelpers cache clear`` removes them.

Results that point to the model (a :class:`~nbhelpers.model.Generation` keeps it for lazy decoding)
are stored without it and re-attached to the caller's model on loading. A result holding a type the
format does not store is computed and returned as usual, with a warning, but not cached.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import safe_codec

_SETTINGS: dict[str, Any] = {"enabled": None, "directory": None}
_FINGERPRINTS: dict[int, tuple[Any, int, str]] = {}  # id(model) -> (model, weights' version, fingerprint)
_CODE_VERSION: str | None = None


class Uncacheable(TypeError):
    """An argument has no stable content hash; the call is computed without the cache."""


# -- settings ---------------------------------------------------------------------------------------------
def configure(enabled: bool | None = None, directory: str | os.PathLike | None = None) -> None:
    """Switch the cache on/off or move it for this process (None: back to the environment's choice)."""
    _SETTINGS["enabled"] = enabled
    _SETTINGS["directory"] = None if directory is None else Path(directory).expanduser()


def is_enabled() -> bool:
    if _SETTINGS["enabled"] is not None:
        return bool(_SETTINGS["enabled"])
    return os.environ.get("NBHELPERS_CACHE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    """The cache's folder (not created until something is stored)."""
    if _SETTINGS["directory"] is not None:
        return _SETTINGS["directory"]
    if os.environ.get("NBHELPERS_CACHE_DIR"):
        return Path(os.environ["NBHELPERS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nbhelpers"


# -- content hashing ----------------------------------------------------------------------------------------
def code_version() -> str:
    """A hash of nbhelpers' own source files: part of every key."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        h = hashlib.sha256()
        root = Path(__file__).resolve().parent
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        _CODE_VERSION = h.hexdigest()[:16]
    return _CODE_VERSION


def model_fingerprint(model) -> str:
    """A hash of a :class:`~nbhelpers.model.DiffusionModel`: the pipeline's component configs, dtype,
    device type and, per component, the sum and sum of squares of all weights (any fine-tuning changes
    it). Recomputed only when a weight was changed in place (torch's version counters)."""
    import torch

    modules = [c for c in model.pipe.components.values() if isinstance(c, torch.nn.Module)]
    extra = getattr(getattr(model, "family", None), "guidance", None)  # Flux's guidance value for the denoiser
    version = (sum(p._version for part in modules for p in part.parameters()), extra)
    hit = _FINGERPRINTS.get(id(model))
    if hit is not None and hit[0] is model and hit[1] == version:
        return hit[2]

    h = hashlib.sha256()
    pipe = model.pipe
    h.update(f"{type(model).__name__}|{model.dtype}|{torch.device(model.device).type}".encode())
    h.update(f"{type(pipe).__name__}|{extra}|{getattr(model, 'image_size', None)}".encode())
    for name in sorted(pipe.components):
        part = pipe.components[name]
        if part is None:
            continue
        cfg = getattr(part, "config", None)
        if cfg is not None:
            cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)  # transformers' configs / diffusers'
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        if name.startswith("tokenizer") and part is not None:
            h.update(str(len(part)).encode())
        if isinstance(part, torch.nn.Module):
            with torch.no_grad():
                sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                                    for p in part.parameters()]).cpu().numpy()
            h.update(sums.tobytes())
    fp = h.hexdigest()[:20]
    _FINGERPRINTS[id(model)] = (model, version, fp)
    return fp


_is_model = safe_codec.is_model  # one test: what the key hashes as the model is what an entry refers to


def _feed(h, obj, depth: int = 0) -> None:
    """Feed a stable description of ``obj`` into hash ``h`` (content, not identity)."""
    if depth > 12:
        raise Uncacheable("argument nested too deeply to hash")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if _is_model(obj):
        h.update(f"model:{model_fingerprint(obj)};".encode())
        return
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return
    if isinstance(obj, np.generic):
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            h.update(b"objarray;")
            for item in obj.ravel():
                _feed(h, item, depth + 1)
            return
        a = np.ascontiguousarray(obj)
        h.update(f"ndarray:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
        return
    try:
        from PIL import Image

        if isinstance(obj, Image.Image):
            h.update(f"pil:{obj.mode}:{obj.size};".encode())
            h.update(obj.tobytes())
            return
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}[{len(obj)}];".encode())
        for item in obj:
            _feed(h, item, depth + 1)
        return
    if isinstance(obj, dict):
        h.update(f"dict[{len(obj)}];".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k, depth + 1)
            _feed(h, obj[k], depth + 1)
        return
    if isinstance(obj, (set, frozenset)):
        h.update(f"set[{len(obj)}];".encode())
        for item in sorted(obj, key=repr):
            _feed(h, item, depth + 1)
        return
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        h.update(f"{type(obj).__name__}:{obj};".encode())
        return
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"dc:{type(obj).__module__}.{type(obj).__qualname__};".encode())
        for f in dataclasses.fields(obj):
            if f.name.startswith("_"):  # private caches and back-references (decoded images, the model)
                continue
            h.update(f.name.encode())
            _feed(h, getattr(obj, f.name), depth + 1)
        return
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj):
        if obj.__name__ == "<lambda>" or "<locals>" in obj.__qualname__:
            raise Uncacheable(f"{obj.__qualname__} is a local function or lambda (no stable name)")
        h.update(f"callable:{obj.__module__}.{obj.__qualname__};".encode())
        return
    if isinstance(obj, functools.partial):
        _feed(h, (obj.func, obj.args, obj.keywords), depth + 1)
        return
    raise Uncacheable(f"cannot hash an argument of type {type(obj).__name__}")


def make_key(kind: str, parts: dict) -> str:
    h = hashlib.sha256()
    h.update(f"{kind}|{code_version()}|".encode())
    _feed(h, parts)
    return h.hexdigest()[:32]


# -- storage ----------------------------------------------------------------------------------------------
DATA_SUFFIX = ".safetensors"
_STALE_SUFFIXES = (".pkl",)  # entries of earlier versions: never opened, removed by clear()


def _paths(kind: str, key: str) -> tuple[Path, Path]:
    folder = cache_dir() / kind / key[:2]
    return folder / f"{key}{DATA_SUFFIX}", folder / f"{key}.json"


def load(kind: str, key: str, model=None):
    """The stored result, or raises KeyError (also for an unreadable entry, which is then removed).
    ``model``: put back where the stored result pointed to the model."""
    data_path, meta_path = _paths(kind, key)
    if not data_path.exists():
        raise KeyError(key)
    try:
        return safe_codec.load(data_path, model)
    except Exception as e:  # truncated, garbled or naming something refused: recompute
        warnings.warn(f"nbhelpers cache: dropping unreadable entry {data_path} ({type(e).__name__}: {e})")
        for p in (data_path, meta_path):
            p.unlink(missing_ok=True)
        raise KeyError(key) from e


def store(kind: str, key: str, value, meta: dict) -> bool:
    """Write atomically (a half-written entry is never read); False (with a warning) if it fails, e.g.
    for a result holding a type :mod:`nbhelpers.safe_codec` does not store."""
    data_path, meta_path = _paths(kind, key)
    tmp = data_path.with_name(f"{data_path.stem}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        size = safe_codec.save(value, tmp)
        os.replace(tmp, data_path)
        meta_path.write_text(json.dumps({**meta, "bytes": size}, default=str))
        return True
    except Exception as e:  # a full disk or an unstorable result must not lose the computed result
        tmp.unlink(missing_ok=True)
        warnings.warn(f"nbhelpers cache: could not store a {kind} result ({type(e).__name__}: {e})")
        return False


def cached(kind: str, ignore: tuple[str, ...] = ("progress",)):
    """Decorator: cache the function's result on disk under ``kind`` (see the module docstring).
    ``ignore``: parameters that do not change the result (progress bars)."""

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if not is_enabled():
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            parts = {k: v for k, v in bound.arguments.items() if k not in ignore}
            model = next((v for v in parts.values() if _is_model(v)), None)
            try:
                key = make_key(f"{kind}:{fn.__module__}.{fn.__qualname__}", parts)
            except Uncacheable:
                return fn(*args, **kwargs)
            try:
                return load(kind, key, model)
            except KeyError:
                pass
            t0 = time.time()
            value = fn(*args, **kwargs)
            prompt = parts.get("prompt") or parts.get("concept")
            store(kind, key, value, {"kind": kind, "function": f"{fn.__module__}.{fn.__qualname__}",
                                     "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "compute_seconds": round(time.time() - t0, 3),
                                     "model": getattr(model, "name", None),
                                     "prompt": prompt if isinstance(prompt, str) else None})
            return value

        inner.uncached = fn
        return inner

    return wrap


# -- inspection (``nbhelpers cache info/clear``) ----------------------------------------------------------
def entries(kind: str | None = None) -> list[dict]:
    """Metadata of every stored entry (optionally of one kind)."""
    root = cache_dir()
    if not root.exists():
        return []
    out = []
    for meta in sorted(root.glob(f"{kind or '*'}/*/*.json")):
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            m = {"kind": meta.parent.parent.name}
        data = meta.with_suffix(DATA_SUFFIX)
        if not data.exists() and any(meta.with_suffix(x).exists() for x in _STALE_SUFFIXES):
            continue  # an entry of an earlier format: see stale()
        m["bytes"] = data.stat().st_size if data.exists() else 0
        m["path"] = str(data)
        out.append(m)
    return out


def stale(kind: str | None = None) -> list[Path]:
    """Data files of an earlier, code-bearing format: never opened, removed by :func:`clear`."""
    root = cache_dir()
    if not root.exists():
        return []
    return sorted(p for x in _STALE_SUFFIXES for p in root.glob(f"{kind or '*'}/*/*{x}"))


def info() -> dict:
    """Folder, on/off, and per kind the number of entries, bytes and compute seconds saved per hit."""
    per_kind: dict[str, dict] = {}
    for e in entries():
        k = per_kind.setdefault(e.get("kind", "?"), {"entries": 0, "bytes": 0, "compute_seconds": 0.0})
        k["entries"] += 1
        k["bytes"] += e["bytes"]
        k["compute_seconds"] += float(e.get("compute_seconds") or 0.0)
    old = stale()
    return {"directory": str(cache_dir()), "enabled": is_enabled(), "code_version": code_version(),
            "entries": sum(k["entries"] for k in per_kind.values()),
            "bytes": sum(k["bytes"] for k in per_kind.values()), "kinds": per_kind,
            "stale_files": len(old), "stale_bytes": sum(p.stat().st_size for p in old if p.exists()),
            "stale_kinds": sorted({p.parent.parent.name for p in old})}


def clear(kind: str | None = None) -> int:
    """Remove every entry (or those of ``kind``); returns how many were removed."""
    n = 0
    root = cache_dir()
    if not root.exists():
        return 0
    for suffix in (DATA_SUFFIX, *_STALE_SUFFIXES):
        for data in root.glob(f"{kind or '*'}/*/*{suffix}"):
            data.unlink(missing_ok=True)
            data.with_suffix(".json").unlink(missing_ok=True)
            n += 1
    for tmp in root.glob(f"{kind or '*'}/*/*.tmp*"):
        tmp.unlink(missing_ok=True)
    for folder in sorted(root.glob(f"{kind or '*'}/*"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return n


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def main(argv=None) -> int:
    """``nbhelpers cache info`` / ``nbhelpers cache clear [--kind K]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="nbhelpers cache", description="Inspect or clear the on-disk result cache.")
    sub = ap.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="where the cache is and what it holds")
    p_info.add_argument("--json", action="store_true", help="print as JSON")
    p_clear = sub.add_parser("clear", help="remove cached results")
    p_clear.add_argument("--kind", default=None, help="only this kind (see `nbhelpers cache info`)")
    a = ap.parse_args(argv)
    if a.command == "info":
        d = info()
        if a.json:
            print(json.dumps(d, indent=1))
            return 0
        state = "on" if d["enabled"] else "off (NBHELPERS_CACHE=0)"
        print(f"cache folder: {d['directory']} ({state})")
        print(f"{d['entries']} entries, {_human(d['bytes'])}")
        for kind, k in sorted(d["kinds"].items()):
            print(f"  {kind:<14} {k['entries']:>6} entries {_human(k['bytes']):>10}   "
                  f"{k['compute_seconds']:.0f} s of computing stored")
        if d["stale_files"]:
            print(f"{d['stale_files']} file(s) of an earlier cache format ({_human(d['stale_bytes'])}), never "
                  "loaded: `nbhelpers cache clear` removes them")
        return 0
    d = info()
    kinds = set(d["kinds"]) | set(d["stale_kinds"])
    if a.kind and a.kind not in kinds:
        print(f"no cached results of kind {a.kind!r}; kinds present: {sorted(kinds) or 'none'}")
        return 0
    n = clear(a.kind)
    print(f"removed {n} cached result(s) from {cache_dir()}" + (f" (kind {a.kind})" if a.kind else ""))
    return 0

"""A data-only format for results: a JSON tree plus named tensors, stored as one ``.safetensors`` file.

:func:`encode` turns a result into ``(tree, tensors)``: ``tree`` is plain JSON (dicts, lists, strings,
numbers) and ``tensors`` maps names to CPU tensors that the tree refers to. :func:`save` writes both into
one safetensors file (the tensors as its tensors, the tree as a string in its metadata); :func:`load`
reads it back with ``safetensors.safe_open``, a parser, and :func:`decode` rebuilds the value.

Nothing in a file can make the loader run code: every JSON node carries a tag from a fixed list, and the
only classes it can name are dataclasses defined in ``nbhelpers`` itself, which are rebuilt field by field
(``object.__new__`` and ``object.__setattr__``: no ``__init__``, ``__post_init__`` or other method runs).
Anything else (an unknown tag, a class outside ``nbhelpers``, a shape that does not match its tensor, a
truncated file) is a :class:`DecodeError`.

Supported values: ``None``, ``bool``, ``int`` (any size), ``float`` (nan and ±inf included), ``complex``,
``str``, ``bytes``, ``list``, ``tuple``, ``dict`` (any hashable keys, order kept), ``set``,
``frozenset``, numpy arrays (numeric, bool, datetime, string dtypes exactly; object arrays whose elements
are supported), numpy scalars (their numpy type kept), ``np.dtype``, torch tensors (dtype and shape kept,
stored detached on the CPU), ``torch.dtype``, ``torch.device``, ``pathlib`` paths, PIL images (mode, size,
pixels, palette), dataclasses defined in ``nbhelpers``, and the model (any object with ``pipe``, ``eps`` and
``latent_shape``), stored as a reference and replaced by the ``model`` given to :func:`decode`.
Exact types only: a subclass (an ``OrderedDict``, a named tuple) is refused by :func:`encode` with
:class:`Unsupported`, so that what is loaded is what was stored.
"""
from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import math
import os
import re
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

FORMAT = "nbhelpers.safe_codec/1"
_TREE_KEY = "nbhelpers"
_FORMAT_KEY = "nbhelpers_format"
_BIG_INT = 2**63  # ints at least this large (in magnitude) are written as hex strings
_MAX_DEPTH = 200

# numpy dtypes stored as native safetensors tensors (anything else numeric goes in as raw bytes)
_NATIVE_NP = {np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                    np.uint32, np.uint64, np.float16, np.float32, np.float64, np.complex64)}
_NP_RAW_KINDS = "biufcmM"  # numeric, bool, datetime/timedelta: exact as bytes
_NP_STR_KINDS = "SU"
_MODULE_RE = re.compile(r"nbhelpers(\.[A-Za-z_][A-Za-z0-9_]*)*")
_QUALNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_HEX_RE = re.compile(r"-?[0-9a-f]+")
_PATH_TYPES = {"Path": Path, "PurePosixPath": PurePosixPath, "PureWindowsPath": PureWindowsPath}


class Unsupported(TypeError):
    """A value of a type this format does not store (the message names the type and where it was)."""


class DecodeError(ValueError):
    """A file or tree that is not a valid encoding (garbled, truncated, an unknown tag or class)."""


class _At:
    """Where in the value a node is (for messages), formatted only when an error names it."""

    __slots__ = ("parent", "step", "item")

    def __init__(self, parent, step: str, item):
        self.parent, self.step, self.item = parent, step, item

    def __str__(self) -> str:
        steps, at = [], self
        while isinstance(at, _At):
            steps.append(at.step.format(at.item))
            at = at.parent
        return str(at) + "".join(reversed(steps))


def is_model(obj) -> bool:
    """The model test shared with :mod:`nbhelpers.cache`: a model is stored as a reference."""
    return hasattr(obj, "pipe") and hasattr(obj, "eps") and hasattr(obj, "latent_shape")


# -- torch dtypes -----------------------------------------------------------------------------------------
_TORCH: dict[str, Any] = {}


def _torch_tables():
    """name -> torch.dtype for every dtype torch has, and the names safetensors stores natively."""
    import torch

    if not _TORCH:
        _TORCH["dtypes"] = {str(d).removeprefix("torch."): d for d in vars(torch).values()
                            if isinstance(d, torch.dtype)}
        names = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "float16",
                 "bfloat16", "float32", "float64", "complex64", "float8_e4m3fn", "float8_e5m2")
        _TORCH["native"] = {_TORCH["dtypes"][n] for n in names if n in _TORCH["dtypes"]}
    return _TORCH["dtypes"], _TORCH["native"]


def _torch_dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- encoding ---------------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self):
        self.tensors: dict[str, Any] = {}
        self._by_id: dict[int, tuple[str, Any]] = {}  # id(array or tensor) -> (name, the object, kept alive)
        self._storages: set[int] = set()
        self._active: set[int] = set()

    def add_tensor(self, t, source) -> str:
        """Register a CPU tensor; the same array/tensor object is stored once."""
        hit = self._by_id.get(id(source))
        if hit is not None and hit[1] is source:
            return hit[0]
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in self._storages:  # safetensors refuses two tensors on one storage
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if ptr is not None:
            self._storages.add(ptr)
        name = str(len(self.tensors))
        self.tensors[name] = t
        self._by_id[id(source)] = (name, source)
        return name

    def enc(self, obj, where: str, depth: int = 0):
        if depth > _MAX_DEPTH:
            raise Unsupported(f"value nested more than {_MAX_DEPTH} levels deep (at {where})")
        t = type(obj)
        if obj is None or t is bool or t is str:
            return obj
        if t is int:
            return obj if -_BIG_INT < obj < _BIG_INT else {"t": "int", "v": format(obj, "x")}
        if t is float:
            return obj if math.isfinite(obj) else {"t": "float", "v": repr(obj)}
        if t is complex:
            return {"t": "complex", "v": [self.enc(obj.real, where), self.enc(obj.imag, where)]}
        if t is bytes or t is bytearray:
            return {"t": t.__name__, "v": base64.b64encode(obj).decode("ascii")}
        if t in (list, tuple, dict, set, frozenset) or dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            if id(obj) in self._active:
                raise Unsupported(f"a {t.__name__} that contains itself (at {where})")
            self._active.add(id(obj))
            try:
                return self._container(obj, t, where, depth)
            finally:
                self._active.discard(id(obj))
        if isinstance(obj, np.ndarray) and t is np.ndarray:
            return self._ndarray(obj, where, depth)
        if isinstance(obj, np.generic):
            return self._np_scalar(obj, where)
        if isinstance(obj, np.dtype):
            _check_np_dtype(obj, _NP_RAW_KINDS + _NP_STR_KINDS, where, Unsupported)
            return {"t": "np_dtype", "v": obj.str}
        if isinstance(obj, PurePath):
            for name, cls in _PATH_TYPES.items():
                if t is cls or (name == "Path" and isinstance(obj, Path)):
                    return {"t": "path", "cls": name, "v": str(obj)}
            raise Unsupported(f"cannot store a path of type {t.__name__} (at {where})")
        mod = t.__module__.split(".")[0]
        if mod == "torch":
            return self._torch(obj, where)
        if mod == "PIL":
            return self._pil(obj, where)
        if is_model(obj):
            return {"t": "model"}
        raise Unsupported(f"cannot store a value of type {t.__module__}.{t.__qualname__} (at {where})")

    def _container(self, obj, t, where, depth):
        d = depth + 1
        if t is list:
            return [self.enc(v, _At(where, "[{}]", i), d) for i, v in enumerate(obj)]
        if t is tuple:
            return {"t": "tuple", "v": [self.enc(v, _At(where, "[{}]", i), d) for i, v in enumerate(obj)]}
        if t is dict:
            return {"t": "dict", "v": [[self.enc(k, _At(where, " key {!r}", k), d), self.enc(v, _At(where, "[{!r}]", k), d)]
                                       for k, v in obj.items()]}
        if t is set or t is frozenset:
            return {"t": t.__name__, "v": [self.enc(v, _At(where, " element", None), d) for v in obj]}
        if is_model(obj):
            return {"t": "model"}
        mod, qual = t.__module__, t.__qualname__
        if not (_MODULE_RE.fullmatch(mod) and _QUALNAME_RE.fullmatch(qual)):
            raise Unsupported(f"cannot store a dataclass from outside nbhelpers ({mod}.{qual}, at {where})")
        fields = {}
        for f in dataclasses.fields(obj):
            try:
                v = getattr(obj, f.name)
            except AttributeError:
                raise Unsupported(f"{qual}.{f.name} is not set (at {where})") from None
            fields[f.name] = self.enc(v, _At(where, ".{}", f.name), d)
        return {"t": "dataclass", "cls": f"{mod}:{qual}", "f": fields}

    def _ndarray(self, a: np.ndarray, where, depth):
        import torch

        dt = a.dtype
        shape = list(a.shape)
        if dt.hasobject:
            if dt != np.dtype(object):
                raise Unsupported(f"cannot store an array of structured dtype {dt} (at {where})")
            return {"t": "objarray", "shape": shape,
                    "v": [self.enc(v, _At(where, "[{}]", i), depth + 1) for i, v in enumerate(a.ravel(order="C"))]}
        _check_np_dtype(dt, _NP_RAW_KINDS + _NP_STR_KINDS, where, Unsupported)
        if dt.kind in _NP_STR_KINDS:
            flat = a.ravel(order="C").tolist()
            if dt.kind == "S":
                flat = [b.decode("latin-1") for b in flat]
            return {"t": "strarray", "dtype": dt.str, "shape": shape, "v": flat}
        c = np.ascontiguousarray(a)
        raw = dt not in _NATIVE_NP or not dt.isnative
        t = torch.from_numpy(c.reshape(-1).view(np.uint8) if raw else c)
        return {"t": "ndarray", "dtype": dt.str, "shape": shape, "raw": raw, "data": self.add_tensor(t, a)}

    def _np_scalar(self, x, where):
        dt = x.dtype
        _check_np_dtype(dt, _NP_RAW_KINDS + _NP_STR_KINDS, where, Unsupported)
        return {"t": "npscalar", "dtype": dt.str, "hex": np.asarray(x).tobytes().hex()}

    def _torch(self, obj, where):
        import torch

        if isinstance(obj, torch.dtype):
            return {"t": "torch_dtype", "v": _torch_dtype_name(obj)}
        if isinstance(obj, torch.device):
            return {"t": "torch_device", "v": str(obj)}
        if isinstance(obj, torch.Tensor):
            dtypes, native = _torch_tables()
            if obj.layout != torch.strided or obj.is_quantized or obj.is_nested:
                raise Unsupported(f"cannot store a {obj.layout} / quantized / nested tensor (at {where})")
            name = _torch_dtype_name(obj.dtype)
            if dtypes.get(name) is not obj.dtype:
                raise Unsupported(f"cannot store a tensor of dtype {obj.dtype} (at {where})")
            t = obj.detach().cpu().resolve_conj().resolve_neg().contiguous()
            shape = list(t.shape)
            raw = obj.dtype not in native
            if raw:
                try:
                    t = t.reshape(-1).view(torch.uint8)
                except RuntimeError as e:
                    raise Unsupported(f"cannot store a tensor of dtype {obj.dtype} ({e}; at {where})") from None
            return {"t": "tensor", "dtype": name, "shape": shape, "raw": raw, "data": self.add_tensor(t, obj)}
        raise Unsupported(f"cannot store a value of type {type(obj).__module__}.{type(obj).__qualname__} "
                          f"(at {where})")

    def _pil(self, img, where):
        from PIL import Image

        if not isinstance(img, Image.Image):
            raise Unsupported(f"cannot store a value of type {type(img).__module__}.{type(img).__qualname__} "
                              f"(at {where})")
        import torch

        data = np.frombuffer(img.tobytes(), dtype=np.uint8).copy()
        node = {"t": "pil", "mode": img.mode, "size": list(img.size),
                "data": self.add_tensor(torch.from_numpy(data), data)}
        palette = img.getpalette(img.palette.mode) if img.mode in ("P", "PA") and img.palette is not None else None
        if palette:
            node["palette"] = {"mode": img.palette.mode, "v": list(palette)}
        return node


def _check_np_dtype(dt, kinds: str, where: str, error):
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None or dt.kind not in kinds:
        raise error(f"numpy dtype {dt} is not supported here (at {where})")


def encode(value) -> tuple[Any, dict]:
    """``(tree, tensors)``: a JSON-able tree and the CPU tensors it names. Raises :class:`Unsupported`
    (a ``TypeError``) naming the first value of a type this format does not store."""
    e = _Encoder()
    tree = e.enc(value, "value")
    return tree, e.tensors


# -- decoding ---------------------------------------------------------------------------------------------
def _need(node: dict, key: str, typ, where: str):
    v = node.get(key)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise DecodeError(f"{where}: a {node.get('t')!r} node needs {key!r} of type {getattr(typ, '__name__', typ)}")
    return v


def _shape(node, where) -> tuple[int, ...]:
    shape = _need(node, "shape", list, where)
    if not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 64:
        raise DecodeError(f"{where}: bad shape {shape!r}")
    return tuple(shape)


def _np_dtype(s, kinds: str, where: str) -> np.dtype:
    if not isinstance(s, str) or len(s) > 32:
        raise DecodeError(f"{where}: bad numpy dtype {s!r}")
    try:
        dt = np.dtype(s)
    except (TypeError, ValueError) as e:
        raise DecodeError(f"{where}: bad numpy dtype {s!r}") from e
    _check_np_dtype(dt, kinds, where, DecodeError)
    return dt


def resolve_class(name: str):
    """The dataclass ``module:qualname``, which must be defined in ``nbhelpers``; else :class:`DecodeError`."""
    module, _, qual = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not (_MODULE_RE.fullmatch(module) and _QUALNAME_RE.fullmatch(qual)):
        raise DecodeError(f"class {name!r} is not a class of nbhelpers; refused")
    try:
        obj = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise DecodeError(f"class {name!r} not found ({e})") from e
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)
            and f"{obj.__module__}:{obj.__qualname__}" == name):
        raise DecodeError(f"{name!r} is not a dataclass defined in nbhelpers; refused")
    return obj


class _Decoder:
    def __init__(self, tensors, model):
        self.tensors, self.model = tensors, model
        self._memo: dict[tuple, Any] = {}  # an array stored once for several references: one object again

    def _memoised(self, node, where, build):
        key = (node.get("t"), node.get("data"), node.get("dtype"), repr(node.get("shape")), node.get("raw"))
        if key not in self._memo:
            self._memo[key] = build(node, where)
        return self._memo[key]

    def tensor(self, node, where):
        name = _need(node, "data", str, where)
        if name not in self.tensors:
            raise DecodeError(f"{where}: tensor {name!r} is missing from the file")
        return self.tensors[name]

    def dec(self, node, where: str = "value", depth: int = 0):
        if depth > _MAX_DEPTH:
            raise DecodeError(f"{where}: nested too deeply")
        if node is None or isinstance(node, (bool, str)):
            return node
        if isinstance(node, int):
            if not -_BIG_INT < node < _BIG_INT:
                raise DecodeError(f"{where}: a large int must be written as a tagged node")
            return node
        if isinstance(node, float):
            if not math.isfinite(node):
                raise DecodeError(f"{where}: non-finite float must be a tagged node")
            return node
        if isinstance(node, list):
            return [self.dec(v, _At(where, "[{}]", i), depth + 1) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            raise DecodeError(f"{where}: unexpected JSON value {type(node).__name__}")
        tag = node.get("t")
        method = _TAGS.get(tag) if isinstance(tag, str) else None
        if method is None:
            raise DecodeError(f"{where}: unknown tag {tag!r}")
        return method(self, node, where, depth + 1)

    def _items(self, node, where, depth):
        return [self.dec(v, _At(where, "[{}]", i), depth) for i, v in enumerate(_need(node, "v", list, where))]

    def d_int(self, node, where, depth):
        v = _need(node, "v", str, where)
        if not _HEX_RE.fullmatch(v) or len(v) > 1_000_000:
            raise DecodeError(f"{where}: bad int {v[:40]!r}")
        return int(v, 16)

    def d_float(self, node, where, depth):
        v = _need(node, "v", str, where)
        if v not in ("nan", "inf", "-inf"):
            raise DecodeError(f"{where}: bad float {v!r}")
        return float(v)

    def d_complex(self, node, where, depth):
        parts = self._items(node, where, depth)
        if len(parts) != 2 or not all(type(p) is float for p in parts):
            raise DecodeError(f"{where}: bad complex")
        return complex(*parts)

    def d_bytes(self, node, where, depth):
        try:
            b = base64.b64decode(_need(node, "v", str, where), validate=True)
        except ValueError as e:
            raise DecodeError(f"{where}: bad base64") from e
        return b if node["t"] == "bytes" else bytearray(b)

    def d_tuple(self, node, where, depth):
        return tuple(self._items(node, where, depth))

    def d_set(self, node, where, depth):
        try:
            items = (set if node["t"] == "set" else frozenset)(self._items(node, where, depth))
        except TypeError as e:
            raise DecodeError(f"{where}: unhashable set element ({e})") from e
        return items

    def d_dict(self, node, where, depth):
        out = {}
        for i, pair in enumerate(_need(node, "v", list, where)):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DecodeError(f"{where}: dict item {i} is not a [key, value] pair")
            k = self.dec(pair[0], _At(where, " key {}", i), depth)
            v = self.dec(pair[1], _At(where, "[{!r}]", k), depth)
            try:
                out[k] = v
            except TypeError as e:
                raise DecodeError(f"{where}: unhashable dict key ({e})") from e
        return out

    def d_ndarray(self, node, where, depth):
        return self._memoised(node, where, self._ndarray)

    def _ndarray(self, node, where):
        dt = _np_dtype(node.get("dtype"), _NP_RAW_KINDS, where)
        shape = _shape(node, where)
        raw = _need(node, "raw", bool, where)
        t = self.tensor(node, where)
        try:
            a = t.numpy()
            if raw:
                if a.dtype != np.uint8 or a.ndim != 1:
                    raise DecodeError(f"{where}: raw array data must be a flat uint8 tensor")
                a = a.view(dt)
                if not a.flags.aligned:
                    a = a.copy()
            elif a.dtype != dt:
                raise DecodeError(f"{where}: stored dtype {a.dtype} is not the recorded {dt}")
            return a.reshape(shape)
        except (ValueError, TypeError) as e:  # wrong sizes
            raise DecodeError(f"{where}: array data do not match dtype {dt} and shape {shape} ({e})") from e

    def d_strarray(self, node, where, depth):
        dt = _np_dtype(node.get("dtype"), _NP_STR_KINDS, where)
        shape = _shape(node, where)
        flat = _need(node, "v", list, where)
        if not all(isinstance(s, str) for s in flat) or len(flat) != math.prod(shape):
            raise DecodeError(f"{where}: string array elements do not match shape {shape}")
        try:
            if dt.kind == "S":
                flat = [s.encode("latin-1") for s in flat]
            return np.array(flat, dtype=dt).reshape(shape)
        except (ValueError, UnicodeError) as e:
            raise DecodeError(f"{where}: bad string array ({e})") from e

    def d_objarray(self, node, where, depth):
        shape = _shape(node, where)
        items = self._items(node, where, depth)
        if len(items) != math.prod(shape):
            raise DecodeError(f"{where}: {len(items)} elements for shape {shape}")
        a = np.empty(len(items), dtype=object)
        for i, v in enumerate(items):
            a[i] = v
        return a.reshape(shape)

    def d_npscalar(self, node, where, depth):
        dt = _np_dtype(node.get("dtype"), _NP_RAW_KINDS + _NP_STR_KINDS, where)
        try:
            b = bytes.fromhex(_need(node, "hex", str, where))
        except ValueError as e:
            raise DecodeError(f"{where}: bad hex") from e
        if len(b) != dt.itemsize:
            raise DecodeError(f"{where}: {len(b)} bytes for a {dt} scalar")
        return np.frombuffer(b, dtype=dt)[0].copy()

    def d_np_dtype(self, node, where, depth):
        return _np_dtype(node.get("v"), _NP_RAW_KINDS + _NP_STR_KINDS, where)

    def d_tensor(self, node, where, depth):
        return self._memoised(node, where, self._tensor)

    def _tensor(self, node, where):
        import torch

        dtypes, native = _torch_tables()
        name = _need(node, "dtype", str, where)
        dtype = dtypes.get(name)
        if dtype is None:
            raise DecodeError(f"{where}: unknown torch dtype {name!r}")
        shape = _shape(node, where)
        raw = _need(node, "raw", bool, where)
        t = self.tensor(node, where)
        try:
            if raw:
                if t.dtype != torch.uint8 or t.dim() != 1:
                    raise DecodeError(f"{where}: raw tensor data must be a flat uint8 tensor")
                t = t.view(dtype)
            elif t.dtype != dtype:
                raise DecodeError(f"{where}: stored dtype {t.dtype} is not the recorded {dtype}")
            return t.reshape(shape)
        except RuntimeError as e:
            raise DecodeError(f"{where}: tensor data do not match dtype {name} and shape {shape} ({e})") from e

    def d_torch_dtype(self, node, where, depth):
        dtype = _torch_tables()[0].get(_need(node, "v", str, where))
        if dtype is None:
            raise DecodeError(f"{where}: unknown torch dtype {node['v']!r}")
        return dtype

    def d_torch_device(self, node, where, depth):
        import torch

        try:
            return torch.device(_need(node, "v", str, where))
        except RuntimeError as e:
            raise DecodeError(f"{where}: bad device {node['v']!r}") from e

    def d_path(self, node, where, depth):
        cls = _PATH_TYPES.get(node.get("cls"))
        if cls is None:
            raise DecodeError(f"{where}: unknown path class {node.get('cls')!r}")
        return cls(_need(node, "v", str, where))

    def d_pil(self, node, where, depth):
        from PIL import Image

        mode = _need(node, "mode", str, where)
        size = _need(node, "size", list, where)
        if len(size) != 2 or not all(type(s) is int and s >= 0 for s in size):
            raise DecodeError(f"{where}: bad image size {size!r}")
        data = self.tensor(node, where).numpy()
        if data.dtype != np.uint8 or data.ndim != 1:
            raise DecodeError(f"{where}: image data must be a flat uint8 tensor")
        try:
            img = Image.frombytes(mode, tuple(size), data.tobytes())
            pal = node.get("palette")
            if pal is not None:
                if not (isinstance(pal, dict) and isinstance(pal.get("mode"), str) and isinstance(pal.get("v"), list)
                        and all(type(c) is int and 0 <= c < 256 for c in pal["v"])):
                    raise DecodeError(f"{where}: bad palette")
                img.putpalette(pal["v"], pal["mode"])
        except (ValueError, KeyError, OSError) as e:
            raise DecodeError(f"{where}: bad image ({e})") from e
        return img

    def d_dataclass(self, node, where, depth):
        cls = resolve_class(node.get("cls"))
        stored = _need(node, "f", dict, where)
        names = [f.name for f in dataclasses.fields(cls)]
        if set(stored) != set(names):
            raise DecodeError(f"{where}: fields {sorted(stored)} do not match {cls.__qualname__}'s {sorted(names)}")
        obj = object.__new__(cls)
        for n in names:
            object.__setattr__(obj, n, self.dec(stored[n], _At(where, ".{}", n), depth))
        return obj

    def d_model(self, node, where, depth):
        return self.model


_TAGS = {"int": _Decoder.d_int, "float": _Decoder.d_float, "complex": _Decoder.d_complex,
         "bytes": _Decoder.d_bytes, "bytearray": _Decoder.d_bytes, "tuple": _Decoder.d_tuple,
         "set": _Decoder.d_set, "frozenset": _Decoder.d_set, "dict": _Decoder.d_dict,
         "ndarray": _Decoder.d_ndarray, "strarray": _Decoder.d_strarray, "objarray": _Decoder.d_objarray,
         "npscalar": _Decoder.d_npscalar, "np_dtype": _Decoder.d_np_dtype, "tensor": _Decoder.d_tensor,
         "torch_dtype": _Decoder.d_torch_dtype, "torch_device": _Decoder.d_torch_device, "path": _Decoder.d_path,
         "pil": _Decoder.d_pil, "dataclass": _Decoder.d_dataclass, "model": _Decoder.d_model}


def decode(tree, tensors: dict, model=None):
    """Rebuild the value from :func:`encode`'s ``(tree, tensors)``; the model reference becomes ``model``.
    Raises :class:`DecodeError` for anything that is not a valid encoding."""
    return _Decoder(tensors, model).dec(tree)


# -- files ------------------------------------------------------------------------------------------------
def _reject_constant(name):
    raise DecodeError(f"JSON constant {name} is not allowed")


def save(value, path: str | os.PathLike) -> int:
    """Encode ``value`` into one safetensors file at ``path`` (written in place: callers that need
    atomicity write to a temporary name and rename). Returns the file's size in bytes."""
    from safetensors.torch import save_file

    tree, tensors = encode(value)
    text = json.dumps(tree, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    save_file(tensors, str(path), metadata={_FORMAT_KEY: FORMAT, _TREE_KEY: text})
    return os.path.getsize(path)


def load(path: str | os.PathLike, model=None):
    """Read a file written by :func:`save` (a safetensors parser; nothing in the file is executed)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get(_FORMAT_KEY) != FORMAT or _TREE_KEY not in meta:
                raise DecodeError(f"{path} is not an nbhelpers result file (format {meta.get(_FORMAT_KEY)!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except DecodeError:
        raise
    except Exception as e:  # safetensors' own error types: a truncated or garbled file
        raise DecodeError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    try:
        tree = json.loads(meta[_TREE_KEY], parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise DecodeError(f"{path}: bad JSON tree ({e})") from e
    try:
        return decode(tree, tensors, model)
    except RecursionError as e:
        raise DecodeError(f"{path}: nested too deeply") from e

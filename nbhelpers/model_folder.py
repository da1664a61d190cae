"""Check a diffusers pipeline folder before loading it, so that a broken copy fails at once with a
message naming the file and the fix, instead of deep inside ``from_pretrained`` or, worse, at the first
generation (a folder without its tokenizer files loads and then fails with an ``OverflowError``).

:func:`check_model_folder` reads only small files: ``model_index.json``, each component's
configuration, the tokenizer's file list and the JSON header of each ``.safetensors`` file (never the
tensors), so it takes a few milliseconds. What it checks, for each component that ``model_index.json``
lists (an entry ``[null, null]`` is an absent component):

- ``model_index.json`` itself is readable JSON (a mapping);
- the component's subfolder exists;
- a model (unet, vae, text_encoder, transformer, text_encoder_2, ...) has ``config.json`` and weights in
  safetensors format; weights only in code-carrying formats (``.bin``, ``.pt``, ``.pth``, ``.ckpt``,
  ``.pkl``) are refused, since unpickling can run arbitrary code; each ``.safetensors`` file's header
  is parsed and the file's size must be exactly what the header describes (a truncated or garbled file
  is caught); a sharded model's ``*.safetensors.index.json`` must name only shards that are present;
- a tokenizer has its vocabulary: CLIP ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``),
  T5 / sentencepiece ``spiece.model`` (or ``tokenizer.json``), ...;
- a scheduler has ``scheduler_config.json``.

Every problem found is listed; the error raised is of the first problem's class.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Collection
from pathlib import Path

from .errors import NbhelpersError

__all__ = ["check_model_folder", "ModelFolderError", "ModelFileMissingError", "CorruptModelFileError",
           "UnsafeWeightsError"]


class ModelFolderError(NbhelpersError, ValueError):
    """A pipeline folder that cannot be loaded as it is; the message names the file and the fix."""


class ModelFileMissingError(ModelFolderError, FileNotFoundError):
    """A component folder, configuration, weights or tokenizer file that the pipeline needs is missing."""


class CorruptModelFileError(ModelFolderError):
    """A file that is there but unreadable: invalid JSON, a truncated or garbled ``.safetensors`` file."""


class UnsafeWeightsError(ModelFolderError):
    """Weights only in a code-carrying format (``.bin``, ``.pt``, ``.ckpt``): refused, safetensors only."""


CODE_CARRYING_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Components that load_model replaces with None, so their files are never read.
NOT_LOADED = ("safety_checker", "feature_extractor")
_MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8}
_REFETCH = "copy or download it again (compare its size with the source)"


def check_model_folder(path: Path, ignore: Collection[str] = NOT_LOADED) -> None:
    """Raise a :class:`ModelFolderError` (with every problem found) if the diffusers pipeline folder
    ``path`` is incomplete or damaged; return None if it looks loadable. Reads no tensor data.

    ``ignore``: components not checked (by default those that ``load_model`` replaces with None).
    """
    path = Path(path)
    problems: list[tuple[type[ModelFolderError], str]] = []
    index_file = path / "model_index.json"
    index = _read_json(index_file, problems, what="the pipeline's index",
                       fix="re-save the pipeline with pipe.save_pretrained(folder) or download it again")
    if index is None:
        _raise(problems)
    for name, entry in index.items():
        if name.startswith("_") or name in ignore or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            continue
        library, cls = entry
        if library is None and cls is None:
            continue  # absent component
        sub = path / name
        label = f"component {name!r} ({library} {cls})"
        if not sub.is_dir():
            problems.append((ModelFileMissingError,
                             f"model_index.json lists {label} but its folder {sub} is missing. Copy the whole "
                             "pipeline folder (every subfolder), or re-save it with pipe.save_pretrained(folder); "
                             f"if the pipeline is meant to have no {name}, set its entry in {index_file} to "
                             "[null, null]"))
            continue
        kind = _kind(name, str(cls or ""))
        if kind == "scheduler":
            _read_json(sub / "scheduler_config.json", problems, what=f"the configuration of {label}",
                       fix=f"copy it from the source pipeline, or write it with scheduler.save_pretrained({str(sub)!r})")
        elif kind == "tokenizer":
            _check_tokenizer(sub, str(cls or ""), label, problems)
        elif kind == "processor":
            _read_json(sub / "preprocessor_config.json", problems, what=f"the configuration of {label}",
                       fix="copy it from the source pipeline")
        else:
            _read_json(sub / "config.json", problems, what=f"the configuration of {label}",
                       fix=f"copy it from the source pipeline, or re-save the model with model.save_pretrained({str(sub)!r})")
            _check_weights(sub, label, problems)
    _raise(problems)


# -- helpers ---------------------------------------------------------------------------------------------
def _raise(problems: list) -> None:
    if not problems:
        return
    cls, first = problems[0]
    if len(problems) == 1:
        raise cls(first)
    raise cls(f"{len(problems)} problems in the model folder:\n  - " + "\n  - ".join(m for _, m in problems))


def _kind(name: str, cls: str) -> str:
    if "Tokenizer" in cls or name.startswith("tokenizer"):
        return "tokenizer"
    if "Scheduler" in cls or name.startswith("scheduler"):
        return "scheduler"
    if cls.endswith(("ImageProcessor", "FeatureExtractor", "Processor")) or name in ("feature_extractor", "image_processor"):
        return "processor"
    return "model"


def _missing(file: Path) -> str:
    if file.is_symlink():  # a Hugging Face cache snapshot links to blobs; the blob is gone
        return f"{file} is a link to {os.readlink(file)}, which does not exist (an incomplete download)"
    return f"{file} is missing"


def _read_json(file: Path, problems: list, what: str, fix: str):
    """The JSON mapping in ``file``, or None after recording why it cannot be read."""
    if not file.exists():
        problems.append((ModelFileMissingError, f"{_missing(file)} ({what}); {fix}"))
        return None
    try:
        data = json.loads(file.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problems.append((CorruptModelFileError, f"{file} ({what}) is not readable JSON ({type(e).__name__}: {e}); {fix}"))
        return None
    if not isinstance(data, dict):
        problems.append((CorruptModelFileError, f"{file} ({what}) holds a JSON {type(data).__name__}, not a mapping; {fix}"))
        return None
    return data


def _check_weights(sub: Path, label: str, problems: list) -> None:
    files = sorted(p for p in sub.iterdir() if p.is_file() or p.is_symlink())
    safetensors = [p for p in files if p.name.endswith(".safetensors")]
    indices = [p for p in files if p.name.endswith(".safetensors.index.json")]
    unsafe = [p for p in files if p.name.endswith(CODE_CARRYING_SUFFIXES) or p.name.endswith(".bin.index.json")]
    if not safetensors and not indices:
        if unsafe:
            names = ", ".join(str(p) for p in unsafe)
            problems.append((UnsafeWeightsError,
                             f"{label} has weights only in a code-carrying format ({names}): safetensors only, since "
                             "unpickling a file can run arbitrary code. Convert them where a trusted machine can load "
                             "them: DiffusionPipeline.from_pretrained(folder, use_safetensors=False)"
                             ".save_pretrained(new_folder, safe_serialization=True) (or the same with the component's "
                             f"class and subfolder={sub.name!r}), then load new_folder"))
        else:
            found = ", ".join(p.name for p in files) or "nothing"
            problems.append((ModelFileMissingError,
                             f"{label} has no weights in {sub} (found {found}); it needs a .safetensors file such "
                             "as diffusion_pytorch_model.safetensors or model.safetensors. Copy it from the source "
                             "pipeline, or re-save the pipeline with save_pretrained(folder, safe_serialization=True)"))
        return
    for idx in indices:
        data = _read_json(idx, problems, what=f"the shard index of {label}", fix=_REFETCH)
        if data is None:
            continue
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            problems.append((CorruptModelFileError, f"{idx} (the shard index of {label}) has no weight_map; {_REFETCH}"))
            continue
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (sub / shard).exists():
                problems.append((ModelFileMissingError,
                                 f"{_missing(sub / shard)}: the shard index {idx} lists it for {label}. Copy or "
                                 "download every shard the index names"))
    for f in safetensors:
        if not f.exists():
            problems.append((ModelFileMissingError, f"{_missing(f)} ({label}'s weights); {_REFETCH}"))
            continue
        why = _safetensors_problem(f)
        if why:
            problems.append((CorruptModelFileError, f"{f} ({label}'s weights) {why}; {_REFETCH}"))


def _safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is not a complete safetensors file, from its header alone (None if it is)."""
    try:
        with open(file, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                return f"is truncated: {size} bytes, not even the 8-byte header length"
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > _MAX_HEADER or 8 + n > size:
                return (f"is not a safetensors file or is truncated: its first 8 bytes give a header of {n} bytes "
                        f"but the file has {size}")
            raw = fh.read(n)
    except OSError as e:
        return f"cannot be read ({e})"
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        return f"is garbled: its {n}-byte header is not JSON ({e})"
    if not isinstance(header, dict):
        return "is garbled: its header is not a JSON mapping"
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"is garbled: the header's entry for tensor {key!r} lacks dtype, shape or data_offsets"
        count = 1
        for d in shape:
            count *= d
        if end < begin or (dtype in _DTYPE_BYTES and end - begin != count * _DTYPE_BYTES[dtype]):
            return f"is garbled: tensor {key!r} ({dtype} {shape}) has data_offsets [{begin}, {end}]"
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos:
            return f"is garbled: its tensors' data do not follow one another (a gap or overlap at byte {pos})"
        pos = end
    expected = 8 + n + pos
    if size < expected:
        return f"is truncated: its header describes {expected} bytes but the file has {size} ({expected - size} missing)"
    if size > expected:
        return f"is garbled: its header describes {expected} bytes but the file has {size} ({size - expected} extra)"
    return None


_CLIP = ([("tokenizer.json",), ("vocab.json", "merges.txt")], "vocab.json + merges.txt (or tokenizer.json)")
_T5 = ([("tokenizer.json",), ("spiece.model",)], "spiece.model (or tokenizer.json)")
_LLAMA = ([("tokenizer.json",), ("tokenizer.model",)], "tokenizer.model (or tokenizer.json)")
_ANY = ([("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",), ("tokenizer.model",), ("vocab.txt",),
         ("sentencepiece.bpe.model",)],
        "tokenizer.json, or vocab.json + merges.txt, or spiece.model, tokenizer.model, vocab.txt")


def _tokenizer_rule(cls: str):
    c = cls.lower()
    if "clip" in c:
        return _CLIP
    if "t5" in c or "sentencepiece" in c or "xlmroberta" in c:
        return _T5
    if "llama" in c or "gemma" in c:
        return _LLAMA
    return _ANY


def _check_tokenizer(sub: Path, cls: str, label: str, problems: list) -> None:
    config_file = sub / "tokenizer_config.json"
    config = None
    if config_file.exists():
        config = _read_json(config_file, problems, what=f"the configuration of {label}",
                            fix="copy it from the source pipeline")
    if "Tokenizer" not in cls and config:  # e.g. an AutoTokenizer entry: the config says which
        cls = str(config.get("tokenizer_class") or cls)
    alternatives, needs = _tokenizer_rule(cls)
    present = {p.name for p in sub.iterdir() if p.exists()}
    complete = [alt for alt in alternatives if all(f in present for f in alt)]
    fix = (f"copy the tokenizer files from the source pipeline, or write them with "
           f"{cls or 'AutoTokenizer'}.from_pretrained(source, subfolder={sub.name!r}).save_pretrained({str(sub)!r}). "
           "Without them the prompt cannot be tokenized (the pipeline would load and then fail at the first generation)")
    if not complete:
        best = max(alternatives, key=lambda alt: sum(f in present for f in alt))
        if any(f in present for f in best):  # half a vocabulary, e.g. vocab.json without merges.txt
            lacks = "lacks " + " and ".join(f for f in best if f not in present)
        else:
            lacks = "has no vocabulary files"
        found = ", ".join(sorted(present)) or "nothing"
        problems.append((ModelFileMissingError,
                         f"the tokenizer folder {sub} ({label}) {lacks}: {cls or 'a tokenizer'} needs {needs}; "
                         f"found {found}. To fix: {fix}"))
        return
    for f in complete[0]:
        file = sub / f
        if file.stat().st_size == 0:
            problems.append((CorruptModelFileError, f"{file} ({label}) is empty; {fix}"))
        elif f.endswith(".json") and not _ends_with_brace(file):
            problems.append((CorruptModelFileError, f"{file} ({label}) is truncated (it does not end with '}}'); {fix}"))


def _ends_with_brace(file: Path) -> bool:
    with open(file, "rb") as fh:
        fh.seek(max(0, file.stat().st_size - 64))
        return fh.read().rstrip().endswith(b"}")

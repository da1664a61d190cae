"""Resumable on-disk tables: append-only CSV or JSON-lines files with one row per key.

A long study (a bias audit, a localisation study over a data set) writes each finished piece of work as it
arrives, so an interruption loses at most the pieces in flight. :class:`ResumableTable` is that file:

- ``done()``: the keys already written (read once from the file, then kept in memory);
- ``append(rows)``: writes the rows whose key is not written yet and returns them; a row whose key is
  already there is skipped, so a piece of work computed twice (a retried shard on a cluster, a resumed run)
  is recorded exactly once, whatever the order in which the pieces finish;
- a half-written last line (the process killed mid-write) is cut off when the table is opened, and its row
  is computed again.

Formats are plain text that nothing executes on reading: ``.csv`` (values as text; floats written with
Python's shortest round-trip ``repr``, so they read back bit for bit) or ``.jsonl`` (one JSON object a line,
for rows holding lists and dicts). Keys are compared as text (``str(value)``), as a CSV reader returns them.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .validate import ArgumentError

FORMATS = (".csv", ".jsonl")


class ResumableTable:
    """An append-only table at ``path`` (``.csv`` or ``.jsonl``) whose rows are unique by ``key`` (column names)."""

    def __init__(self, path: str | Path, key: tuple[str, ...] | list[str]):
        self.path = Path(path)
        if self.path.suffix not in FORMATS:
            raise ArgumentError(f"path={str(path)!r}: a resumable table is a .csv or a .jsonl file; "
                                f"name it e.g. {self.path.with_suffix('.csv').name!r}")
        if not key:
            raise ArgumentError("key=(): name the columns that identify a row, e.g. key=('subject', 'seed')")
        self.key = tuple(key)
        self._fields: list[str] | None = None
        self._done: set[tuple[str, ...]] = set()
        self._open()

    # -- reading ------------------------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.path.exists():
            return
        _cut_partial_last_line(self.path)
        for row in self.rows():
            missing = [k for k in self.key if k not in row]
            if missing:
                raise ArgumentError(f"{self.path} has no column(s) {missing} of the key {list(self.key)}; it was "
                                    "written by something else: give a new folder")
            self._done.add(self.key_of(row))

    def rows(self) -> list[dict]:
        """Every row on disk, in the order written (CSV values as text; JSON values as written)."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            if self.path.suffix == ".csv":
                reader = csv.DictReader(f)
                self._fields = list(reader.fieldnames or [])
                return list(reader)
            return [json.loads(line) for line in f if line.strip()]

    def key_of(self, row: dict) -> tuple[str, ...]:
        """The row's key as text (how a CSV reader returns it)."""
        return tuple(str(row[k]) for k in self.key)

    def done(self) -> set[tuple[str, ...]]:
        """The keys already in the table."""
        return set(self._done)

    def __contains__(self, key) -> bool:
        return tuple(str(k) for k in key) in self._done

    def __len__(self) -> int:
        return len(self._done)

    # -- writing ------------------------------------------------------------------------------------------
    def append(self, rows: list[dict]) -> list[dict]:
        """Write the rows whose key is new (the first of equal keys among ``rows``), in one write, flushed
        to disk; returns the rows written."""
        new, seen = [], set()
        for row in rows:
            k = self.key_of(row)
            if k not in self._done and k not in seen:
                seen.add(k)
                new.append(row)
        if not new:
            return []
        buf = io.StringIO()
        if self.path.suffix == ".csv":
            fields = self._fields or list(new[0])
            extra = sorted({c for r in new for c in r} - set(fields))
            if extra:
                raise ArgumentError(f"rows for {self.path} have column(s) {extra} that its header {fields} lacks; "
                                    "write every row with the same columns")
            w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            if not self.path.exists() or self.path.stat().st_size == 0:
                w.writeheader()
            w.writerows(new)
            self._fields = fields
        else:
            for row in new:
                buf.write(json.dumps(row) + "\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        self._done |= seen
        return new


def _cut_partial_last_line(path: Path) -> None:
    """Drop a last line without its newline (a write cut off by a kill); its row is redone."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


def study_folder(out: str | Path, spec: dict, error=None) -> Path:
    """Create (or reopen) a study's results folder ``out`` holding ``spec.json``; refuse one written with other
    settings (``error``: the exception class to raise, default :class:`ArgumentError`), naming what differs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "spec.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != spec:
            changed = sorted(k for k in set(spec) | set(old) if old.get(k) != spec.get(k))
            raise (error or ArgumentError)(f"{out} holds results with other settings (differs in {changed}); resume "
                                           "with the same settings and data, or give a new folder")
    path.write_text(json.dumps(spec, indent=1))
    return out


def digest(*parts) -> str:
    """A short SHA-256 of arrays, strings and numbers (nested lists and tuples), e.g. a study's images and
    prompts, so a results folder knows the data it was computed on."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, (list, tuple)):
            h.update(b"[%d" % len(x))
            for item in x:
                feed(item)
        elif isinstance(x, dict):
            feed(sorted((str(k), v) for k, v in x.items()))
        elif isinstance(x, (str, int, float, bool)) or x is None:
            h.update(repr(x).encode())
        else:
            a = np.ascontiguousarray(np.asarray(x))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())

    for p in parts:
        feed(p)
    return h.hexdigest()[:16]


def plain(value):
    """``value`` with numpy scalars and arrays turned into Python numbers and lists (for a JSON row)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return plain(value.item())  # a 0-d torch tensor
    return value

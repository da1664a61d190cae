"""Run notebooks headless with papermill into HTML reports with an index page.

    nbhelpers report                                   # every notebook, default parameters
    nbhelpers report 01 04 --fast                      # a subset (number, name or name without prefix)
    nbhelpers report --config configs/teaching.yaml    # parameters from a YAML file
    nbhelpers report 02 -p word1=red -p n=32           # parameters on the command line
    nbhelpers report --list                            # notebooks and the parameters each declares
    nbhelpers report --models toy toy-dit              # every lesson on each model (the index shows both)

Parameters are checked against each notebook's ``parameters`` cell **before anything runs**: an
unknown name, a value of the wrong type or outside its allowed choices stops the run with one message
listing every problem. Each notebook writes its figures and ``metrics.json`` to ``<out>/<name>/``; the
executed notebook becomes ``<out>/<name>.html``. A failing notebook is reported (cell number, error,
the failing line) on the index page while the others still run; the exit status is then 1.

The index is rewritten before and after every notebook, so it always says which notebooks ran, which
one is running and which have not started. Interrupting the run (Ctrl-C) stops it cleanly: the index
then says which notebooks finished (their HTML is kept), which one was cut off (with the HTML of the
cells it ran, when there are any) and which never ran, and the exit status is 130.

The YAML file (every key optional)::

    out: reports                  # output folder
    notebooks: [00_tour, 01]      # default: all
    timeout: 3600                 # seconds per cell
    cache: true                   # use the on-disk result cache (nbhelpers.cache)
    models: [toy, toy-dit]        # run each notebook that declares `model` once per model
    parameters:                   # for every notebook that declares the name
      fast: true
      model: toy
    notebook_parameters:          # for one notebook
      01_information_decomposition: {word: blue}
"""
from __future__ import annotations

import argparse
import ast
import html
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CONFIG_KEYS = ("out", "notebooks", "timeout", "cache", "parameters", "notebook_parameters", "models")
# Parameters whose values come from a fixed set (checked before running).
CHOICES = {
    "device": ("auto", "cpu", "cuda", "mps"),
    "form": ("standard", "orthogonal"),
    "context": ("rest", "none"),
    "reference": ("parity", "others"),
    "source": ("render", "generated"),
}
# Integer parameters that may be zero; every other integer (counts, steps) must be at least 1.
MAY_BE_ZERO = {"seed", "explain_step"}


@dataclass
class Run:
    """One notebook run of a report: its name on the index (the notebook's, with ``@model`` for every
    model after the first of ``--models``), the notebook and its validated parameters."""

    name: str
    spec: "NotebookSpec"
    parameters: dict


def runs_for(chosen: list, planned: dict[str, dict], models: list[str] | None = None) -> list[Run]:
    """The runs of a report: each notebook once with its planned parameters, or with ``models``, each
    notebook that declares ``model`` once per model, named ``<notebook>`` for the first model and
    ``<notebook>@<model>`` for the others (a notebook that compares models itself, declaring ``other_model``,
    and one without a ``model`` parameter run once)."""
    runs = []
    for spec in chosen:
        params = planned[spec.name]
        if not models or "model" not in spec.defaults or "other_model" in spec.defaults:
            runs.append(Run(spec.name, spec, dict(params)))
            continue
        for i, m in enumerate(models):
            runs.append(Run(spec.name if i == 0 else f"{spec.name}@{m}", spec, {**params, "model": m}))
    return runs


class ReportConfigError(ValueError):
    """Bad report configuration or parameters; the message lists every problem."""


class NotebookInterrupted(KeyboardInterrupt):
    """Ctrl-C while a notebook ran (in this process or in its kernel); ``summary`` is the notebook's
    summary with status "interrupted" (and ``html`` when the cells run until then could be kept)."""

    def __init__(self, summary: dict):
        super().__init__(f"{summary['name']} interrupted")
        self.summary = summary


# Statuses in summary.json and on the index page.
OK, FAILED, INTERRUPTED, RUNNING, PENDING, NOT_RUN = "ok", "failed", "interrupted", "running", "pending", "not run"
INTERRUPT_EXIT = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


# -- notebooks and their parameters ------------------------------------------------------------------
@dataclass
class NotebookSpec:
    """A notebook and what its ``parameters`` cell declares: name -> default value (Python literal)."""

    path: Path
    defaults: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def notebook_parameters(path: Path) -> dict:
    """Names and default values (as source text) that papermill finds in the ``parameters`` cell."""
    import papermill

    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def notebook_specs(folder: Path = NOTEBOOK_DIR) -> list[NotebookSpec]:
    specs = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        defaults = {}
        for k, text in notebook_parameters(path).items():
            try:
                defaults[k] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                defaults[k] = None  # an expression: any value is accepted
        specs.append(NotebookSpec(path, defaults))
    return specs


def select(specs: list[NotebookSpec], wanted: list[str] | None) -> list[NotebookSpec]:
    """Notebooks by full name ("01_information_decomposition"), number ("01") or name without
    the number ("information_decomposition"); all when ``wanted`` is empty."""
    if not wanted:
        return specs
    out, problems = [], []
    for w in wanted:
        # YAML reads `01` as the integer 1
        w = f"{w:02d}" if isinstance(w, int) and not isinstance(w, bool) else str(w).removesuffix(".ipynb")
        hits = [s for s in specs if w in (s.name, s.name[:2], s.name[3:])]
        if len(hits) != 1:
            problems.append(f"unknown notebook {w!r}")
        elif hits[0] not in out:
            out.append(hits[0])
    if problems:
        raise ReportConfigError("; ".join(problems) + f". Choose from: {', '.join(s.name for s in specs)}")
    return out


def _type_name(v) -> str:
    return "bool" if isinstance(v, bool) else type(v).__name__


def check_value(name: str, value, default) -> str | None:
    """Why ``value`` is not acceptable for a parameter whose default is ``default`` (None if it is)."""
    if default is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        return f"{name} must be {_type_name(default)} (like its default {default!r}), got {_type_name(value)} {value!r}"
    if name in CHOICES and value not in CHOICES[name] and not (name == "device" and str(value).startswith("cuda:")):
        return f"{name} must be one of {list(CHOICES[name])}, got {value!r}"
    if isinstance(default, int) and not isinstance(default, bool) and name not in MAY_BE_ZERO and value < 1:
        return f"{name} must be at least 1, got {value}"
    if isinstance(default, (int, float)) and not isinstance(default, bool) and value < 0:
        return f"{name} must not be negative, got {value}"
    return None


def plan(specs: list[NotebookSpec], parameters: dict | None = None,
         notebook_parameters_: dict | None = None) -> dict[str, dict]:
    """Validated parameters for each selected notebook: ``parameters`` go to every notebook that
    declares the name (a name no selected notebook declares is an error); ``notebook_parameters_``
    maps a notebook (any name :func:`select` accepts) to its own. Raises :class:`ReportConfigError`
    listing every problem."""
    parameters = dict(parameters or {})
    problems = []
    out = {s.name: {} for s in specs}
    for name, value in parameters.items():
        takers = [s for s in specs if name in s.defaults]
        if not takers:
            known = sorted({k for s in specs for k in s.defaults})
            problems.append(f"unknown parameter {name!r}: no selected notebook declares it (known: {', '.join(known)})")
        for s in takers:
            why = check_value(name, value, s.defaults[name])
            if why:
                problems.append(f"{s.name}: {why}")
            out[s.name][name] = value
    all_specs = {s.name: s for s in specs}
    for nb, params in (notebook_parameters_ or {}).items():
        try:
            (spec,) = select(list(all_specs.values()), [nb])
        except ReportConfigError:
            problems.append(f"notebook_parameters names {nb!r}, which is not among the selected notebooks "
                            f"({', '.join(all_specs)})")
            continue
        if not isinstance(params, dict):
            problems.append(f"notebook_parameters.{nb} must be a mapping of name: value")
            continue
        for name, value in params.items():
            if name not in spec.defaults:
                problems.append(f"{spec.name}: unknown parameter {name!r} (it declares: {', '.join(spec.defaults)})")
                continue
            why = check_value(name, value, spec.defaults[name])
            if why:
                problems.append(f"{spec.name}: {why}")
            out[spec.name][name] = value
    if problems:
        raise ReportConfigError("invalid report parameters:\n  - " + "\n  - ".join(problems))
    return out


def load_config(path: str | Path) -> dict:
    """Read and shape-check a YAML report configuration (see the module docstring)."""
    from .yaml_config import read_mapping

    p = Path(path)
    cfg = read_mapping(p, CONFIG_KEYS, ReportConfigError)
    for key, kind in (("parameters", dict), ("notebook_parameters", dict), ("notebooks", list)):
        if key in cfg and cfg[key] is not None and not isinstance(cfg[key], kind):
            raise ReportConfigError(f"{p}: {key} must be a {'mapping' if kind is dict else 'list'}")
    return cfg


def parse_assignment(text: str) -> tuple[str | None, str, object]:
    """``NAME=VALUE`` or ``NOTEBOOK:NAME=VALUE``; VALUE read as YAML (``3`` int, ``true`` bool, text str)."""
    import yaml

    lhs, sep, rhs = text.partition("=")
    if not sep or not lhs.strip():
        raise ReportConfigError(f"-p expects NAME=VALUE or NOTEBOOK:NAME=VALUE, got {text!r}")
    nb, _, name = lhs.strip().rpartition(":")
    try:
        value = yaml.safe_load(rhs) if rhs.strip() else ""
    except yaml.YAMLError:
        value = rhs
    return (nb or None), name, value


# -- running ---------------------------------------------------------------------------------------------
def _error_summary(e: Exception) -> dict:
    """Cell number, error and failing line of a papermill execution error (or any exception)."""
    ename = getattr(e, "ename", type(e).__name__)
    evalue = getattr(e, "evalue", str(e))
    out = {"error": f"{ename}: {evalue}".strip(), "cell": getattr(e, "exec_count", None)}
    source = getattr(e, "source", None)
    if source:
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        out["source"] = lines[-1][:200] if lines else ""
        out["cell_index"] = getattr(e, "cell_index", None)
    return out


def run_notebook(path: Path, out_dir: Path, parameters: dict | None = None, timeout: int = 3600,
                 progress: bool = True, name: str | None = None) -> dict:
    """Execute one notebook into ``out_dir``; returns a summary (status, seconds, metrics, error, ...).
    ``parameters`` must already be validated (:func:`plan`). ``name``: of its outputs (``<name>.html``,
    ``<name>/``; default the notebook's)."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    name = name or path.stem
    nb_out_dir = out_dir / name
    nb_out_dir.mkdir(parents=True, exist_ok=True)
    declared = notebook_parameters(path)
    params = {"output_dir": str(nb_out_dir)} if "output_dir" in declared else {}
    params.update(parameters or {})
    executed = out_dir / f"{name}.ipynb"
    executed.unlink(missing_ok=True)  # a previous run's, which an interrupted run must not pass off as its own
    t0 = time.time()
    summary = {"name": name, "status": OK, "error": None, "parameters": dict(parameters or {})}
    os.environ.setdefault("NBHELPERS_HEADLESS", "1")
    try:
        papermill.execute_notebook(str(path), str(executed), parameters=params, cwd=str(path.parent),
                                   progress_bar=progress, kernel_name="python3", execution_timeout=timeout)
    except KeyboardInterrupt:  # Ctrl-C here: papermill has saved the cells run so far; the kernel is shut down
        summary.update(status=INTERRUPTED, error="KeyboardInterrupt", cell=_last_started_cell(executed))
    except Exception as e:  # papermill's PapermillExecutionError names the cell; others (kernel died) too
        summary["status"] = FAILED
        summary.update(_error_summary(e))
        if getattr(e, "ename", None) == "KeyboardInterrupt":  # the kernel got the Ctrl-C (same process group)
            summary["status"] = INTERRUPTED
    summary["seconds"] = round(time.time() - t0, 1)
    if executed.exists():
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
        _write_atomic(out_dir / f"{name}.html", body)
        summary["html"] = f"{name}.html"
    metrics = nb_out_dir / "metrics.json"
    summary["metrics"] = json.loads(metrics.read_text()) if metrics.exists() and summary["status"] == "ok" else {}
    thumbs = sorted(nb_out_dir.glob("*.png"), key=lambda p: p.stat().st_mtime)
    summary["figures"] = [f"{name}/{p.name}" for p in thumbs]
    summary["thumbnail"] = summary["figures"][0] if thumbs else None
    if summary["status"] == INTERRUPTED:
        raise NotebookInterrupted(summary)
    return summary


def _last_started_cell(executed: Path) -> int | None:
    """Execution count of the last cell that started in a partly executed notebook (None if none did)."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # not written yet, or cut off while being written
        return None
    counts = [c.get("execution_count") for c in nb.cells if c.get("cell_type") == "code"]
    return max((n for n in counts if n), default=None)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so the file is never seen half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def _sigint_deferred():
    """Ignore Ctrl-C for the few milliseconds of a final write (main thread only); restore it after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and len(v) <= 12:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = json.dumps(v, default=str)
    return s if len(s) < 100 else s[:97] + "..."


def _status_html(s: dict) -> tuple[str, str]:
    """(the card's CSS class, its status line) for one summary."""
    st = s["status"]
    if st == OK:
        return "ok", f"<span class='ok'>ran</span> in {s['seconds']} s"
    if st == FAILED:
        where = f"cell {s.get('cell')}" if s.get("cell") is not None else "before any cell"
        line = (f"<span class='bad'>failed at {where}</span> after {s['seconds']} s: "
                f"<code>{html.escape(s.get('error') or '')}</code>")
        if s.get("source"):
            line += f"<br>failing line: <code>{html.escape(s['source'])}</code>"
        return "bad", line
    if st == INTERRUPTED:
        where = f" at cell {s['cell']}" if s.get("cell") is not None else ""
        secs = f" after {s['seconds']} s" if s.get("seconds") is not None else ""
        kept = ("; its page shows the cells run until then" if s.get("html")
                else "; nothing of it was kept (it was cut off before papermill saved it)")
        return "bad", f"<span class='bad'>interrupted</span> (Ctrl-C){where}{secs}: cut off, not finished{kept}"
    if st == RUNNING:
        return "wait", (f"<span class='wait'>running</span> since {html.escape(str(s.get('started', '?')))} when "
                        "this page was written (if the report is no longer running, it stopped here)")
    if st == PENDING:
        return "wait", "<span class='wait'>not started yet</span> when this page was written"
    return "skip", "<span class='skip'>never ran</span>: the report was interrupted before it started"


def write_index(out_dir: Path, summaries: list[dict], command: str = "nbhelpers report") -> Path:
    """``index.html`` (one card per notebook: status, time, parameters, key metrics, figures) and
    ``summary.json``. Statuses: "ok", "failed", "interrupted" (cut off by Ctrl-C), "running",
    "pending" (not started yet), "not run" (the run was interrupted before it)."""
    cards = []
    for s in summaries:
        kind, status = _status_html(s)
        title = f'<a href="{s["html"]}">{html.escape(s["name"])}</a>' if s.get("html") else html.escape(s["name"])
        params = ", ".join(f"{html.escape(k)}={html.escape(_short(v))}" for k, v in s.get("parameters", {}).items())
        flat = _flatten(s.get("metrics") or {})
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_short(v))}</td></tr>"
                       for k, v in list(flat.items())[:14])
        more = f"<p><small>{len(flat) - 14} more in {html.escape(s['name'])}/metrics.json</small></p>" if len(flat) > 14 else ""
        figs = "".join(f'<a href="{html.escape(f)}"><img src="{html.escape(f)}" alt="{html.escape(f)}"></a>'
                       for f in s.get("figures", [])[:4])
        cards.append(f"<section class='{kind}'><h2>{title}</h2><p>{status}</p>"
                     f"<p><small>parameters: {params or 'defaults'}</small></p>"
                     f"<div class='figs'>{figs}</div><table>{rows}</table>{more}</section>")
    count = {st: [s["name"] for s in summaries if s["status"] == st]
             for st in (OK, FAILED, INTERRUPTED, RUNNING, PENDING, NOT_RUN)}
    n, finished = len(summaries), len(count[OK]) + len(count[FAILED])
    state = ""
    if count[INTERRUPTED] or count[NOT_RUN]:
        during = f" during {html.escape(count[INTERRUPTED][0])}" if count[INTERRUPTED] else ""
        state = (f"<p class='bad'><b>Interrupted</b> (Ctrl-C){during}: "
                 f"{finished} of {n} notebooks finished, {len(count[INTERRUPTED])} was cut off, "
                 f"{len(count[NOT_RUN])} never ran. The report is incomplete.</p>")
    elif count[RUNNING] or count[PENDING]:
        state = (f"<p class='wait'><b>In progress</b> when this page was written: {finished} of {n} notebooks "
                 f"finished, running {html.escape(', '.join(count[RUNNING]) or 'none')}, {len(count[PENDING])} "
                 "not started yet. The page is rewritten before and after every notebook.</p>")
    page = ("<!doctype html><meta charset='utf-8'><title>nbhelpers reports</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}section{border:1px solid #ccc;"
            "border-radius:6px;padding:0 1em 1em;margin:1em 0}section.bad{border-color:#c33}.ok{color:#262}"
            ".bad{color:#b22}.wait{color:#a60}section.wait{border-color:#da3}.skip{color:#777}"
            "section.skip{border-style:dashed}.figs img{height:140px;margin:4px;border:1px solid #eee}"
            "td{padding:2px 10px;border-bottom:1px solid #eee;font-size:90%}</style>"
            "<h1>Interpreting text-to-image diffusion: reports</h1>" + state +
            f"<p>{len(count[OK])} of {n} notebooks ran. Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by "
            f"<code>{html.escape(command)}</code>.</p>" + "".join(cards))
    index = out_dir / "index.html"
    _write_atomic(index, page)
    _write_atomic(out_dir / "summary.json", json.dumps(summaries, indent=1, default=str))
    return index


def write_metrics(output_dir: str | None, metrics: dict) -> dict:
    """Write a notebook's key numbers to ``output_dir/metrics.json`` (when set); returns them. A number
    that is not finite (a method a model lacks: NaN) is written as ``null``, so the file is strict JSON."""
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        text = json.dumps(_strict_json(json.loads(json.dumps(metrics, default=float))), indent=1, allow_nan=False)
        (Path(output_dir) / "metrics.json").write_text(text)
    return metrics


def _strict_json(obj):
    """``obj`` (parsed JSON) with NaN and infinities replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict_json(v) for v in obj]
    return obj


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nbhelpers report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (number, name); default all")
    ap.add_argument("--config", help="YAML file with out/notebooks/parameters/notebook_parameters")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NOTEBOOK:]NAME=VALUE",
                    help="set a parameter (repeatable); overrides the YAML file")
    ap.add_argument("--out", default=None, help="output folder (default reports)")
    ap.add_argument("--fast", action="store_true", help="shorthand for -p fast=true")
    ap.add_argument("--model", default=None, help="shorthand for -p model=NAME")
    ap.add_argument("--models", nargs="+", default=None, metavar="NAME",
                    help="run each notebook once per model (e.g. --models toy toy-dit); the first keeps the "
                         "notebook's name, the others are named NOTEBOOK@MODEL")
    ap.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default 3600)")
    ap.add_argument("--no-cache", action="store_true", help="compute everything afresh (NBHELPERS_CACHE=0)")
    ap.add_argument("--notebook-dir", default=None, help="folder of notebooks (default: the suite's notebooks/)")
    ap.add_argument("--list", action="store_true", help="list notebooks and their parameters, run nothing")
    ap.add_argument("--check", action="store_true", help="validate the parameters, run nothing")
    ap.add_argument("--quiet", action="store_true", help="no per-cell progress bars")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        specs = notebook_specs(Path(a.notebook_dir) if a.notebook_dir else NOTEBOOK_DIR)
        if not specs:
            raise ReportConfigError(f"no notebooks named NN_*.ipynb in {a.notebook_dir or NOTEBOOK_DIR}")
        if a.list:
            for s in specs:
                print(s.name)
                for k, v in s.defaults.items():
                    print(f"    {k} = {v!r}" + (f"   (one of {list(CHOICES[k])})" if k in CHOICES else ""))
            return 0
        cfg = load_config(a.config) if a.config else {}
        chosen = select(specs, a.notebooks or cfg.get("notebooks"))
        params = dict(cfg.get("parameters") or {})
        per_nb = {k: dict(v) if isinstance(v, dict) else v for k, v in (cfg.get("notebook_parameters") or {}).items()}
        if a.fast:
            params["fast"] = True
        if a.model:
            params["model"] = a.model
        for text in a.param:
            nb, name, value = parse_assignment(text)
            if nb:
                per_nb.setdefault(nb, {})[name] = value
            else:
                params[name] = value
        planned = plan(chosen, params, per_nb)
        models = a.models or cfg.get("models")
        if models is not None:
            if a.model or "model" in params:
                raise ReportConfigError("give either --models (each notebook on each model) or --model/-p model=, "
                                        "not both")
            if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
                raise ReportConfigError(f"models must be a non-empty list of model names, got {models!r}")
        runs = runs_for(chosen, planned, models)
    except ReportConfigError as e:
        print(f"nbhelpers report: {e}", file=sys.stderr)
        return 2
    if a.check:
        for r in runs:
            print(f"{r.name}: {r.parameters or 'defaults'}")
        print("parameters are valid")
        return 0
    out = Path(a.out or cfg.get("out") or "reports").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.no_cache or cfg.get("cache") is False:
        os.environ["NBHELPERS_CACHE"] = "0"
    timeout = a.timeout or int(cfg.get("timeout") or 3600)
    command = "nbhelpers report " + " ".join(argv if argv is not None else sys.argv[1:])
    summaries, interrupted = run_all(runs, out, timeout=timeout, progress=not a.quiet, command=command)
    index = out / "index.html"
    if interrupted:
        cut = [s["name"] for s in summaries if s["status"] == INTERRUPTED]
        done = sum(s["status"] in (OK, FAILED) for s in summaries)
        never = [s["name"] for s in summaries if s["status"] == NOT_RUN]
        print(f"report interrupted{' during ' + cut[0] if cut else ''}: {done} of {len(summaries)} notebooks "
              f"finished" + (f"; never ran: {', '.join(never)}" if never else "") + f". Index: {index}",
              file=sys.stderr)
        return INTERRUPT_EXIT
    failed = [s["name"] for s in summaries if s["status"] != OK]
    print(f"report: {index}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def run_all(runs: list[Run], out: Path, timeout: int = 3600, progress: bool = True,
            command: str = "nbhelpers report") -> tuple[list[dict], bool]:
    """Run the notebooks in order (:func:`runs_for`), rewriting the index before and after each one; returns
    the summaries and whether the run was interrupted. Ctrl-C stops the run: the notebook it cut off is
    marked "interrupted", the ones after it "not run", and the index is written once more (the
    caller then exits with status 130)."""
    summaries = [{"name": r.name, "status": PENDING, "parameters": dict(r.parameters)} for r in runs]
    bar = tqdm(total=len(runs), desc="notebooks", unit="nb")
    current, t0, interrupted = None, time.time(), False
    try:
        for i, run in enumerate(runs):
            current, t0 = i, time.time()
            summaries[i].update(status=RUNNING, started=time.strftime("%H:%M:%S"))
            write_index(out, summaries, command)
            bar.set_postfix_str(run.name)
            s = run_notebook(run.spec.path, out, run.parameters, timeout=timeout, progress=progress, name=run.name)
            tqdm.write(f"{run.name}: {s['status']} in {s['seconds']} s"
                       + (f" (cell {s.get('cell')}: {s['error']})" if s["error"] else ""))
            summaries[i], current = s, None
            bar.update()
            write_index(out, summaries, command)
    except KeyboardInterrupt as e:
        interrupted = True
        with _sigint_deferred():
            if current is not None:
                summaries[current] = getattr(e, "summary", None) or {
                    "name": runs[current].name, "status": INTERRUPTED, "error": "KeyboardInterrupt",
                    "parameters": dict(runs[current].parameters), "seconds": round(time.time() - t0, 1)}
                summaries[current]["status"] = INTERRUPTED
            for s in summaries:
                if s["status"] in (PENDING, RUNNING):
                    s["status"] = NOT_RUN
            write_index(out, summaries, command)
    finally:
        bar.close()
    return summaries, interrupted

if __name__ == "__main__":
    sys.exit(main())

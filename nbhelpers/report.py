"""Run notebooks headless with papermill and write HTML reports with an index page.

    python -m nbhelpers.report --out reports [--fast] [--only 00_tour 01_information_decomposition]

Each notebook runs with its own ``output_dir`` (``reports/<name>/``) where it writes figures and
``metrics.json``; the executed notebook is converted to ``reports/<name>.html``. A failing
notebook is reported (cell and error) on the index page while the others still run.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebook_parameters(path: Path) -> dict:
    """Names and default values papermill finds in the notebook's ``parameters`` cell."""
    import papermill

    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def run_notebook(path: Path, out_dir: Path, parameters: dict | None = None, timeout: int = 3600) -> dict:
    """Execute one notebook; returns a summary dict (status, seconds, metrics, error)."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    name = path.stem
    nb_out_dir = out_dir / name
    nb_out_dir.mkdir(parents=True, exist_ok=True)
    declared = notebook_parameters(path)
    params = {"output_dir": str(nb_out_dir)} if "output_dir" in declared else {}
    for k, v in (parameters or {}).items():
        if k in declared:
            params[k] = v
    executed = out_dir / f"{name}.ipynb"
    t0 = time.time()
    summary = {"name": name, "status": "ok", "error": None}
    os.environ.setdefault("NBHELPERS_HEADLESS", "1")
    try:
        papermill.execute_notebook(str(path), str(executed), parameters=params, cwd=str(path.parent),
                                   progress_bar=False, kernel_name="python3", execution_timeout=timeout)
    except Exception as e:  # papermill's PapermillExecutionError names the cell
        summary["status"] = "failed"
        summary["error"] = f"{type(e).__name__}: {getattr(e, 'ename', '')} {getattr(e, 'evalue', e)}".strip()
        summary["cell"] = getattr(e, "exec_count", None)
    summary["seconds"] = round(time.time() - t0, 1)
    if executed.exists():
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
        (out_dir / f"{name}.html").write_text(body)
        summary["html"] = f"{name}.html"
    metrics = nb_out_dir / "metrics.json"
    summary["metrics"] = json.loads(metrics.read_text()) if metrics.exists() else {}
    thumbs = sorted(nb_out_dir.glob("*.png"))
    summary["thumbnail"] = f"{name}/{thumbs[0].name}" if thumbs else None
    return summary


def write_index(out_dir: Path, summaries: list[dict]) -> Path:
    rows = []
    for s in summaries:
        status = "✅ ran" if s["status"] == "ok" else f"❌ failed at cell {s.get('cell')}: {html.escape(s['error'] or '')}"
        link = f'<a href="{s["html"]}">{s["name"]}</a>' if s.get("html") else s["name"]
        thumb = f'<img src="{s["thumbnail"]}" height="120">' if s.get("thumbnail") else ""
        metrics = "<br>".join(f"{html.escape(str(k))}: {html.escape(_short(v))}" for k, v in s["metrics"].items())
        rows.append(f"<tr><td>{link}</td><td>{status}</td><td>{s['seconds']} s</td><td>{thumb}</td>"
                    f"<td><small>{metrics}</small></td></tr>")
    page = ("<!doctype html><meta charset='utf-8'><title>nbhelpers reports</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{vertical-align:top;padding:6px;border-bottom:1px solid #ddd}</style>"
            "<h1>Interpreting text-to-image diffusion: reports</h1>"
            f"<p>Generated {time.strftime('%Y-%m-%d %H:%M')} by <code>make report</code>.</p>"
            "<table><tr><th>notebook</th><th>status</th><th>time</th><th>figure</th><th>key metrics</th></tr>"
            + "".join(rows) + "</table>")
    index = out_dir / "index.html"
    index.write_text(page)
    (out_dir / "summary.json").write_text(json.dumps(summaries, indent=1, default=str))
    return index


def write_metrics(output_dir: str | None, metrics: dict) -> dict:
    """Write a notebook's key numbers to ``output_dir/metrics.json`` (when set); returns them."""
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    return metrics


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) < 120 else s[:117] + "..."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the notebooks headless into HTML reports.")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--only", nargs="*", help="notebook names (without .ipynb) to run; default all")
    ap.add_argument("--fast", action="store_true", help="pass fast=True (small sample counts)")
    ap.add_argument("--model", default=None, help="model name or path passed as the `model` parameter")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    books = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if a.only:
        wanted = set(a.only)
        unknown = wanted - {b.stem for b in books}
        if unknown:
            print(f"unknown notebook(s): {sorted(unknown)}; choose from {[b.stem for b in books]}", file=sys.stderr)
            return 2
        books = [b for b in books if b.stem in wanted]
    params = {"fast": a.fast} if a.fast else {}
    if a.model:
        params["model"] = a.model
    summaries = []
    for book in tqdm(books, desc="notebooks", unit="nb"):
        tqdm.write(f"running {book.name} ...")
        s = run_notebook(book, out, params)
        tqdm.write(f"  {s['status']} in {s['seconds']} s" + (f": {s['error']}" if s["error"] else ""))
        summaries.append(s)
    index = write_index(out, summaries)
    print(f"report: {index}")
    return 0 if all(s["status"] == "ok" for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())

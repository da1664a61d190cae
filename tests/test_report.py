"""`nbhelpers report`: parameters validated before anything runs, YAML and command-line parameters,
a failing notebook reported with its cell while the others run, an index page with metrics and figures."""
import ast
import json

import nbformat
import numpy as np
import pytest

from nbhelpers import report
from nbhelpers.report import ReportConfigError


@pytest.fixture(scope="module")
def specs():
    return report.notebook_specs()


def test_selection_by_number_name_or_short_name(specs):
    names = [s.name for s in report.select(specs, ["01", "partial_information_decomposition", "04_timestep_visualization"])]
    assert names == ["01_information_decomposition", "02_partial_information_decomposition", "04_timestep_visualization"]
    assert len(report.select(specs, None)) == len(specs) >= 6
    with pytest.raises(ReportConfigError, match="unknown notebook '09'.*Choose from: 00_tour"):
        report.select(specs, ["09"])


def test_every_bad_parameter_is_listed_before_running(specs):
    with pytest.raises(ReportConfigError) as e:
        report.plan(specs, {"fast": "yes", "n": 0, "colour": "red", "form": "sideways", "seed": 1.5},
                    {"02": {"word1": 3, "words": "a"}, "07": {"n": 1}})
    msg = str(e.value)
    for expected in ("fast must be bool", "n must be at least 1", "unknown parameter 'colour'",
                     "form must be one of ['standard', 'orthogonal']", "seed must be int",
                     "02_partial_information_decomposition: word1 must be str",
                     "02_partial_information_decomposition: unknown parameter 'words'", "names '07'"):
        assert expected in msg, (expected, msg)


def test_valid_parameters_go_to_the_notebooks_that_declare_them(specs):
    chosen = report.select(specs, ["00", "01", "03"])
    planned = report.plan(chosen, {"fast": True, "word": "blue", "guidance": 2}, {"03": {"concept": "pilot"}})
    assert planned["00_tour"] == {"fast": True, "guidance": 2}
    assert planned["01_information_decomposition"] == {"fast": True, "word": "blue", "guidance": 2}
    assert planned["03_concept_decomposition"] == {"fast": True, "concept": "pilot"}


def test_models_run_each_lesson_on_each_model(tmp_path, capsys):
    """--models: each lesson declaring `model` once per model, the first under the notebook's name, the
    others as NOTEBOOK@MODEL; refused together with --model."""
    assert report.main(["00", "02", "--fast", "--models", "toy", "toy-dit", "--check"]) == 0
    lines = dict(ln.split(": ", 1) for ln in capsys.readouterr().out.splitlines() if ": " in ln)
    assert ast.literal_eval(lines["00_tour"]) == {"fast": True, "model": "toy"}
    assert ast.literal_eval(lines["00_tour@toy-dit"]) == {"fast": True, "model": "toy-dit"}
    assert ast.literal_eval(lines["02_partial_information_decomposition@toy-dit"])["model"] == "toy-dit"
    assert report.main(["00", "--models", "toy", "toy-dit", "--model", "toy", "--check"]) == 2
    assert "either --models" in capsys.readouterr().err
    cfg = tmp_path / "r.yaml"
    cfg.write_text("notebooks: ['00']\nmodels: toy\n")
    assert report.main(["--config", str(cfg), "--check"]) == 2
    assert "models must be a non-empty list" in capsys.readouterr().err


def test_yaml_config_and_command_line(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("notebooks: [01]\nparameters: {fast: true}\nnotebook_parameters:\n  01: {n: 16}\n")
    assert report.main(["--config", str(cfg), "-p", "01:word=blue", "-p", "seed=3", "--check"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("01_information_decomposition: "))
    assert ast.literal_eval(line.split(": ", 1)[1]) == {"fast": True, "word": "blue", "seed": 3, "n": 16}
    cfg.write_text("notebook: [01]\n")
    assert report.main(["--config", str(cfg), "--check"]) == 2
    assert "unknown key(s) ['notebook']" in capsys.readouterr().err
    assert report.main(["01", "-p", "n=many"]) == 2  # refused before running anything
    assert "n must be int" in capsys.readouterr().err
    assert report.parse_assignment("02:word1=red") == ("02", "word1", "red")
    assert report.parse_assignment("guidance=2.5") == (None, "guidance", 2.5)
    with pytest.raises(ReportConfigError):
        report.parse_assignment("guidance")


def _notebook(path, body: str):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('fast = False\noutput_dir = ""\nlabel = "x"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_failing_notebook_is_reported_and_the_others_still_run(tmp_path, capsys):
    books = tmp_path / "books"
    books.mkdir()
    _notebook(books / "00_good.ipynb", "import json, os\nimport matplotlib\nmatplotlib.use('Agg')\n"
              "import matplotlib.pyplot as plt\nos.makedirs(output_dir, exist_ok=True)\n"
              "plt.plot([0, 1]); plt.savefig(os.path.join(output_dir, 'line.png'))\n"
              "json.dump({'label': label, 'fast': fast, 'nested': {'a': 1.5}}, open(os.path.join(output_dir, 'metrics.json'), 'w'))")
    _notebook(books / "01_bad.ipynb", "x = 1\nraise RuntimeError('planned failure ' + label)")
    _notebook(books / "02_good_too.ipynb", "y = 2")
    out = tmp_path / "out"
    code = report.main(["--notebook-dir", str(books), "--out", str(out), "-p", "label=hello", "--fast", "--quiet"])
    assert code == 1
    summary = {s["name"]: s for s in json.loads((out / "summary.json").read_text())}
    assert [summary[n]["status"] for n in ("00_good", "01_bad", "02_good_too")] == ["ok", "failed", "ok"]
    bad = summary["01_bad"]
    # cell 3 counts papermill's injected parameters cell, as the HTML report's In [3] does
    assert bad["cell"] == 3 and "RuntimeError: planned failure hello" in bad["error"]
    assert "raise RuntimeError" in bad["source"]
    assert summary["00_good"]["metrics"] == {"label": "hello", "fast": True, "nested": {"a": 1.5}}
    index = (out / "index.html").read_text()
    assert "2 of 3 notebooks ran" in index and "failed at cell 3" in index and "planned failure hello" in index
    assert 'src="00_good/line.png"' in index and "nested.a" in index and 'href="01_bad.html"' in index
    assert (out / "01_bad.html").exists() and (out / "00_good" / "line.png").exists()
    assert "failed: 01_bad" in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted((report.REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(config):
    assert report.main(["--config", str(config), "--check"]) == 0


# -- interruption (Ctrl-C) ---------------------------------------------------------------------------------
def _statuses(out):
    return [(s["name"], s["status"]) for s in json.loads((out / "summary.json").read_text())]


def test_interruption_keeps_finished_lessons_and_says_what_was_cut_off(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the second lesson (the runner is replaced: nothing executes): exit status 130, the
    first lesson's page kept and linked, the second marked interrupted, the third never ran."""
    out = tmp_path / "out"
    seen = {}

    def fake_run(path, out_dir, parameters=None, timeout=3600, progress=True, name=None):
        if path.stem == "00_tour":
            (out_dir / "00_tour.html").write_text("<html>tour</html>")
            return {"name": "00_tour", "status": "ok", "error": None, "parameters": parameters, "seconds": 1.5,
                    "html": "00_tour.html", "metrics": {"score": 2.0}, "figures": [], "thumbnail": None}
        seen["index"] = (out_dir / "index.html").read_text()  # as written just before this lesson started
        seen["statuses"] = _statuses(out_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "run_notebook", fake_run)
    assert report.main(["00", "01", "02", "--fast", "--out", str(out), "--quiet"]) == 130
    assert seen["statuses"] == [("00_tour", "ok"), ("01_information_decomposition", "running"),
                                ("02_partial_information_decomposition", "pending")]
    assert "In progress" in seen["index"] and "not started yet" in seen["index"]
    assert _statuses(out) == [("00_tour", "ok"), ("01_information_decomposition", "interrupted"),
                              ("02_partial_information_decomposition", "not run")]
    index = (out / "index.html").read_text()
    assert "Interrupted</b> (Ctrl-C) during 01_information_decomposition" in index
    assert "1 of 3 notebooks finished, 1 was cut off, 1 never ran" in index
    assert 'href="00_tour.html"' in index and "ran</span> in 1.5 s" in index and "score" in index
    assert "never ran</span>: the report was interrupted before it started" in index
    assert 'href="01_information_decomposition.html"' not in index  # nothing of it was kept
    assert (out / "00_tour.html").read_text() == "<html>tour</html>"
    err = capsys.readouterr().err
    assert "report interrupted during 01_information_decomposition: 1 of 3 notebooks finished" in err
    assert "never ran: 02_partial_information_decomposition" in err


def test_an_interrupted_lessons_partial_page_is_linked(tmp_path, monkeypatch):
    out = tmp_path / "out"

    def fake_run(path, out_dir, parameters=None, timeout=3600, progress=True, name=None):
        (out_dir / f"{path.stem}.html").write_text("<html>partial</html>")
        raise report.NotebookInterrupted({"name": path.stem, "status": "interrupted", "error": "KeyboardInterrupt",
                                          "cell": 4, "seconds": 7.0, "parameters": {}, "html": f"{path.stem}.html"})

    monkeypatch.setattr(report, "run_notebook", fake_run)
    assert report.main(["04", "05", "--out", str(out), "--quiet"]) == 130
    assert _statuses(out) == [("04_timestep_visualization", "interrupted"), ("05_bias_audit", "not run")]
    index = (out / "index.html").read_text()
    assert 'href="04_timestep_visualization.html"' in index
    assert "interrupted</span> (Ctrl-C) at cell 4 after 7.0 s" in index and "cells run until then" in index


def test_ctrl_c_in_the_kernel_stops_the_report(tmp_path, capsys):
    """The kernel shares the terminal, so Ctrl-C reaches it too: a cell stopped by KeyboardInterrupt
    stops the report (it does not go on to the next notebook) and keeps the cells run so far."""
    books = tmp_path / "books"
    books.mkdir()
    _notebook(books / "00_first.ipynb", "y = 1")
    _notebook(books / "01_cut.ipynb", "print('half way')\nraise KeyboardInterrupt")
    _notebook(books / "02_after.ipynb", "z = 3")
    out = tmp_path / "out"
    assert report.main(["--notebook-dir", str(books), "--out", str(out), "--quiet"]) == 130
    assert _statuses(out) == [("00_first", "ok"), ("01_cut", "interrupted"), ("02_after", "not run")]
    summary = json.loads((out / "summary.json").read_text())[1]
    assert summary["cell"] == 3 and summary["html"] == "01_cut.html"
    assert "half way" in (out / "01_cut.html").read_text() and (out / "00_first.html").exists()
    assert not (out / "02_after.html").exists()


def test_sigint_to_the_report_process(tmp_path):
    """The real thing: SIGINT to `python -m nbhelpers.report` while its second notebook runs a long cell
    (a few seconds in all: three small notebooks, the second one cut off)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    books = tmp_path / "books"
    books.mkdir()
    marker = tmp_path / "second-started"
    _notebook(books / "00_quick.ipynb", "x = 1")
    _notebook(books / "01_slow.ipynb", f"import time\nprint('started')\nopen({str(marker)!r}, 'w').close()\n"
                                       "time.sleep(300)")
    _notebook(books / "02_never.ipynb", "y = 2")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "nbhelpers.report", "--notebook-dir", str(books), "--out", str(out),
                             "--quiet"], cwd=report.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal would
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the second notebook never started"
            time.sleep(0.1)
        assert (out / "00_quick.html").exists()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert _statuses(out) == [("00_quick", "ok"), ("01_slow", "interrupted"), ("02_never", "not run")]
    assert "report interrupted during 01_slow" in err
    index = (out / "index.html").read_text()
    assert "Interrupted</b> (Ctrl-C) during 01_slow" in index and 'href="00_quick.html"' in index
    assert (out / "00_quick.html").exists() and (out / "01_slow.html").exists()


def test_metrics_are_strict_json(tmp_path):
    """A method a model lacks is NaN in its table; metrics.json says null, which every JSON reader accepts."""
    from nbhelpers.report import write_metrics

    write_metrics(str(tmp_path), {"auroc": {"cmi": 0.9, "concept attention": float("nan")}, "n": np.int64(3),
                                  "spread": [float("inf"), 1.5]})
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auroc": {"cmi": 0.9, "concept attention": None}, "n": 3.0, "spread": [None, 1.5]}

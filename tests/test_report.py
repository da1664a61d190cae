"""`nbhelpers report`: parameters validated before anything runs, YAML and command-line parameters,
a failing notebook reported with its cell while the others run, an index page with metrics and figures."""
import ast
import json

import nbformat
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

"""Helpers for the scripts that write the notebooks (the lessons' reviewable Python sources)."""
import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell


def parameters(source: str):
    """The papermill parameters cell."""
    return code(source, metadata={"tags": ["parameters"]})


def write_notebook(path: str, cells: list) -> None:
    nb = nbf.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbf.write(nb, path)
    print(f"wrote {path}")

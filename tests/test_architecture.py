"""The architecture's rules, checked on the source: the toy world is a client of the methods (no
method module imports it, names its package or asks whether the model is the toy one)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nbhelpers"
ZOO = {"model.py"}  # the model zoo's path table names the world's models
METHOD_MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name not in ZOO)


@pytest.mark.parametrize("path", METHOD_MODULES, ids=lambda p: p.name)
def test_method_modules_know_no_world(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert "toyworld" not in (node.module or ""), f"{path.name}:{node.lineno} imports {node.module}"
        if isinstance(node, ast.Import):
            assert not any("toyworld" in a.name for a in node.names), f"{path.name}:{node.lineno}"
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "toy"
                                                 for c in [node.left, *node.comparators]):
            raise AssertionError(f"{path.name}:{node.lineno} branches on the toy model by name")
    assert "toyworld" not in path.read_text(), f"{path.name} names the toy world's package"


LIBRARY_METHODS = {"forward", "step", "get_attention_scores", "__call__", "set_timesteps", "scale_model_input",
                   "encode", "decode", "prepare_attention_mask", "set_attn_processor"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_monkey_patching(path):
    """One hook mechanism (nbhelpers.hooks: torch hooks, attention processors, step callbacks): no code
    assigns to (or deletes) a library object's method."""
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [getattr(node, "target", None)]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr in LIBRARY_METHODS:
                owner = t.value.id if isinstance(t.value, ast.Name) else None
                assert owner in ("self", "cls"), f"{path.name}:{node.lineno} assigns {ast.unparse(t)}"

"""The Colab notebook stays in step with the library it calls."""
import ast
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_code_cells_parse_and_use_real_names():
    with open(os.path.join(REPO, "colab", "w2s_experiment.ipynb")) as f:
        notebook = json.load(f)
    code = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            lines = "".join(cell["source"]).splitlines()
            # IPython magics and shell escapes are not Python.
            code += [l for l in lines if not l.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(code))
    from w2s_jax import run
    used = {(n.value.id, n.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    assert ("run", "run") in used and hasattr(run, "run")
    assert ("run", "table") in used and hasattr(run, "table")
    assert os.path.exists(os.path.join(REPO, "configs", "smoke.py"))

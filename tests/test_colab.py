"""The Colab notebook runs: executed headless, top to bottom, on a tiny config.

colab/quickstart.ipynb runs configs/quickstart.py in Colab (cloning and
installing the project first). Here the package is importable, so its
install cell skips to the checkout, and W2S_NOTEBOOK_CONFIG /
W2S_NOTEBOOK_OVERRIDES swap in configs/smoke.py at a few dozen examples;
the data comes from $W2S_DATA_DIR (CI's mirror) or the hub.
"""
import ast
import json
import os

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colab", "quickstart.ipynb")
# Smoke's two tiny random GPT-2s on 64 examples, one epoch: about a minute on
# 2 cores, kernel start and report included.
SMALL = ("--config.n_train=64 --config.n_test=32 --config.train.epochs=1 "
         "--config.train.log_every=100")


def _code(notebook) -> str:
    return "\n".join("".join(cell["source"]) for cell in notebook["cells"]
                     if cell["cell_type"] == "code")


def test_notebook_uses_real_names_and_files():
    with open(NOTEBOOK) as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    # IPython magics and shell escapes become Python as IPython runs them.
    from IPython.core.inputtransformer2 import TransformerManager
    tree = ast.parse(TransformerManager().transform_cell(_code(notebook)))
    from w2s_jax import run
    used = {(n.value.id, n.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    assert ("run", "run") in used and hasattr(run, "run")
    assert ("run", "table") in used and hasattr(run, "table")
    for path in ("configs/quickstart.py", "configs/smoke.py", "setup.py",
                 "requirements-offline.txt"):
        assert os.path.exists(os.path.join(REPO, path)), path
    # The install cell installs as the README says.
    source = _code(notebook)
    assert '-e ".[offline]"' in source
    assert "--no-deps -r requirements-offline.txt" in source


def _execute(workdir: str):
    """The notebook, run top to bottom in a python3 kernel whose cwd is the
    repo root; CellExecutionError on any cell's error."""
    env = {"W2S_NOTEBOOK_CONFIG": "configs/smoke.py",
           "W2S_NOTEBOOK_OVERRIDES": SMALL,
           "W2S_NOTEBOOK_WORKDIR": workdir}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        nbclient.NotebookClient(
            notebook, kernel_name="python3", timeout=600,
            resources={"metadata": {"path": REPO}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return notebook


def _outputs(notebook, cell_id):
    cell = next(c for c in notebook.cells if c.get("id") == cell_id)
    return cell.outputs


def _text(outputs) -> str:
    parts = []
    for out in outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/markdown", ""))
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def test_notebook_executes_end_to_end(tmp_path):
    workdir = str(tmp_path / "notebook")
    notebook = _execute(workdir)
    # The install cell took the skip branch: w2s_jax was importable here.
    install = _text(_outputs(notebook, "install"))
    assert "w2s_jax is installed; running in " + REPO in install, install
    assert "pip" not in install.lower()
    # The run cell printed the results table last (weak, w2s, ceiling).
    stdout = "".join(o.text for o in _outputs(notebook, "run")
                     if o.output_type == "stream" and o.name == "stdout")
    printed = stdout.rsplit("[results] ", 1)[-1]  # after the run's own log
    assert "| stage | model |" in printed and "| w2s |" in printed, stdout[-3000:]
    assert os.path.isdir(os.path.join(workdir, "results"))
    # The report cell showed the tables and the plots inline.
    report = _outputs(notebook, "report")
    assert "Gold test accuracy per pair and loss" in _text(report)
    pngs = [o for o in report if "data" in o and "image/png" in o.data]
    assert pngs, [o.output_type for o in report]
    for name in ("report.html", "report.md", "tables.json"):
        assert os.path.isfile(os.path.join(workdir, "report", name)), name
    assert any(n.endswith(".png")
               for n in os.listdir(os.path.join(workdir, "report")))

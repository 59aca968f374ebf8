"""Run the notebooks' Python cells on the CPU in their quick setting."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def python_source(notebook: pathlib.Path) -> str:
    """Return the notebook's code cells, without shell (`!`) and magic (`%`) lines."""
    cells = json.loads(notebook.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            if not line.lstrip().startswith(("!", "%")):
                lines.append(line)
    return "\n".join(lines)


def test_notebooks_found():
    assert NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(notebook, monkeypatch, capsys):
    monkeypatch.setenv("CAME_GRAD_NOTEBOOK_QUICK", "1")
    namespace = {}

    exec(compile(python_source(notebook), str(notebook), "exec"), namespace)

    output = capsys.readouterr().out
    assert "CAME-Grad / weighted sum" in output
    first, last = namespace["first_losses"], namespace["losses"]
    assert float(last[0]) < float(first[0])
    assert float(last[1]) < float(first[1])

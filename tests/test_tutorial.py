"""docs/tutorial.ipynb runs top to bottom in a fresh kernel (nbclient), as a learner runs it,
and says what its prose says: the notebook's backward formula fails the gradient check, the
right one passes, and the notebook's setup memorises the passage."""

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "docs" / "tutorial.ipynb"


def printed(notebook) -> str:
    """Everything the code cells printed, in order."""
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


@pytest.mark.slow
def test_the_tutorial_runs_and_shows_what_it_says(tmp_path, shakespeare, monkeypatch):
    monkeypatch.setenv("TINYSHAKESPEARE", str(shakespeare))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # a cell that raises fails the test with the cell and its traceback
    seconds = time.perf_counter() - start
    text = printed(notebook)
    right = float(re.search(r"right formula: relative error (\S+)", text)[1])
    wrong = float(re.search(r"notebook's formula: relative error (\S+)", text)[1])
    assert right < 1e-6 < 0.1 < wrong, (right, wrong)
    assert "teacher-forced accuracy, best checkpoint" in text and "100.00%" in text
    found = re.search(r"largest difference, h: (\S+)  c: (\S+)", text)
    assert max(float(found[1]), float(found[2])) < 1e-12
    assert "position in line: layer 0" in text
    images = sum(
        "image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])
    )
    assert images == 2
    print(f"the tutorial ran in {seconds:.0f} s")

"""notebooks/*.ipynb: stored without outputs, and run from top to bottom with nbclient (an error in any
cell fails). The executed copy, with its pictures, is written to the test's directory (path printed)."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


def test_there_are_notebooks():
  assert any(p.endswith("quickstart.ipynb") for p in NOTEBOOKS), NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"{path}: clear the outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXRIS_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("JAXRIS_NOTEBOOK_RUN", str(tmp_path / "no_trained_run"))  # always exercise the training cell
  monkeypatch.setenv("JAXRIS_NOTEBOOK_STEPS", "10")  # the cell as a user runs it, fewer steps (its 40: ~25 s more here)
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
  try:
    client.execute()  # raises CellExecutionError naming the cell and its traceback
  finally:
    executed = tmp_path / os.path.basename(path)
    nbformat.write(nb, str(executed))
    print(f"\nexecuted notebook: {executed}")
  images = sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
               if "image/png" in out.get("data", {}))
  assert images >= 5, f"expected the overlays inline, got {images} pictures"

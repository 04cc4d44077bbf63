"""notebooks/: stored without outputs, and each runs top to bottom on the tiny model.

The notebooks run in a fresh kernel (nbclient, the ``python3`` kernel of this environment) in a
temporary folder, with the session's trained checkpoint passed through ``RSREFSEG_CHECKPOINT`` so
that they need not train one each (a random-init one: the notebooks' code paths do not depend on
training; the slow test runs 02 on the model it trains itself), and matplotlib's ``Agg`` backend.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fixtures_layouts import make_rrsisd

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 240


def execute(name: str, cwd: Path, *, timeout_s: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, kernel_name="python3", timeout=timeout_s, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return notebook


def printed(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook's cells printed (stdout)."""
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


@pytest.fixture
def kernel_env(monkeypatch, tmp_path):
    """What the kernel inherits: a headless backend, no network, temporary files under ``tmp_path``."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("RSREFSEG_CHECKPOINT", raising=False)
    monkeypatch.delenv("RSREFSEG_DATA_ROOT", raising=False)
    return monkeypatch


def test_the_three_notebooks_are_there():
    assert NAMES == ["01_synthetic_benchmark.ipynb", "02_what_the_model_sees.ipynb", "03_geotiff.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_is_valid_and_has_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} was stored with outputs; clear them"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count; clear it"
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown" and kinds.count("markdown") >= 4  # explained, not just code


def test_synthetic_benchmark_notebook_runs_and_browses_a_real_dataset(kernel_env, tmp_path):
    make_rrsisd(tmp_path / "RRSIS-D")
    kernel_env.setenv("RSREFSEG_DATA_ROOT", str(tmp_path / "RRSIS-D"))
    kernel_env.setenv("RSREFSEG_DATASET", "rrsisd")
    text = printed(execute("01_synthetic_benchmark.ipynb", tmp_path))
    assert "val: 500 samples of 64×64 px" in text
    assert "referents:  [" in text and "distractor_share" in text
    assert "rrsisd val: 3 samples" in text  # the real-dataset cell ran, not its skip note


@pytest.mark.parametrize("name", ["02_what_the_model_sees.ipynb", "03_geotiff.ipynb"])
def test_model_notebook_runs_on_a_checkpoint(name, kernel_env, tmp_path, tiny_checkpoint):
    kernel_env.setenv("RSREFSEG_CHECKPOINT", str(tiny_checkpoint))
    text = printed(execute(name, tmp_path))
    assert f"{tiny_checkpoint}: input 64×64" in text or "model input 64×64" in text
    if name.startswith("02"):
        assert "own sentence" in text and "another scene's sentence" in text
    else:
        assert "EPSG:32633 True" in text and "nodata corner all NaN: True" in text


@pytest.mark.slow
def test_model_notebook_trains_its_own_checkpoint_without_one(kernel_env, tmp_path):
    text = printed(execute("02_what_the_model_sees.ipynb", tmp_path, timeout_s=1200))  # trains
    assert "rsrefseg-train trainer.max_steps=" in text
    assert "last.ckpt: input 64×64" in text

"""docs/notebooks/quickstart.ipynb runs top to bottom in a fresh kernel (about a minute on two
cores) without an error, and shows its pictures."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import FAST_COMPILE

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'docs' / 'notebooks' / 'quickstart.ipynb'
# A hang guard per cell, far above the cell's time (the longest, a ViT's training, ~20 s).
CELL_TIMEOUT_SECONDS = 300


def _with_workdir(notebook, workdir: Path):
    """The notebook with WORKDIR set to `workdir` right after its 'parameters' cell (the
    papermill convention), so the test's runs stay out of the repository."""
    (index,) = [
        i for i, cell in enumerate(notebook.cells) if 'parameters' in cell.metadata.get('tags', [])
    ]
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(f'WORKDIR = Path({str(workdir)!r})'))
    return notebook


def test_quickstart_notebook_runs_and_draws(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('TFDS_DATA_DIR', digits_dir)  # the kernel inherits the environment
    monkeypatch.setenv('XLA_FLAGS', FAST_COMPILE)  # one CPU device, as a reader's kernel has
    notebook = _with_workdir(nbformat.read(NOTEBOOK, as_version=4), tmp_path / 'runs')
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name='python3',
        resources={'metadata': {'path': str(tmp_path)}},
    ).execute()  # raises CellExecutionError, naming the cell, on the first error
    outputs = [output for cell in notebook.cells for output in cell.get('outputs', [])]
    assert not [output for output in outputs if output.output_type == 'error']
    pictures = [output for output in outputs if 'image/png' in output.get('data', {})]
    # Curves, confusion matrix, augmentation sheet, ViT heads and rollout.
    assert len(pictures) == 5
    assert (tmp_path / 'runs' / 'mlp' / 'eval_test.json').exists()
    assert (tmp_path / 'runs' / 'mlp_digits.jax').stat().st_size > 0
    assert not (REPO / 'docs' / 'notebooks' / 'workdirs').exists()
    # The fine-tuned ResNet started from the converted checkpoint.
    assert (tmp_path / 'runs' / 'converted_resnet' / 'converted.json').exists()
    assert (tmp_path / 'runs' / 'finetuned_resnet' / 'summary.json').exists()

"""train.export: a trained ConvNet serialized with jax.export, reloaded in a process that has
only JAX and NumPy, gives the model's logits for raw uint8 batches of any size."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import data
from tests.conftest import FAST_COMPILE
from tests.test_train import REPO, tiny_config
from train import export, loop
from train.config import ConfigError, model_config
from train.evaluate import LoadedRun, load_trained

# Runs in a fresh interpreter: the project's packages cannot be imported there at all.
LOADER = """
import importlib.abc
import sys

PROJECT = {'nets', 'train', 'data', 'experiments', 'tests'}


class NoProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in PROJECT:
            raise ImportError(f'the loader must not import {name}')
        return None


sys.meta_path.insert(0, NoProject())
import jax
import numpy as np

with open(sys.argv[1], 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
batches = np.load(sys.argv[2])
np.savez(sys.argv[3], **{k: np.asarray(exported.call(batches[k])) for k in batches.files})
assert not PROJECT & {name.split('.')[0] for name in sys.modules}
"""


@pytest.fixture(scope='module')
def cnn_run(digits_dir, tmp_path_factory):
    """A ConvNet with batch norm, trained 3 steps on the 8x8 digits."""
    workdir = tmp_path_factory.mktemp('export') / 'run'
    config = tiny_config(digits_dir, num_steps=3, pictures=False)
    config.model = model_config('cnn', channels=(8, 16), convs_per_stage=1)
    loop.train_and_evaluate(config, workdir)
    return workdir


def _command(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=1 {FAST_COMPILE}'),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_exported_function_reloads_without_the_project_and_equals_the_model(
    cnn_run, digits_dir, tmp_path
):
    out = tmp_path / 'digits_cnn.jax'
    done = _command('-m', 'train.export', f'--workdir={cnn_run}', f'--out={out}')
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'uint8[batch, 8, 8, 1] -> float32[batch, 10]' in done.stdout
    source = data.load_source('digits', 'test', digits_dir)
    images = np.stack([np.asarray(source[i]['image']) for i in range(67)])
    assert images.dtype == np.uint8  # as the data pipeline yields them
    batches = {'three': images[:3], 'sixty_four': images[3:]}
    np.savez(tmp_path / 'batches.npz', **batches)
    loaded = _command(
        '-c',
        LOADER,
        str(out),
        str(tmp_path / 'batches.npz'),
        str(tmp_path / 'logits.npz'),
        cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    logits = np.load(tmp_path / 'logits.npz')
    run = load_trained(cnn_run)
    for name, batch in batches.items():
        expected = run.task.model.apply(run.variables, run.task.normalise(batch), train=False)
        assert logits[name].shape == (len(batch), 10)
        np.testing.assert_allclose(logits[name], np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_platforms_signature_and_what_cannot_be_exported(cnn_run, tmp_path):
    exported = export.export_run(cnn_run, platforms=('cpu', 'cuda'))
    assert export.describe(exported) == {
        'input': 'uint8[batch, 8, 8, 1]',
        'output': 'float32[batch, 10]',
        'platforms': ['cpu', 'cuda'],
    }
    with pytest.raises(ConfigError, match="platforms \\['gpu'\\] are not valid"):
        export.export_run(cnn_run, platforms=('gpu',))
    run = load_trained(cnn_run)
    language_model = LoadedRun(
        ml_collections.ConfigDict({'task': 'language_model'}), run.info, object(), {}, cnn_run
    )
    with pytest.raises(ConfigError, match="export takes classifiers.*'language_model'"):
        export.inference_function(language_model)
    failed = _command('-m', 'train.export', f'--workdir={cnn_run}')
    assert failed.returncode == 64 and failed.stderr.strip().splitlines()[-1].startswith(
        'error: flag --out'
    ), failed.stderr[-3000:]

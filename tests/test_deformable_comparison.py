"""The deformable-vs-plain comparison: its two models, the warped test sets and one tiny run."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from data.augment.affine import warp
from experiments import fashion_mnist_deformable
from experiments.analysis import warped_accuracy
from train import config as config_lib
from train.config import ConfigError, validate


def _param_names(config) -> set[str]:
    kwargs = config_lib.model_kwargs(config)
    model = nets.create(config.model.name, **{**kwargs, 'num_classes': 10})
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return {
        '/'.join(str(k.key) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(shapes['params'])
    }


def test_the_two_models_differ_only_by_the_offset_convs():
    plain = fashion_mnist_deformable.get_config('model=resnet')
    deformable = fashion_mnist_deformable.get_config('model=deformable')
    for config in (plain, deformable):
        validate(config)
        assert config.augment == fashion_mnist_deformable.GEOMETRY
    plain_names, deformable_names = _param_names(plain), _param_names(deformable)
    extra = deformable_names - plain_names
    assert plain_names < deformable_names and extra
    assert all('/offset/' in name for name in extra)
    # The offsets train at 0.1x the rate; the plain model has no such rule.
    assert deformable.optimizer.lr_multipliers == (('.*/offset/.*', 0.1),)
    assert plain.optimizer.lr_multipliers == ()
    with pytest.raises(ConfigError, match="'dcn'.*'deformable'"):
        fashion_mnist_deformable.get_config('model=dcn')


def test_a_quarter_turn_is_the_pixel_rotation_and_draws_are_fixed():
    image = np.random.default_rng(0).random((28, 28, 1)).astype(np.float32)
    (matrix,) = warped_accuracy.affine_matrices(np.array([90.0], np.float32))
    np.testing.assert_allclose(warp(jnp.asarray(image), matrix), np.rot90(image), atol=1e-5)
    degrees, zoom = warped_accuracy.random_rotation_zoom(1000, 1.25)
    again, _ = warped_accuracy.random_rotation_zoom(1000, 1.25)
    np.testing.assert_array_equal(degrees, again)
    assert 0 <= degrees.min() and degrees.max() < 360 and degrees.std() > 90
    assert 0.8 <= zoom.min() and zoom.max() <= 1.25 and zoom.min() < 0.85 and zoom.max() > 1.2


class _BrighterHalf(nn.Module):
    """Logits = (mean of the left half, mean of the right half)."""

    @nn.compact
    def __call__(self, x):
        half = x.shape[2] // 2
        return jnp.stack([x[:, :, :half].mean((1, 2, 3)), x[:, :, half:].mean((1, 2, 3))], -1)


def test_warped_accuracy_follows_the_warp():
    images = np.zeros((10, 8, 8, 1), np.float32)
    labels = np.arange(10) % 2
    for i, label in enumerate(labels):  # the bright half is the label
        images[i, :, 4 * label : 4 * label + 4] = 1.0
    trained = types.SimpleNamespace(
        model=_BrighterHalf(), variables={}, task=types.SimpleNamespace(standardise=lambda x: x)
    )
    accuracy = warped_accuracy.warped_accuracy_fn(trained, batch_size=3)  # batches 3, 3, 3, 1
    args = jnp.asarray(images), jnp.asarray(labels)
    assert accuracy(*args, warped_accuracy.affine_matrices(np.zeros(10))) == 1.0
    assert accuracy(*args, warped_accuracy.affine_matrices(np.full(10, 180.0))) == 0.0
    half_turned = np.where(np.arange(10) < 5, 0.0, 180.0)
    assert accuracy(*args, warped_accuracy.affine_matrices(half_turned)) == 0.5


def test_one_tiny_comparison_row(tmp_path, digits_dir):
    from experiments.sweeps import deformable_comparison

    config = fashion_mnist_deformable.get_config('model=deformable')
    config.dataset.name = 'digits'
    config.dataset.data_dir = digits_dir
    config.model.stage_sizes = (1, 1, 1)
    config.model.width = 4
    config.num_steps = 3
    config.batch_size = 16
    config.eval_batch_size = 200
    config.log_every_steps = 1
    row = deformable_comparison.measure('deformable', config, tmp_path / 'deformable')
    assert row['steps'] == 3 and row['parameters'] > 0 and row['mflops_per_example'] > 0
    assert 0.0 <= row['warped_accuracy'] <= 1.0 and 0.0 <= row['clean_accuracy'] <= 1.0
    deformable_comparison.write_table([row], tmp_path)
    table = (tmp_path / 'results.md').read_text()
    assert '| deformable (`deformable_resnet50`) |' in table
    assert f'{row["warped_accuracy"]:.2%}' in table


def test_the_comparison_sweeps_shared_steps(tmp_path):
    from absl import app

    # The sweeps import together (one test process): no flag is defined twice.
    from experiments.sweeps import (
        comparison,
        deformable_comparison,  # noqa: F401
        scaling_study,  # noqa: F401
        translation_comparison,  # noqa: F401
    )

    assert comparison.selected(None, ('resnet', 'deformable')) == ['resnet', 'deformable']
    assert comparison.selected(['deformable'], ('resnet', 'deformable')) == ['deformable']
    with pytest.raises(app.UsageError, match=r"\['vgg'\]; valid: \['resnet', 'deformable'\]"):
        comparison.selected(['vgg'], ('resnet', 'deformable'))
    tables = []

    def write_table(rows, workdir):
        tables.append(len(rows))
        (workdir / 'results.md').write_text(f'{len(rows)} rows')

    jobs = [('a', lambda: {'row': 1}), ('b', lambda: {'row': 2})]
    assert comparison.run_all(jobs, tmp_path, write_table) == [{'row': 1}, {'row': 2}]
    assert tables == [1, 2]  # rewritten after every run

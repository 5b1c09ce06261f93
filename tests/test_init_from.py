"""Fine-tuning from another run or a converted model: what is copied, re-initialised, resampled."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
import nets.convert as convert
from nets.layers.position import resize_grid_embedding
from tests.test_train import tiny_config
from train import init_from, loop
from train.checkpointing import load_checkpoint
from train.config import ConfigError, default_config
from train.state import TrainState

FIXTURES = Path(__file__).resolve().parent / 'fixtures' / 'convert'
TINY_RESNET = dict(stage_sizes=(1, 1), width=4, stem='cifar')
TINY_VIT = dict(patch_size=8, hidden_size=16, depth=1, num_heads=2, mlp_dim=32)


def variables(name, image_size, channels=3, **fields):
    model = nets.create(name, **fields)
    return model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, channels)))


def test_a_head_for_another_class_count_is_initialised_afresh_and_named():
    fresh = variables('resnet18', 8, num_classes=10, **TINY_RESNET)['params']
    saved = jax.tree.map(lambda x: x + 1.0, variables('resnet18', 8, num_classes=7, **TINY_RESNET))
    merged, lines, loaded = init_from.merge_tree(fresh, saved['params'], 'param')
    np.testing.assert_array_equal(merged['head']['kernel'], fresh['head']['kernel'])
    np.testing.assert_array_equal(merged['head']['bias'], fresh['head']['bias'])
    np.testing.assert_array_equal(
        merged['stem']['conv']['kernel'], saved['params']['stem']['conv']['kernel']
    )
    assert loaded == len(jax.tree.leaves(fresh)) - 2
    assert lines == [
        'param head/bias: (7,) in the checkpoint, (10,) in the model; initialised afresh',
        'param head/kernel: (8, 7) in the checkpoint, (8, 10) in the model; initialised afresh',
    ]


def test_position_embeddings_are_resampled_for_a_new_image_size_keeping_the_class_token():
    fresh = variables('vit_b16', 16, num_classes=3, **TINY_VIT)['params']
    saved = variables('vit_b16', 32, num_classes=3, **TINY_VIT)['params']
    saved['pos_embedding'] = jax.random.normal(jax.random.key(1), saved['pos_embedding'].shape)
    merged, lines, _ = init_from.merge_tree(fresh, saved, 'param', prefix_tokens=1)
    table = merged['pos_embedding']
    assert table.shape == (1, 1 + 2 * 2, 16)
    np.testing.assert_array_equal(table[:, 0], saved['pos_embedding'][:, 0])
    expected = resize_grid_embedding(saved['pos_embedding'], (2, 2), num_prefix_tokens=1)
    np.testing.assert_allclose(table, expected, atol=1e-6)
    assert lines == ['param pos_embedding: resampled (bilinear) from (1, 17, 16) to (1, 5, 16)']


def test_leaves_missing_from_either_side_are_reported():
    fresh = {'a': jnp.zeros(2), 'b': jnp.zeros(3)}
    merged, lines, loaded = init_from.merge_tree(fresh, {'a': np.ones(2), 'c': np.ones(1)}, 'param')
    np.testing.assert_array_equal(merged['a'], np.ones(2))
    assert loaded == 1
    assert lines == [
        'param b (3,): not in the checkpoint, initialised afresh',
        'param c: in the checkpoint only, unused',
    ]


def test_initialise_from_a_converted_folder_keeps_step_and_optimiser_fresh(tmp_path):
    out = convert.convert_to_folder(
        'torchvision',
        'resnet18',
        FIXTURES / 'torchvision_resnet_basic.safetensors',
        tmp_path / 'converted',
    )
    model_config = init_from.converted_model_config(out)
    assert model_config.name == 'resnet18' and tuple(model_config.stage_sizes) == (1, 1, 1, 1)
    fields = {**convert.read_metadata(out)['fields'], 'num_classes': 4}
    start = nets.create('resnet18', **fields).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = start['params']
    tx = optax.adam(1e-3)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state={'batch_stats': start['batch_stats']},
        opt_state=tx.init(params),
        rng=jax.random.key(1),
    )
    new, report = init_from.initialise_from(out, state)
    assert report[0].startswith(f'initialised from {out / "checkpoints"} (step 0)')
    assert 'head/bias' in report[1] and 'head/kernel' in report[2] and len(report) == 3
    saved = convert.convert(
        'torchvision', 'resnet18', FIXTURES / 'torchvision_resnet_basic.safetensors'
    )
    np.testing.assert_array_equal(
        new.params['stage1_block0']['conv1']['conv']['kernel'],
        saved.params['stage1_block0']['conv1']['conv']['kernel'],
    )
    np.testing.assert_array_equal(
        new.model_state['batch_stats']['stem']['norm']['mean'],
        saved.model_state['batch_stats']['stem']['norm']['mean'],
    )
    assert int(new.step) == 0 and new.opt_state is state.opt_state


def test_a_path_that_is_not_a_checkpoint_fails_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        init_from.checkpoint_folder(tmp_path / 'nowhere')
    with pytest.raises(ConfigError, match='no checkpoints in'):
        init_from.checkpoint_folder(tmp_path)
    with pytest.raises(ConfigError, match='not a converted folder'):
        init_from.converted_model_config(tmp_path)


# End to end through the loop: runs once train/loop.py calls initialise_from and
# train/config.py has the `init_from` key (until then it is skipped, saying so).
@pytest.mark.skipif(
    'init_from' not in default_config(), reason='config.init_from is not wired into the loop yet'
)
def test_fine_tuning_a_converted_resnet_on_digits(digits_dir, tmp_path):
    out = convert.convert_to_folder(
        'torchvision',
        'resnet18',
        FIXTURES / 'torchvision_resnet_basic.safetensors',
        tmp_path / 'converted',
    )
    config = tiny_config(digits_dir, num_steps=8, eval_every_steps=8, checkpoint_every_steps=8)
    config.model = init_from.converted_model_config(out)
    config.init_from = str(out)
    config.optimizer.learning_rate = 1e-7  # barely moves: the loaded weights stay visible
    summary = loop.train_and_evaluate(config, tmp_path / 'run')
    assert summary['step'] == 8
    trained = load_checkpoint(tmp_path / 'run' / 'checkpoints')
    converted = convert.convert(
        'torchvision', 'resnet18', FIXTURES / 'torchvision_resnet_basic.safetensors'
    )
    # digits are grey: the RGB stem kernel does not fit and starts afresh; the rest is loaded.
    kernel = trained['params']['stage3_block0']['conv2']['conv']['kernel']
    expected = converted.params['stage3_block0']['conv2']['conv']['kernel']
    np.testing.assert_allclose(kernel, expected, atol=1e-4)
    assert trained['params']['stem']['conv']['kernel'].shape[2] == 1

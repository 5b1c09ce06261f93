"""experiments/mnist1d.py's rows: logistic regression, recurrent sizes, one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from experiments import mnist1d
from train.config import ConfigError


def _param_count(config) -> int:
    fields = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
    fields['num_classes'] = 10
    model = nets.create(config.model.name, **fields)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 40, 1))))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def test_logistic_regression_is_the_linear_head_alone():
    config = mnist1d.get_config('model=logreg')
    assert (config.model.name, config.model.depth) == ('mlp', 0)
    assert _param_count(config) == 40 * 10 + 10


def test_recurrent_hidden_size_is_an_argument():
    assert mnist1d.get_config('model=gru').model.hidden_size == 12
    six = mnist1d.get_config('model=gru,hidden=6,shuffled')
    assert six.model.hidden_size == 6 and six.dataset.name == 'mnist1d_shuffled'
    assert _param_count(six) < _param_count(mnist1d.get_config('model=gru'))


def test_hidden_size_on_a_model_without_one_is_a_one_line_error():
    with pytest.raises(ConfigError, match='hidden=6: only the recurrent models'):
        mnist1d.get_config('model=cnn,hidden=6')

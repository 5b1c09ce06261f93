"""Tests for `nets.layers.attention.AdditiveAttention` (Bahdanau et al. 2015): the score against the
formula written in numpy, masking of padded keys, the precomputed key projection, and the
weights sown into 'intermediates'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nets.layers.attention import AdditiveAttention
from tests.nets_harness import rng

QUERY_FEATURES, KEY_FEATURES, FEATURES = 5, 6, 4


def explicit_params(seed: int = 0) -> dict:
    draw = np.random.default_rng(seed)
    normal = lambda *shape: draw.normal(size=shape).astype(np.float32)  # noqa: E731
    return {
        'query_projection': {'kernel': normal(QUERY_FEATURES, FEATURES)},
        'key_projection': {'kernel': normal(KEY_FEATURES, FEATURES), 'bias': normal(FEATURES)},
        'score': {'kernel': normal(FEATURES, 1)},
    }


def reference(
    params: dict, query: np.ndarray, keys: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """e_j = vᵀ tanh(W_s s + W_h h_j + b), α = softmax over the valid j, context = Σ α_j h_j;
    one query (batch, features) at a time, written out per example and key."""
    w_s = params['query_projection']['kernel']
    w_h, b = params['key_projection']['kernel'], params['key_projection']['bias']
    v = params['score']['kernel'][:, 0]
    batch, k_len = keys.shape[:2]
    weights = np.zeros((batch, k_len))
    for n in range(batch):
        scores = np.array(
            [v @ np.tanh(query[n] @ w_s + keys[n, j] @ w_h + b) for j in range(k_len)]
        )
        keep = np.ones(k_len, bool) if valid is None else valid[n]
        exp = np.where(keep, np.exp(scores - scores[keep].max()), 0.0)
        weights[n] = exp / exp.sum()
    return np.einsum('bk,bkd->bd', weights, keys), weights


def random_arrays(seed: int = 1, batch: int = 3, k_len: int = 7):
    draw = np.random.default_rng(seed)
    query = draw.normal(size=(batch, QUERY_FEATURES)).astype(np.float32)
    keys = draw.normal(size=(batch, k_len, KEY_FEATURES)).astype(np.float32)
    return query, keys


def test_matches_the_formula():
    params = explicit_params()
    query, keys = random_arrays()
    context, weights = AdditiveAttention(FEATURES).apply({'params': params}, query, keys)
    expected_context, expected_weights = reference(params, query, keys)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, expected_context, rtol=1e-5, atol=1e-5)
    assert context.shape == (3, KEY_FEATURES) and weights.shape == (3, 7)


def test_several_queries_at_once_equal_one_at_a_time():
    params = explicit_params()
    draw = np.random.default_rng(2)
    queries = draw.normal(size=(2, 3, QUERY_FEATURES)).astype(np.float32)
    _, keys = random_arrays(batch=2)
    valid = np.array([[True] * 5 + [False] * 2, [True] * 7])
    module = AdditiveAttention(FEATURES)
    context, weights = module.apply({'params': params}, queries, keys, mask=valid)
    assert context.shape == (2, 3, KEY_FEATURES) and weights.shape == (2, 3, 7)
    for t in range(3):
        expected_context, expected_weights = reference(params, queries[:, t], keys, valid)
        np.testing.assert_allclose(weights[:, t], expected_weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(context[:, t], expected_context, rtol=1e-5, atol=1e-5)


def test_padded_keys_get_no_weight_and_change_nothing():
    params = explicit_params()
    query, keys = random_arrays()
    valid = np.array([[True] * 7, [True] * 4 + [False] * 3, [True] + [False] * 6])
    module = AdditiveAttention(FEATURES)
    context, weights = module.apply({'params': params}, query, keys, mask=valid)
    np.testing.assert_array_equal(np.asarray(weights)[~valid], 0.0)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        weights, reference(params, query, keys, valid)[1], rtol=1e-5, atol=1e-6
    )
    garbage = np.where(
        valid[..., None], keys, 100.0 * np.random.default_rng(3).normal(size=keys.shape)
    )
    context2, weights2 = module.apply(
        {'params': params}, query, garbage.astype(np.float32), mask=valid
    )
    np.testing.assert_array_equal(weights2, weights)
    np.testing.assert_allclose(context2, context, rtol=1e-6, atol=1e-6)


def test_no_valid_key_gives_uniform_weights_not_nan():
    query, keys = random_arrays(batch=1)
    _, weights = AdditiveAttention(FEATURES).apply(
        {'params': explicit_params()}, query, keys, mask=np.zeros((1, 7), bool)
    )
    np.testing.assert_allclose(weights, 1.0 / 7, rtol=1e-6)


def test_precomputed_key_projection_and_parameter_count():
    query, keys = random_arrays()
    module = AdditiveAttention(FEATURES)
    variables = module.init(rng(0), query, keys)
    shapes = jax.tree_util.tree_map(jnp.shape, variables['params'])
    assert shapes == {
        'query_projection': {'kernel': (QUERY_FEATURES, FEATURES)},
        'key_projection': {'kernel': (KEY_FEATURES, FEATURES), 'bias': (FEATURES,)},
        'score': {'kernel': (FEATURES, 1)},
    }
    projected = module.apply(variables, keys, method=AdditiveAttention.project_keys)
    assert projected.shape == (3, 7, FEATURES)
    direct = module.apply(variables, query, keys)
    cached = module.apply(variables, query, keys, projected_keys=projected)
    for a, b in zip(direct, cached):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_weights_are_sown_only_on_request():
    query, keys = random_arrays()
    module = AdditiveAttention(FEATURES)
    variables = module.init(rng(0), query, keys, mutable=['params', 'intermediates'])
    assert 'intermediates' not in variables  # nothing sown at init
    (_, weights), state = module.apply(variables, query, keys, mutable=['intermediates'])
    np.testing.assert_array_equal(state['intermediates']['attention_weights'][0], weights)


def test_invalid_uses_raise():
    with pytest.raises(ValueError, match='features must be positive'):
        AdditiveAttention(0)
    with pytest.raises(ValueError, match='valid choices'):
        AdditiveAttention(4, kernel_init='uniformish')
    query, keys = random_arrays()
    with pytest.raises(ValueError, match='expects'):
        AdditiveAttention(FEATURES).init(rng(0), query, keys[0])

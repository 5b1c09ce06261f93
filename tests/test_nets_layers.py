"""Tests for the shared layers of `nets` (nets/layers): activations, initialisers, the
conv-norm-activation block, the MLP block, drop path, the 2D sin-cos position embedding, and
dot-product and multi-head attention against a numpy reference.

These small tests run each computation inside one jitted function: eager jax ops compile one by
one, which is what makes tiny tests slow on CPU.
"""

import functools
import math

import jax
import numpy as np
import pytest

from nets.layers import blocks
from nets.layers.attention import MultiHeadAttention, attention_weights, dot_product_attention
from nets.layers.position import sincos_2d as sincos2d_posemb
from tests.nets_harness import fast_jit, rng

# --------------------------------------------------------------------------- shared layers

ACTIVATION_NAMES = (
    'relu',
    'gelu',
    'tanh',
    'sigmoid',
    'elu',
    'leaky_relu',
    'silu',
    'swish',
    'selu',
    'softplus',
    'identity',
)
INITIALIZER_NAMES = (
    'he_normal',
    'he_uniform',
    'glorot_normal',
    'xavier_normal',
    'glorot_uniform',
    'xavier_uniform',
    'lecun_normal',
    'lecun_uniform',
    'normal',
    'truncated_normal',
    'zeros',
    'orthogonal',
)


def test_activations():
    x = np.linspace(-3.0, 3.0, 13, dtype=np.float32)
    ys = fast_jit(lambda x: {name: blocks.activation(name)(x) for name in ACTIVATION_NAMES})(x)
    for name, y in ys.items():
        assert y.shape == x.shape and np.all(np.isfinite(y)), name
    np.testing.assert_allclose(ys['swish'], ys['silu'])
    np.testing.assert_allclose(ys['identity'], x)
    np.testing.assert_allclose(ys['relu'], np.maximum(x, 0))
    np.testing.assert_allclose(ys['leaky_relu'][0], -0.03, rtol=1e-5)
    # Exact (erf) GELU: gelu(1) = Phi(1) = 0.8413447.
    np.testing.assert_allclose(ys['gelu'][8], 0.8413447, rtol=1e-5)
    with pytest.raises(ValueError, match='softplus'):
        blocks.activation('relu6')


def test_initializers():
    def sample(key):
        out = {name: blocks.initializer(name)(key, (64, 32)) for name in INITIALIZER_NAMES}
        out['normal_big'] = blocks.initializer('normal')(key, (256, 256))
        out['he_big'] = blocks.initializer('he_normal')(key, (512, 512))
        out['orthogonal_square'] = blocks.initializer('orthogonal')(key, (16, 16))
        return out

    samples = jax.device_get(fast_jit(sample)(rng(0)))
    for name in INITIALIZER_NAMES:
        assert samples[name].shape == (64, 32) and samples[name].dtype == np.float32, name
    assert np.std(samples['normal_big']) == pytest.approx(0.01, rel=0.05)
    assert np.max(np.abs(samples['zeros'])) == 0.0
    assert np.var(samples['he_big']) == pytest.approx(2 / 512, rel=0.1)
    ortho = samples['orthogonal_square']
    np.testing.assert_allclose(ortho @ ortho.T, np.eye(16), atol=1e-5)
    with pytest.raises(ValueError, match='orthogonal'):
        blocks.initializer('kaiming')
    assert blocks.default_initializer_name('relu') == 'he_normal'
    assert blocks.default_initializer_name('selu') == 'lecun_normal'


@pytest.mark.parametrize(
    'shape, kernel_shape', [((2, 16, 3), (3, 3, 8)), ((2, 8, 8, 3), (3, 3, 3, 8))]
)
def test_conv_norm_act_spatial_rank_from_input(shape, kernel_shape):
    block = blocks.ConvNormAct(8, kernel_size=3, strides=2)
    plain_block = blocks.ConvNormAct(8, use_norm=False, activation='identity')
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)

    def run(key, x):
        variables = block.init(key, x)
        y, _ = block.apply(variables, x, train=True, mutable=['batch_stats'])
        return variables, y, plain_block.init(key, x)

    variables, y, plain = fast_jit(run)(rng(0), x)
    assert variables['params']['conv']['kernel'].shape == kernel_shape
    assert 'bias' not in variables['params']['conv']  # the norm has the bias
    assert y.shape == (shape[0],) + tuple(s // 2 for s in shape[1:-1]) + (8,)
    assert float(np.min(y)) >= 0.0  # relu
    assert set(plain['params']['conv']) == {'kernel', 'bias'} and 'batch_stats' not in plain


def test_mlp_block_shapes():
    block = blocks.MlpBlock(hidden_features=12, dropout_rate=0.5)
    x = np.ones((2, 5, 4), np.float32)

    def run(key, x):
        params = block.init(key, x)['params']
        return (
            params,
            block.apply({'params': params}, x),
            block.apply({'params': params}, x, train=True, rngs={'dropout': key}),
        )

    params, eval_out, train_out = fast_jit(run)(rng(0), x)
    assert params['fc1']['kernel'].shape == (4, 12) and params['fc2']['kernel'].shape == (12, 4)
    assert eval_out.shape == (2, 5, 4) and train_out.shape == (2, 5, 4)
    assert not np.allclose(eval_out, train_out)


def test_drop_path_drops_whole_examples():
    drop = blocks.DropPath(rate=0.25)
    x = np.ones((4000, 3, 2), np.float32)
    np.testing.assert_array_equal(drop.apply({}, x), x)  # eval: identity, no rng needed
    y = fast_jit(lambda x, key: drop.apply({}, x, train=True, rngs={'dropout': key}))(x, rng(0))
    per_example = np.asarray(y).reshape(4000, -1)
    kept = np.all(np.isclose(per_example, 1 / 0.75), axis=1)
    dropped = np.all(per_example == 0, axis=1)
    assert np.all(kept | dropped)  # each example is dropped as a whole
    assert dropped.mean() == pytest.approx(0.25, abs=0.03)
    assert float(np.mean(per_example)) == pytest.approx(1.0, abs=0.05)  # unbiased


def test_sincos2d_posemb():
    pos = sincos2d_posemb(3, 4, 8)
    assert pos.shape == (12, 8)
    assert np.all(np.abs(pos) <= 1.0)
    # Row-major grid: x varies fastest; first quarter is sin(x * omega_0) = sin(x).
    np.testing.assert_allclose(pos[:4, 0], np.sin(np.arange(4)), atol=1e-6)
    np.testing.assert_allclose(pos[::4, 4], np.sin(np.arange(3)), atol=1e-6)
    assert len({tuple(row) for row in np.round(pos, 5)}) == 12  # every position distinct
    with pytest.raises(ValueError, match='divisible by 4'):
        sincos2d_posemb(2, 2, 6)


# --------------------------------------------------------------------------- attention


def reference_attention(q, k, v, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum('bhqk,bkhd->bqhd', weights, v), weights


def test_dot_product_attention_matches_formula():
    data = np.random.default_rng(0)
    q = data.normal(size=(2, 3, 2, 4)).astype(np.float32)
    k = data.normal(size=(2, 5, 2, 4)).astype(np.float32)
    v = data.normal(size=(2, 5, 2, 4)).astype(np.float32)
    causal_like = np.tril(np.ones((3, 5), bool), k=2)[None, None]
    bias = np.zeros((1, 1, 3, 5), np.float32)
    bias[..., 0] = -1e9

    def run(q, k, v):
        return (
            dot_product_attention(q, k, v, return_weights=True),
            dot_product_attention(q, k, v),
            dot_product_attention(q, k, v, mask=causal_like, return_weights=True),
            attention_weights(q, k, bias=bias),
        )

    (out, weights), out_only, (masked_out, masked_weights), biased = fast_jit(run)(q, k, v)
    ref_out, ref_weights = reference_attention(q, k, v)
    assert out.shape == (2, 3, 2, 4) and weights.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
    np.testing.assert_allclose(out_only, out)

    ref_out, ref_weights = reference_attention(q, k, v, causal_like)
    np.testing.assert_allclose(masked_out, ref_out, atol=1e-5)
    assert float(np.max(np.where(causal_like, 0.0, masked_weights))) == 0.0
    np.testing.assert_allclose(biased[..., 0], 0.0, atol=1e-7)


def test_multi_head_attention_sows_weights_without_changing_outputs():
    mha = MultiHeadAttention(num_heads=2, dropout_rate=0.5)
    data = np.random.default_rng(0)
    x_q = data.normal(size=(3, 4, 8)).astype(np.float32)
    x_kv = data.normal(size=(3, 6, 8)).astype(np.float32)
    key_mask = np.arange(6)[None, None, None, :] < 3

    def run(key, x_q, x_kv):
        variables = mha.init(key, x_q)
        sow = functools.partial(mha.apply, mutable=['intermediates'])
        return (
            variables,
            mha.apply(variables, x_q),
            sow(variables, x_q),
            sow(variables, x_q, x_kv),
            sow(variables, x_q, x_kv, mask=key_mask),
        )

    variables, default_out, (out, state), (cross, cross_state), (_, masked_state) = fast_jit(run)(
        rng(1), x_q, x_kv
    )
    assert set(variables) == {'params'}  # nothing sown at init
    np.testing.assert_array_equal(out, default_out)
    (weights,) = state['intermediates']['attention_weights']
    assert weights.shape == (3, 2, 4, 4)  # (batch, heads, q_len, k_len)
    np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, atol=1e-6)

    assert cross.shape == (3, 4, 8)
    assert cross_state['intermediates']['attention_weights'][0].shape == (3, 2, 4, 6)

    (masked,) = masked_state['intermediates']['attention_weights']
    np.testing.assert_allclose(masked[..., 3:], 0.0)
    np.testing.assert_allclose(np.sum(masked, axis=-1), 1.0, atol=1e-6)

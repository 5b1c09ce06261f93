"""Course topics checked on the library itself: cosine-scored attention (bounded logits, equal
to the hand computation), self-attention's order-blindness without position encodings (ViT
and Transformer encoder), and batch norm erasing the scale of the weights before it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets.layers import attention
from nets.models.transformer import Transformer

# --------------------------------------------------------------------------- cosine attention


def manual_cosine_logits(q: np.ndarray, k: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(batch, heads, q_len, k_len) s_h · cos(q_i, k_j), written out with numpy."""
    batch, q_len, heads, _ = q.shape
    k_len = k.shape[1]
    logits = np.zeros((batch, heads, q_len, k_len))
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len):
                for j in range(k_len):
                    qi, kj = q[b, i, h].astype(np.float64), k[b, j, h].astype(np.float64)
                    cosine = qi @ kj / (np.linalg.norm(qi) * np.linalg.norm(kj))
                    logits[b, h, i, j] = scale[h] * cosine
    return logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cosine_logits_equal_the_hand_computation_and_are_bounded():
    rng = np.random.default_rng(0)
    # Queries and keys of very different sizes: cosine scoring does not see the sizes.
    q = (
        rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
        * np.array([1.0, 50.0], np.float32)[:, None]
    )
    k = rng.normal(size=(2, 5, 2, 4)).astype(np.float32)
    logit_scale = np.log(np.array([10.0, 1000.0], np.float32))  # the second is clamped at 100
    scale = np.array([10.0, attention.COSINE_MAX_SCALE])
    unit_q, unit_k = attention.cosine_queries_keys(jnp.asarray(q), jnp.asarray(k), logit_scale)
    logits = np.asarray(jnp.einsum('bqhd,bkhd->bhqk', unit_q, unit_k))
    expected = manual_cosine_logits(q, k, scale)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-4)
    assert np.all(np.abs(logits) <= scale[None, :, None, None] * (1 + 1e-6))
    weights = attention.attention_weights(unit_q, unit_k, scale=1.0)
    np.testing.assert_allclose(np.asarray(weights), softmax(expected), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope='module')
def cosine_layer():
    layer = attention.MultiHeadAttention(2, scoring='cosine', implementation='plain')
    x = jax.random.normal(jax.random.key(0), (2, 6, 8)) * 30.0
    return layer, layer.init(jax.random.key(1), x), x


def test_cosine_attention_module_uses_its_learned_scale(cosine_layer):
    layer, variables, x = cosine_layer
    params = variables['params']
    np.testing.assert_allclose(params['logit_scale'], np.log(10.0) * np.ones(2), rtol=1e-6)
    _, state = layer.apply(variables, x, mutable=['intermediates'])
    weights = np.asarray(state['intermediates']['attention_weights'][0])

    def project(name):
        kernel, bias = np.asarray(params[name]['kernel']), np.asarray(params[name]['bias'])
        return np.einsum('bld,dhk->blhk', np.asarray(x), kernel) + bias

    expected = softmax(manual_cosine_logits(project('query'), project('key'), np.full(2, 10.0)))
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-6)
    # The fused implementation computes the same outputs (scale 1 on unit vectors).
    fused = attention.MultiHeadAttention(2, scoring='cosine', implementation='xla')
    np.testing.assert_allclose(
        fused.apply(variables, x), layer.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_cosine_scoring_is_a_model_field():
    fields = dict(patch_size=2, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4)
    x = jnp.zeros((1, 8, 8, 3))
    dot = nets.count_params(nets.create('swin_t', **fields), x.shape)
    model = nets.create('swin_t', attention_scoring='cosine', **fields)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    block = variables['params']['stage0_block0']['window_attention']['attention']
    assert block['logit_scale'].shape == (2,)
    assert nets.count_params(model, x.shape) == dot + 2 * 2  # one scale per head and block
    with pytest.raises(ValueError, match="attention_scoring.*'cosine'"):
        nets.create('swin_t', attention_scoring='additive')


# --------------------------------------------------------------------------- order-blindness


def relative(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize(
    'posemb,blind', [('none', True), ('sinusoidal', False), ('learned', False)]
)
def test_transformer_encoder_without_positions_is_permutation_equivariant(posemb, blind):
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(3, 256, size=(2, 12)), jnp.int32)  # no padding
    order = rng.permutation(12)
    model = nets.create('transformer_tiny', posemb=posemb, dropout_rate=0.0)
    variables = model.init(jax.random.key(0), tokens, tokens)
    encode = jax.jit(lambda t: model.apply(variables, t, method=Transformer.encode))
    error = relative(encode(tokens[:, order]), encode(tokens)[:, order])
    assert (error < 1e-5) if blind else (error > 1e-2), error


def permute_patches(images: np.ndarray, order: np.ndarray, patch: int) -> np.ndarray:
    n, h, w, c = images.shape
    grid = images.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    patches = grid.reshape(n, -1, patch, patch, c)[:, order].reshape(grid.shape)
    return patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


@pytest.mark.parametrize('posemb,blind', [('none', True), ('learned', False), ('sincos2d', False)])
def test_vit_without_positions_is_permutation_equivariant(posemb, blind):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 12, 12, 1)).astype(np.float32)
    order = rng.permutation(9)  # the 3x3 grid of 4x4 patches
    model = nets.create(
        'vit_ti16',
        patch_size=4,
        hidden_size=16,
        depth=2,
        num_heads=2,
        mlp_dim=32,
        pool='token',
        posemb=posemb,
        num_classes=5,
    )
    variables = model.init(jax.random.key(0), images)

    @jax.jit
    def logits_and_tokens(x):
        logits, state = model.apply(
            variables,
            x,
            capture_intermediates=lambda m, method: m.name == 'encoder_norm',
            mutable=['intermediates'],
        )
        return logits, state['intermediates']['encoder_norm']['__call__'][0]

    logits, tokens = logits_and_tokens(images)
    moved_logits, moved_tokens = logits_and_tokens(permute_patches(images, order, 4))
    # Token 0 is the class token; the patch tokens follow their patches.
    token_error = relative(moved_tokens[:, 1:], tokens[:, 1:][:, order])
    logit_error = relative(moved_logits, logits)
    if blind:
        assert token_error < 1e-5 and logit_error < 1e-5, (token_error, logit_error)
    else:
        assert token_error > 1e-2 and logit_error > 1e-3, (token_error, logit_error)


def test_permuting_patches_moves_whole_patches():
    images = np.arange(2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.float32)
    moved = permute_patches(images, np.array([1, 0, 2, 3]), 2)
    np.testing.assert_array_equal(moved[:, :2, :2], images[:, :2, 2:])  # patch 0 <- patch 1
    np.testing.assert_array_equal(moved[:, 2:], images[:, 2:])


def test_invalid_position_embedding_names_the_choices():
    with pytest.raises(ValueError, match="'none'"):
        nets.create('vit_ti16', posemb='rope')
    with pytest.raises(ValueError, match="'none'"):
        nets.create('transformer_tiny', posemb='rope')


# --------------------------------------------------------------------------- batch norm


class LayerThenNorm(nn.Module):
    """Conv or dense without bias, then batch norm in training mode."""

    conv: bool

    @nn.compact
    def __call__(self, x):
        layer = nn.Conv(6, (3, 3), use_bias=False) if self.conv else nn.Dense(6, use_bias=False)
        return nn.BatchNorm(use_running_average=False, epsilon=0.0)(layer(x))


@pytest.mark.parametrize('conv', [False, True])
@pytest.mark.parametrize('c', [0.2, 7.0])
def test_batch_norm_erases_the_weight_scale(conv, c):
    x = jax.random.normal(jax.random.key(0), (16, 5, 5, 3) if conv else (32, 10))
    model = LayerThenNorm(conv)
    variables = model.init(jax.random.key(1), x)
    readout = jax.random.normal(jax.random.key(2), model.apply(variables, x, mutable=True)[0].shape)
    name = 'Conv_0' if conv else 'Dense_0'
    kernel = variables['params'][name]['kernel']

    def loss(kernel, x):
        params = {**variables['params'], name: {'kernel': kernel}}
        out, _ = model.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
        return jnp.sum(out * readout), out

    grads = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (weight_grad, input_grad), out = grads(kernel, x)
    (scaled_weight_grad, scaled_input_grad), scaled_out = grads(c * kernel, x)
    # With epsilon 0 the invariance is exact up to float32 rounding.
    assert relative(scaled_out, out) < 1e-5
    assert relative(scaled_input_grad, input_grad) < 1e-5
    assert relative(c * scaled_weight_grad, weight_grad) < 1e-5  # dL/dW scales by 1/c
    assert abs(
        float(jnp.linalg.norm(scaled_weight_grad) / jnp.linalg.norm(weight_grad)) - 1 / c
    ) < (1e-4 / c)
    # Without the norm the scale passes straight through.
    layer_alone = nn.Conv(6, (3, 3), use_bias=False) if conv else nn.Dense(6, use_bias=False)

    def plain(kernel):
        return layer_alone.apply({'params': {'kernel': kernel}}, x)

    assert relative(plain(c * kernel), plain(kernel)) == pytest.approx(abs(c - 1), rel=1e-4)


def test_lesson_measures_the_weight_scale_invariance():
    from experiments.lessons import SUPPORTED, c04_batch_norm

    measured = c04_batch_norm.weight_scale_invariance()
    assert set(measured) == {'dense', 'conv'}
    assert c04_batch_norm.scale_erased(measured)
    broken = {'dense': {'0.1': {'output': 0.9, 'input_grad': 0.0, 'weight_grad_times_c': 0.0}}}
    assert not c04_batch_norm.scale_erased(broken)
    # The lesson's verdict reads the measurement: all other sub-claims hold here.
    summary = {
        'largest_trained_lr': {'bn': 3.0, 'plain': 0.3},
        'speedup': 2.0,
        'dropout_gain': {'bn': 0.0, 'plain': 0.03},
        'saturating': {},
    }
    verdict = c04_batch_norm.judge({'summary': summary, 'weight_scale': measured})
    assert verdict.verdict == SUPPORTED and 'before BN' in verdict.reason
    verdict = c04_batch_norm.judge({'summary': summary, 'weight_scale': broken})
    assert verdict.verdict != SUPPORTED and 'change nothing but dL/dW' in verdict.reason

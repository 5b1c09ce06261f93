"""Tests for the attention library (nets.layers.attention), position encodings
(nets.layers.position), the shared encoder block and the ViT options built on them (MAP head,
resized position embeddings, ResNet-stem hybrid)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets.layers import attention, position
from nets.layers.attention import MultiHeadAttention
from nets.layers.encoder_block import EncoderBlock
from tests.nets_harness import fast_jit, rng


def random_qkv(
    seed: int = 0, batch: int = 2, q_len: int = 5, k_len: int = 7, heads: int = 2, dim: int = 8
):
    data = np.random.default_rng(seed)
    q = data.normal(size=(batch, q_len, heads, dim)).astype(np.float32)
    k = data.normal(size=(batch, k_len, heads, dim)).astype(np.float32)
    v = data.normal(size=(batch, k_len, heads, dim)).astype(np.float32)
    return q, k, v


# --------------------------------------------------------------------------- masks and functions


def test_causal_and_padding_masks():
    causal = np.asarray(attention.causal_mask(3))
    assert causal.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(causal[0, 0], np.tril(np.ones((3, 3), bool)))
    # Queries are the last positions when there are more keys (continuing a cached prefix).
    np.testing.assert_array_equal(
        np.asarray(attention.causal_mask(2, 4))[0, 0], [[1, 1, 1, 0], [1, 1, 1, 1]]
    )
    valid = np.array([[True, True, False], [True, False, False]])
    pad = np.asarray(attention.padding_mask(valid))
    assert pad.shape == (2, 1, 3, 3)
    assert pad[0, 0, 1, 1] and not pad[0, 0, 1, 2] and not pad[1, 0, 2, 0]
    keys = np.asarray(attention.key_padding_mask(valid))
    assert keys.shape == (2, 1, 1, 3) and keys[1, 0, 0].tolist() == [True, False, False]
    combined = np.asarray(attention.combine_masks(attention.causal_mask(3), keys))
    assert combined.shape == (2, 1, 3, 3) and not combined[0, 0, 2, 2] and combined[0, 0, 2, 1]
    assert attention.combine_masks(None, None) is None


def test_fully_masked_queries_get_uniform_weights_not_nan():
    q, k, _ = random_qkv()
    valid = np.zeros((2, 7), bool)
    valid[0, :3] = True  # batch 1 has no valid keys at all
    weights = np.asarray(attention.attention_weights(q, k, mask=attention.key_padding_mask(valid)))
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights[0, ..., 3:], 0.0)
    np.testing.assert_allclose(weights[1], 1.0 / 7, atol=1e-6)


@pytest.mark.parametrize(
    'with_mask,with_bias', [(False, False), (True, False), (False, True), (True, True)]
)
def test_fused_path_equals_plain_path(with_mask, with_bias):
    q, k, v = random_qkv(1)
    mask = np.asarray(attention.causal_mask(5, 7)) if with_mask else None
    bias = (
        np.random.default_rng(2).normal(size=(1, 2, 5, 7)).astype(np.float32) if with_bias else None
    )
    run = fast_jit(
        lambda q, k, v: [
            attention.dot_product_attention(q, k, v, mask=mask, bias=bias, implementation=impl)
            for impl in ('plain', 'xla', 'auto')
        ]
    )
    plain, fused, auto = run(q, k, v)
    np.testing.assert_allclose(fused, plain, atol=1e-5)
    np.testing.assert_allclose(auto, plain, atol=1e-5)


def test_unknown_implementation_names_the_choices():
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match="'flash'.*plain"):
        attention.dot_product_attention(q, k, v, implementation='flash')
    with pytest.raises(ValueError, match='implementation'):
        MultiHeadAttention(num_heads=2, implementation='flash')


def test_auto_picks_plain_off_gpu_and_cudnn_only_for_half_precision_on_gpu():
    q, k, _ = random_qkv(q_len=6, k_len=8)
    expected = 'plain' if jax.default_backend() != 'gpu' else 'plain'  # float32 is never cuDNN
    assert attention.resolve_implementation('auto', q, k) == expected
    assert attention.cudnn_eligible(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), None) == (
        jax.default_backend() == 'gpu'
    )


def test_cudnn_is_not_picked_for_odd_sequence_lengths(monkeypatch):
    """JAX's cuDNN attention cannot train on odd lengths (a ViT's class token + 196 patches
    failed on an H100): 'auto' falls back to the plain softmax there."""
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    even = jnp.zeros((2, 196, 4, 64), jnp.bfloat16)
    odd = jnp.zeros((2, 197, 4, 64), jnp.bfloat16)
    assert attention.cudnn_eligible(even, even, None)
    assert not attention.cudnn_eligible(odd, odd, None)
    assert not attention.cudnn_eligible(even, odd, None)
    assert attention.resolve_implementation('auto', odd, odd) == 'plain'


# --------------------------------------------------------------------------- the module


def _mha_outputs(implementation: str):
    mha = MultiHeadAttention(num_heads=2, implementation=implementation)
    data = np.random.default_rng(0)
    x = data.normal(size=(2, 6, 8)).astype(np.float32)
    bias = data.normal(size=(1, 2, 6, 6)).astype(np.float32)
    mask = np.asarray(attention.causal_mask(6))

    def run(key, x):
        variables = mha.init(key, x)
        default = mha.apply(variables, x, mask=mask, bias=bias)
        sown, state = mha.apply(variables, x, mask=mask, bias=bias, mutable=['intermediates'])
        return default, sown, state['intermediates']['attention_weights'][0]

    return jax.jit(run)(rng(0), x), mha, x


def test_module_paths_agree_and_sowing_keeps_default_outputs():
    (plain, plain_sown, plain_weights), _, _ = _mha_outputs('plain')
    (fused, fused_sown, fused_weights), _, _ = _mha_outputs('xla')
    np.testing.assert_allclose(fused, plain, atol=1e-5)
    np.testing.assert_array_equal(plain_sown, plain)  # asking for weights changes nothing
    np.testing.assert_array_equal(fused_sown, fused)
    np.testing.assert_allclose(fused_weights, plain_weights, atol=1e-6)
    assert float(np.max(np.triu(plain_weights[0, 0], 1))) == 0.0  # causal


def test_weights_are_computed_only_when_requested():
    # The fused default call must not contain the weights' extra Q·Kᵀ matmul.
    mha = MultiHeadAttention(num_heads=2, implementation='xla')
    x = np.zeros((1, 4, 8), np.float32)
    variables = jax.eval_shape(mha.init, rng(0), x)

    def matmuls(**kwargs):
        jaxpr = jax.make_jaxpr(functools.partial(mha.apply, **kwargs))(variables, x)
        return str(jaxpr).count('dot_general')

    assert matmuls(mutable=['intermediates']) == matmuls() + 1


def test_kv_cache_decoding_equals_full_causal_attention():
    mha = MultiHeadAttention(num_heads=2, implementation='plain')
    decoder = MultiHeadAttention(num_heads=2, implementation='plain', decode=True)
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype(np.float32)

    def run(key, x):
        params = mha.init(key, x)['params']
        full = mha.apply({'params': params}, x, mask=attention.causal_mask(5))
        cache = decoder.init(key, jnp.zeros_like(x))['cache']
        steps = []
        for t in range(5):
            out, state = decoder.apply(
                {'params': params, 'cache': cache}, x[:, t : t + 1], mutable=['cache']
            )
            cache = state['cache']
            steps.append(out)
        return full, jnp.concatenate(steps, axis=1), cache['cache_index']

    full, stepped, index = fast_jit(run)(rng(0), x)
    np.testing.assert_allclose(stepped, full, atol=1e-5)
    assert int(index) == 5
    with pytest.raises(ValueError, match='self-attention only'):
        decoder.init(rng(0), x, x)


def test_cross_attention_with_key_padding():
    mha = MultiHeadAttention(num_heads=2, qkv_features=16, out_features=4)
    data = np.random.default_rng(4)
    queries = data.normal(size=(2, 3, 8)).astype(np.float32)
    memory = data.normal(size=(2, 5, 6)).astype(np.float32)
    valid = np.array([[True] * 5, [True, True, False, False, False]])
    changed = memory.copy()
    changed[1, 2:] += 10.0  # only padding changes

    def run(key):
        variables = mha.init(key, queries, memory)
        mask = attention.key_padding_mask(valid)
        return (
            mha.apply(variables, queries, memory, mask=mask),
            mha.apply(variables, queries, changed, mask=mask),
        )

    out, out_changed = fast_jit(run)(rng(0))
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out_changed, out, atol=1e-6)


# --------------------------------------------------------------------------- position encodings


def test_sinusoidal_encodings_extrapolate_and_depend_only_on_offset():
    trained_length, features = 64, 32
    long_table = position.sinusoidal_1d(4096, features)  # far beyond any training length
    assert np.all(np.isfinite(long_table)) and np.max(np.abs(long_table)) <= 1.0
    # Positions seen in training get the same codes however long the table is.
    np.testing.assert_allclose(
        long_table[:trained_length], position.sinusoidal_1d(trained_length, features), atol=1e-6
    )
    # Distinct codes for distinct positions, including unseen ones.
    assert len({tuple(np.round(row, 4)) for row in long_table[:1024]}) == 1024
    # PE(p)·PE(q) is a function of p - q only: sum_i cos(w_i (p - q)).
    gram = long_table @ long_table.T
    for offset in (0, 1, 7, 100):
        diagonal = np.diagonal(gram, offset=offset)
        np.testing.assert_allclose(diagonal, diagonal[0], atol=2e-3)
    # The traced version used by decoding gives the same values.
    np.testing.assert_allclose(
        position.sinusoidal_at(jnp.arange(100, 110), features), long_table[100:110], atol=1e-4
    )
    with pytest.raises(ValueError, match='even width'):
        position.sinusoidal_1d(4, 7)


def test_relative_position_bias_shares_values_per_offset():
    bias_module = position.RelativePositionBias(num_heads=3, window=(3, 4))
    variables = bias_module.init(rng(0))
    assert variables['params']['relative_position_bias_table'].shape == (5 * 7, 3)
    bias = np.asarray(bias_module.apply(variables))
    assert bias.shape == (3, 12, 12)
    coords = [(y, x) for y in range(3) for x in range(4)]
    by_offset: dict = {}
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            by_offset.setdefault((yi - yj, xi - xj), []).append(bias[:, i, j])
    assert len(by_offset) == 5 * 7
    for values in by_offset.values():
        np.testing.assert_array_equal(
            np.stack(values), np.broadcast_to(values[0], (len(values), 3))
        )


def test_resize_grid_embedding_keeps_prefix_and_interpolates():
    grid = np.arange(16, dtype=np.float32).reshape(1, 16, 1)
    table = np.concatenate([np.full((1, 1, 1), -1.0, np.float32), grid], axis=1)
    same = position.resize_grid_embedding(table, (4, 4), num_prefix_tokens=1)
    np.testing.assert_allclose(same, table)
    bigger = np.asarray(position.resize_grid_embedding(table, (8, 6), num_prefix_tokens=1))
    assert bigger.shape == (1, 1 + 48, 1) and bigger[0, 0, 0] == -1.0
    assert bigger[0, 1:, 0].min() >= 0.0 and bigger[0, 1:, 0].max() <= 15.0
    with pytest.raises(ValueError, match='square'):
        position.resize_grid_embedding(table, (4, 4))  # forgot the class token


# --------------------------------------------------------------------------- blocks and ViT options


@pytest.mark.parametrize('norm_position', ['pre', 'post'])
def test_encoder_block_norm_positions(norm_position):
    block = EncoderBlock(num_heads=2, mlp_dim=16, norm_position=norm_position)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32) * 3 + 1
    variables = fast_jit(block.init)(rng(0), x)
    out = fast_jit(block.apply)(variables, x)
    assert out.shape == x.shape and np.all(np.isfinite(out))
    if norm_position == 'post':  # ends in LayerNorm: zero mean, unit variance per token
        np.testing.assert_allclose(np.mean(out, -1), 0.0, atol=1e-5)
        np.testing.assert_allclose(np.std(out, -1), 1.0, atol=1e-3)
    width = 8
    expected = (4 * width * width + 4 * width) + (2 * width * 16 + 16 + width) + 2 * 2 * width
    assert nets.count_params(block, (1, 5, width)) == expected
    with pytest.raises(ValueError, match="'middle'"):
        EncoderBlock(num_heads=2, mlp_dim=16, norm_position='middle')


TINY_VIT = dict(patch_size=4, hidden_size=32, depth=2, num_heads=2, mlp_dim=64, num_classes=10)


def test_vit_map_head_parameters_and_outputs():
    token = nets.count_params(nets.create('vit_ti16', **TINY_VIT, pool='gap'), (1, 16, 16, 3))
    mapped = nets.count_params(nets.create('vit_ti16', **TINY_VIT, pool='map'), (1, 16, 16, 3))
    d, m = 32, 64
    assert mapped - token == d + (4 * d * d + 4 * d) + 2 * d + (2 * d * m + m + d)
    model = nets.create('vit_ti16', **TINY_VIT, pool='map')
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = fast_jit(model.init)(rng(0), x)
    logits, state = fast_jit(functools.partial(model.apply, mutable=['intermediates']))(
        variables, x
    )
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    (probe_weights,) = state['intermediates']['map_head']['attention']['attention_weights']
    assert probe_weights.shape == (2, 2, 1, 16)  # one probe attends over the 4x4 patches


def test_vit_learned_posemb_is_interpolated_for_a_new_image_size():
    model = nets.create('vit_ti16', **TINY_VIT, pool='token', posemb='learned')
    small = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    large = np.random.default_rng(1).normal(size=(1, 24, 32, 3)).astype(np.float32)
    variables = fast_jit(model.init)(rng(0), small)
    assert variables['params']['pos_embedding'].shape == (1, 1 + 16, 32)
    logits = fast_jit(model.apply)(variables, large)  # 6x8 patches from a 4x4 table
    assert logits.shape == (1, 10) and np.all(np.isfinite(logits))
    # Same as resizing the checkpoint explicitly and building the model at the new size.
    params = dict(variables['params'])
    params['pos_embedding'] = position.resize_grid_embedding(
        params['pos_embedding'], (6, 8), num_prefix_tokens=1
    )
    np.testing.assert_allclose(fast_jit(model.apply)({'params': params}, large), logits, atol=1e-5)


def test_hybrid_vit_on_a_resnet_stem():
    model = nets.create(
        'vit_ti16',
        **dict(TINY_VIT, patch_size=1),
        stem='resnet',
        resnet_stage_sizes=(1, 1),
        resnet_width=8,
        resnet_root='cifar',
    )
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    variables = fast_jit(model.init)(rng(0), x)
    assert 'batch_stats' in variables and 'resnet' in variables['params']
    # Stage 2 halves 16 -> 8: an 8x8 grid of 1x1 patches plus the class token.
    assert variables['params']['pos_embedding'].shape == (1, 65, 32)
    logits = fast_jit(functools.partial(model.apply, train=False))(variables, x)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    with pytest.raises(ValueError, match="'conv'.*patch"):
        nets.create('vit_ti16', stem='conv')


def test_registered_hybrid_is_vit_b_on_resnet50_stages():
    def param_tree(model):
        return jax.eval_shape(
            model.init, rng(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
        )['params']

    def size(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))

    hybrid, vit_b, resnet50 = (
        param_tree(nets.create(name)) for name in ('vit_r50_b16', 'vit_b16', 'resnet50')
    )
    # The paper's hybrid: ResNet-50's root and stages 1-3, stage 3 lengthened from 6 to 9 blocks.
    stages = size(resnet50['stem']) + sum(
        size(block)
        for name, block in resnet50.items()
        if name.startswith(('stage0', 'stage1', 'stage2'))
    )
    stages += 3 * size(resnet50['stage2_block1'])
    assert size(hybrid['resnet']) == stages == 11_894_848
    # The patch embedding reads 1x1 patches of 1024 channels instead of 16x16x3 pixels.
    embedding_change = (1024 - 16 * 16 * 3) * 768
    assert size(hybrid) == size(vit_b) + stages + embedding_change


def test_attention_rollout_composes_layers():
    data = np.random.default_rng(0)
    layers_weights = [jax.nn.softmax(data.normal(size=(2, 3, 4, 4)), -1) for _ in range(3)]
    rollout = np.asarray(attention.attention_rollout(layers_weights))
    assert rollout.shape == (2, 4, 4)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-5)
    # By hand: average heads, mix in the identity, multiply later layers on the left.
    expected = np.broadcast_to(np.eye(4), (2, 4, 4))
    for w in layers_weights:
        expected = (0.5 * np.asarray(w).mean(1) + 0.5 * np.eye(4)) @ expected
    np.testing.assert_allclose(rollout, expected, atol=1e-5)
    # Attention that only looks at token 0 in the last layer routes everything there.
    only_first = np.zeros((1, 1, 4, 4), np.float32)
    only_first[..., 0] = 1.0
    np.testing.assert_allclose(
        attention.attention_rollout([only_first], residual=False)[0, :, 0], 1.0
    )
    with pytest.raises(ValueError, match='at least one layer'):
        attention.attention_rollout([])

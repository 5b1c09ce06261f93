"""Tests for the Swin Transformer (nets/models/swin.py).

Parameter counts of the registered variants use `jax.eval_shape` only. The
window helpers are checked against hand-derived expectations on an 8x8 grid
with window 4 and shift 2, and against each other; the attention modules are
checked at the output level (which tokens a perturbation reaches); a tiny Swin
(32x32 input, patch 2, window 4, two stages, width 16) runs a forward/backward
pass in float32 and bfloat16. Everything compiled here is tiny.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
import nets.models.swin
from nets.models.swin import (
    SwinBlock,
    WindowAttention,
    attention_group_map,
    region_map,
    shifted_window_mask,
    stage_windows,
    window_index_map,
    window_partition,
    window_reverse,
)
from tests.nets_harness import TinyRun, fast_jit, rng

IMAGENET_INPUT = (1, 224, 224, 3)

# Official Swin / timm swin_*_patch4_window7_224, 1000 classes.
SWIN_ANCHORS = {
    'swin_t': 28_288_354,
    'swin_s': 49_606_258,
    'swin_b': 87_768_224,
    'swin_l': 196_532_476,
}

TINY = dict(
    num_classes=10, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4)
)
TINY_INPUT = (2, 32, 32, 3)


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize('name, expected', sorted(SWIN_ANCHORS.items()))
def test_param_count_matches_official(name, expected):
    assert nets.count_params(nets.create(name), IMAGENET_INPUT) == expected


def test_registered_names_and_fields():
    assert nets.list_models('swin') == sorted(SWIN_ANCHORS)
    fields = nets.model_fields('swin_b')
    assert fields['embed_dim'] == 128 and fields['num_heads'] == (4, 8, 16, 32)
    assert (
        fields['depths'] == (2, 2, 18, 2)
        and fields['window_size'] == 7
        and fields['patch_size'] == 4
    )
    assert fields['mlp_ratio'] == 4.0 and fields['drop_path_rate'] == 0.5


def test_relative_position_tables_are_the_only_extra_params_and_index_is_constant():
    params = jax.eval_shape(
        nets.create('swin_t').init,
        {'params': rng(0)},
        jax.ShapeDtypeStruct(IMAGENET_INPUT, jnp.float32),
    )
    assert set(params) == {'params'}  # no index or mask buffers among the variables
    attention = params['params']['stage2_block0']['window_attention']
    assert attention['relative_position_bias']['relative_position_bias_table'].shape == (
        13 * 13,
        12,
    )


# --------------------------------------------------------------------------- window helpers


def test_window_partition_reverse_round_trip_and_order():
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3))
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 6, 4, 4, 3)
    # Row-major over the 2x3 window grid, batch-major.
    np.testing.assert_array_equal(windows[1], x[0, 0:4, 4:8])
    np.testing.assert_array_equal(windows[3], x[0, 4:8, 0:4])
    np.testing.assert_array_equal(windows[6 + 5], x[1, 4:8, 8:12])
    np.testing.assert_array_equal(window_reverse(windows, 4, 8, 12), x)
    as_jax = window_reverse(window_partition(jnp.asarray(x, jnp.float32), 4), 4, 8, 12)
    np.testing.assert_array_equal(np.asarray(as_jax), x.astype(np.float32))
    with pytest.raises(ValueError, match='window 5 .* 8x12'):
        window_partition(x, 5)


# 8x8 grid, window 4, shift 2: the rolled map's rows/columns fall into strips
# [0, 4) -> 0, [4, 6) -> 1, [6, 8) -> 2; windows 0..3 are top-left, top-right,
# bottom-left, bottom-right of the rolled map.
H = W = 8
WINDOW, SHIFT = 4, 2


def test_shifted_window_mask_hand_derived():
    mask = shifted_window_mask(H, W, WINDOW, SHIFT)
    assert mask.shape == (4, 16, 16) and mask.dtype == bool
    r, c = np.divmod(np.arange(16), 4)  # local row/column of each token of a window
    same = lambda side: side[:, None] == side[None, :]  # noqa: E731
    # Window 0 lies inside strip 0 on both axes: everyone attends to everyone.
    np.testing.assert_array_equal(mask[0], np.ones((16, 16), bool))
    # Window 1 (top-right): columns 4,5 (strip 1) and 6,7 (wrapped, strip 2) are cut apart.
    np.testing.assert_array_equal(mask[1], same(c < 2))
    # Window 2 (bottom-left): the same split along rows.
    np.testing.assert_array_equal(mask[2], same(r < 2))
    # Window 3 (bottom-right): four 2x2 regions.
    np.testing.assert_array_equal(mask[3], same(r < 2) & same(c < 2))
    assert mask.sum(axis=(1, 2)).tolist() == [256, 2 * 64, 2 * 64, 4 * 16]
    # Window 3, local (0, 0) (rolled (4, 4), original (6, 6)) against local (3, 3)
    # (rolled (7, 7), original (1, 1): wrapped round from the top-left corner).
    assert not mask[3, 0, 15] and not mask[3, 15, 0]
    assert mask[3, 0, 5] and mask[3, 15, 10]  # (6,6)-(7,7) and (1,1)-(0,0): same region
    assert not mask[3, 0, 2] and not mask[3, 0, 8]  # across one border only
    # No shift: one region everywhere.
    assert shifted_window_mask(H, W, WINDOW, 0).all()
    with pytest.raises(ValueError, match='shift'):
        shifted_window_mask(H, W, WINDOW, WINDOW)


def test_window_index_and_region_maps_hand_derived():
    # Original row i sits at rolled row (i - 2) mod 8: rows 0,1 and 6,7 land in
    # the second window row, rows 2..5 in the first.
    side = np.array([1, 1, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(
        window_index_map(H, W, WINDOW, SHIFT), 2 * side[:, None] + side[None, :]
    )
    assert (
        window_index_map(H, W, WINDOW, SHIFT)[0, 0]
        == window_index_map(H, W, WINDOW, SHIFT)[6, 6]
        == 3
    )
    # Unshifted: the plain 2x2 window grid.
    plain = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(
        window_index_map(H, W, WINDOW, 0), 2 * plain[:, None] + plain[None, :]
    )
    # Strips in original coordinates: the wrapped rows 0,1 -> 2, rows 6,7 -> 1, the rest 0.
    strip = np.array([2, 2, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(
        region_map(H, W, WINDOW, SHIFT), 3 * strip[:, None] + strip[None, :]
    )
    assert not region_map(H, W, WINDOW, 0).any()
    groups = attention_group_map(H, W, WINDOW, SHIFT)
    assert groups.max() + 1 == 1 + 2 + 2 + 4  # window 0 whole, 1 and 2 split in two, 3 in four
    assert groups[0, 0] == groups[1, 1] == groups[0, 1] != groups[6, 6] == groups[7, 7]
    np.testing.assert_array_equal(
        attention_group_map(H, W, WINDOW, 0), window_index_map(H, W, WINDOW, 0)
    )


@pytest.mark.parametrize(
    'height, width, window, shift', [(8, 8, 4, 2), (12, 8, 4, 2), (14, 21, 7, 3), (8, 8, 4, 0)]
)
def test_group_map_agrees_with_mask_and_window_index(height, width, window, shift):
    """Pairs that may attend by `attention_group_map` (original coordinates) are exactly the
    pairs the model's mask allows after rolling and partitioning the original positions."""
    original = np.arange(height * width).reshape(height, width)
    rolled = np.roll(original, (-shift, -shift), axis=(0, 1))
    members = window_partition(rolled[None, :, :, None], window).reshape(-1, window * window)
    mask = shifted_window_mask(height, width, window, shift)
    allowed = np.zeros((height * width,) * 2, bool)
    index = window_index_map(height, width, window, shift).reshape(-1)
    for k, tokens in enumerate(members):
        allowed[np.ix_(tokens, tokens)] = mask[k]
        assert (index[tokens] == k).all()
    groups = attention_group_map(height, width, window, shift).reshape(-1)
    np.testing.assert_array_equal(allowed, groups[:, None] == groups[None, :])


def test_stage_windows():
    assert stage_windows(224, 224, 4, 4, 7) == [
        (56, 56, 7, 3),
        (28, 28, 7, 3),
        (14, 14, 7, 3),
        (7, 7, 7, 0),
    ]
    # Maps not larger than the window use their shorter side as the window and no shift.
    assert stage_windows(224, 224, 4, 4, 14) == [
        (56, 56, 14, 7),
        (28, 28, 14, 7),
        (14, 14, 14, 0),
        (7, 7, 7, 0),
    ]
    assert stage_windows(224, 448, 4, 4, 7)[-1] == (7, 14, 7, 0)
    with pytest.raises(ValueError, match=r'100x100 .* multiple of .* 32.* 224'):
        stage_windows(100, 100, 4, 4, 7)
    with pytest.raises(ValueError, match=r'96x96: the stage 0 feature map 24x24 .* window 7'):
        stage_windows(96, 96, 4, 4, 7)


# -------------------------------------------------------------------- attention at the output level


def perturbed_outputs(
    module, token: tuple[int, int], channels: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of `module` on a random 8x8 map and on the same map with `token` changed.

    The change is a random vector, not a constant: LayerNorm would remove a
    constant added to every channel, hiding it from a block's attention.
    """
    data = np.random.default_rng(0)
    x = data.normal(size=(1, H, W, channels)).astype(np.float32)
    y = x.copy()
    y[0, token[0], token[1]] += 3.0 * data.normal(size=channels).astype(np.float32)
    variables = module.init(rng(0), x)
    apply = fast_jit(module.apply)
    return np.asarray(apply(variables, x))[0], np.asarray(apply(variables, y))[0]


def changed_tokens(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(H, W) bool: tokens whose output moved.

    A masked key gets a weight of exactly 0, so unreached tokens are bit-identical;
    reached ones move by about 1e-3 with the 0.02-std initial kernels.
    """
    return np.abs(after - before).max(axis=-1) > 1e-8


@pytest.mark.parametrize(
    'module',
    [
        WindowAttention(num_heads=2, window_size=WINDOW, shift_size=SHIFT),
        SwinBlock(num_heads=2, window_size=WINDOW, shift_size=SHIFT),
    ],
    ids=['window_attention', 'swin_block'],
)
def test_shifted_windows_do_not_attend_across_the_wrapped_border(module):
    before, after = perturbed_outputs(module, (0, 0))
    changed = changed_tokens(before, after)
    # (0, 0) and (6, 6) share rolled window 3 but come from opposite borders.
    assert (
        window_index_map(H, W, WINDOW, SHIFT)[0, 0] == window_index_map(H, W, WINDOW, SHIFT)[6, 6]
    )
    assert not changed[6, 6] and not changed[7, 7] and not changed[0, 7] and not changed[7, 0]
    np.testing.assert_array_equal(before[6, 6], after[6, 6])
    # (1, 1) shares both its window and its region with (0, 0).
    assert changed[1, 1] and changed[0, 1]
    groups = attention_group_map(H, W, WINDOW, SHIFT)
    np.testing.assert_array_equal(changed, groups == groups[0, 0])
    # From the other side of the border: (7, 7) reaches (6, 6), not (0, 0).
    before, after = perturbed_outputs(module, (7, 7))
    changed = changed_tokens(before, after)
    assert changed[6, 6] and not changed[0, 0] and not changed[1, 1]
    np.testing.assert_array_equal(changed, groups == groups[7, 7])


def test_regular_windows_stay_inside_their_window():
    before, after = perturbed_outputs(WindowAttention(num_heads=2, window_size=WINDOW), (1, 2))
    changed = changed_tokens(before, after)
    windows = window_index_map(H, W, WINDOW, 0)
    np.testing.assert_array_equal(changed, windows == windows[1, 2])
    np.testing.assert_array_equal(before[windows != 0], after[windows != 0])


# --------------------------------------------------------------------------- the tiny model


@functools.cache
def tiny_run(dtype: str) -> TinyRun:
    return TinyRun(
        'swin_t',
        dict(TINY, dtype=dtype, dropout_rate=0.1, attention_dropout_rate=0.1, drop_path_rate=0.2),
        TINY_INPUT,
    )


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_tiny_swin_forward_backward(dtype):
    run = tiny_run(dtype)
    logits = run.eval_apply(run.variables, run.x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    grads, (train_logits, _) = run.train(seed=3)
    assert train_logits.shape == (2, 10) and np.isfinite(np.asarray(train_logits)).all()
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in leaves)
    assert all(g.dtype == jnp.float32 for g in leaves)  # parameters stay float32
    # Every block's bias table and the patch merging get a gradient.
    assert (
        np.abs(
            np.asarray(
                grads['stage1_block1']['window_attention']['relative_position_bias'][
                    'relative_position_bias_table'
                ]
            )
        ).sum()
        > 0
    )
    assert np.abs(np.asarray(grads['merge1']['reduction']['kernel'])).sum() > 0


def test_tiny_swin_attention_weights_in_intermediates():
    run = tiny_run('float32')
    _, state = fast_jit(functools.partial(run.model.apply, mutable=['intermediates']))(
        run.variables, run.x
    )
    weights = {
        name: np.asarray(block['window_attention']['attention']['attention_weights'][0])
        for name, block in state['intermediates'].items()
    }
    assert sorted(weights) == ['stage0_block0', 'stage0_block1', 'stage1_block0', 'stage1_block1']
    # Stage 0: 16x16 map -> 16 windows of 4x4; stage 1: 8x8 -> 4 windows. Batch 2.
    assert weights['stage0_block0'].shape == (2 * 16, 2, 16, 16)
    assert weights['stage1_block1'].shape == (2 * 4, 4, 16, 16)
    for w in weights.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    # Shifted block: masked pairs get exactly zero weight (batch-major windows).
    mask = np.tile(shifted_window_mask(16, 16, 4, 2), (2, 1, 1))[:, None]
    assert (
        weights['stage0_block1'][~np.broadcast_to(mask, weights['stage0_block1'].shape)] == 0
    ).all()
    assert (weights['stage0_block0'] > 0).all()


def test_fused_attention_path_matches_plain():
    model = nets.create('swin_t', **TINY, attention_implementation='xla')
    run = tiny_run('float32')
    fused = fast_jit(functools.partial(model.apply, train=False))(run.variables, run.x)
    np.testing.assert_allclose(fused, run.eval_apply(run.variables, run.x), atol=1e-4, rtol=1e-4)


def test_small_maps_shrink_the_window():
    # 16x16 input, patch 2, window 8: stage 0 is one 8x8 window, stage 1 (4x4) a 4x4 one.
    model = nets.create('swin_t', **dict(TINY, window_size=8))
    params = jax.eval_shape(
        model.init, {'params': rng(0)}, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    )

    def table(block):
        return params['params'][block]['window_attention']['relative_position_bias'][
            'relative_position_bias_table'
        ].shape

    assert table('stage0_block1') == (15 * 15, 2) and table('stage1_block1') == (7 * 7, 4)


@pytest.mark.parametrize(
    'overrides, message',
    [
        (
            dict(attention_implementation='flash'),
            r"Unknown attention_implementation 'flash'; valid choices",
        ),
        (dict(depths=(2, 2), num_heads=(3, 6, 12)), r'depths=\(2, 2\), num_heads=\(3, 6, 12\)'),
        (dict(depths=(), num_heads=()), r'non-empty'),
        (dict(embed_dim=100), r'stage 0 width 100 .* num_heads 3'),
        (dict(drop_path_rate=1.0), r'drop_path_rate must be in \[0, 1\), got 1.0'),
        (dict(attention_dropout_rate=-0.1), r'attention_dropout_rate'),
        (dict(window_size=0), r'window_size must be a positive int, got 0'),
        (dict(patch_size=2.5), r'patch_size must be a positive int, got 2.5'),
        (dict(mlp_ratio=0), r'mlp_ratio must be positive, got 0'),
    ],
)
def test_bad_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        nets.create('swin_t', **overrides)


def test_bad_input_raises():
    model = nets.create('swin_t')
    with pytest.raises(ValueError, match=r'100x100 .* 224'):
        jax.eval_shape(
            model.init, {'params': rng(0)}, jax.ShapeDtypeStruct((1, 100, 100, 3), jnp.float32)
        )
    with pytest.raises(ValueError, match=r'\(N, H, W, C\) images'):
        jax.eval_shape(
            model.init, {'params': rng(0)}, jax.ShapeDtypeStruct((1, 224, 224), jnp.float32)
        )

"""experiments.analysis.show_attention on tiny trained ViT and Swin runs: the pictures are written
and the maps they draw are the model's own attention weights."""

import numpy as np
import pytest

from experiments.analysis import show_attention
from train.config import default_config, model_config
from train.loop import train_and_evaluate

TINY_VIT = dict(patch_size=2, hidden_size=16, depth=2, num_heads=2, mlp_dim=32)


def tiny_run(tmp_path, digits_dir, name: str, **fields):
    config = default_config()
    config.dataset.name = 'digits'
    config.dataset.data_dir = digits_dir
    config.model = model_config(name, **fields)
    config.batch_size = 32
    config.num_steps = 3
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 1e-3
    config.pictures = False
    workdir = tmp_path / name
    train_and_evaluate(config, workdir)
    return workdir


@pytest.mark.parametrize('pool', ['token', 'gap', 'map'])
def test_vit_pictures_and_maps(tmp_path, digits_dir, pool):
    workdir = tiny_run(tmp_path, digits_dir, 'vit_ti16', pool=pool, **TINY_VIT)
    written = show_attention.show_attention(workdir, num_images=3)
    assert sorted(p.name for p in written) == [
        'vit_attention_heads.png',
        'vit_attention_rollout.png',
    ]
    for path in written:
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    from experiments.analysis.runs import load_run

    run = load_run(workdir)
    images, _ = show_attention.test_images(run, 3)
    _, intermediates = show_attention.sown_attention(run, images)
    heads, rolled = show_attention.vit_query_maps(run.model, intermediates)
    assert heads.shape == (3, 2, 16) and rolled.shape == (3, 16)  # 8x8 digits, 2x2 patches
    last = intermediates['encoderblock_1']['attention']['attention_weights'][0]
    if pool == 'token':
        np.testing.assert_allclose(heads, last[:, :, 0, 1:])
        assert np.all(heads.sum(-1) <= 1.0 + 1e-5)  # the rest went to the class token itself
    elif pool == 'gap':
        np.testing.assert_allclose(heads.sum(-1), 1.0, atol=1e-5)
    else:
        np.testing.assert_allclose(rolled.sum(-1), 1.0, atol=1e-5)


def test_grid_shape_and_unsupported_family(tmp_path, digits_dir):
    assert show_attention.grid_shape(12, 6, 8) == (3, 4)
    with pytest.raises(ValueError, match='do not tile'):
        show_attention.grid_shape(7, 8, 8)
    workdir = tiny_run(tmp_path, digits_dir, 'mlp', depth=1, width=8)
    with pytest.raises(ValueError, match="family 'mlp'.*'vit' and 'swin'"):
        show_attention.show_attention(workdir)


def test_swin_pictures_and_token_map(tmp_path, digits_dir):
    workdir = tiny_run(
        tmp_path,
        digits_dir,
        'swin_t',
        patch_size=1,
        window_size=4,
        embed_dim=8,
        depths=(2, 2),
        num_heads=(1, 2),
        drop_path_rate=0.0,
    )
    written = show_attention.show_attention(workdir, num_images=2)
    assert sorted(p.name for p in written) == ['swin_attention.png', 'swin_windows.png']

    from experiments.analysis.runs import load_run

    run = load_run(workdir)
    assert show_attention.swin_stage_geometry(run.model, 8, 8) == [(8, 8, 4, 2), (4, 4, 4, 0)]
    images, _ = show_attention.test_images(run, 2)
    _, intermediates = show_attention.sown_attention(run, images)
    regular, shifted = show_attention.swin_block_weights(intermediates, 0, 2)
    assert regular.shape == (2 * 4, 1, 16, 16)
    # Token (3, 3) attends within its 4x4 window [0:4, 0:4] in the regular block ...
    token_map = show_attention.swin_token_attention(regular[:4], 8, 8, 4, 0, (3, 3))
    assert token_map[:4, :4].sum() == pytest.approx(1.0, abs=1e-5) and token_map[4:].sum() == 0
    np.testing.assert_allclose(token_map[:4, :4].ravel(), regular[0].mean(0)[15], atol=1e-6)
    # ... and over rows/cols 2..5 in the shifted block (rolled window 0, no wrapped regions).
    token_map = show_attention.swin_token_attention(shifted[:4], 8, 8, 4, 2, (3, 3))
    assert token_map[2:6, 2:6].sum() == pytest.approx(1.0, abs=1e-5)
    assert np.count_nonzero(token_map[2:6, 2:6]) == 16
    # A token by the wrapped corner sees only its own region of the shifted window.
    corner = show_attention.swin_token_attention(shifted[:4], 8, 8, 4, 2, (0, 0))
    assert set(zip(*np.nonzero(corner))) == {(0, 0), (0, 1), (1, 0), (1, 1)}

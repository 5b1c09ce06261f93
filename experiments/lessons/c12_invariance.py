"""Claim 12: self-attention is global while a convolution is local; invariance and
equivariance of MLP, CNN, ViT, Swin and a p4 group-equivariant CNN (P4-CNN).

1. Global vs local: at initialisation, the gradient of one output position of one layer with
   respect to its whole input grid — a 3x3 conv reaches 9 positions, a self-attention layer
   every position.
2. Invariance: an MLP, a CNN (global-average-pooling head), a ViT (learned position
   embeddings), a Swin (shifted windows, relative position bias) and a P4-CNN (the CNN's
   layout from p4 group convolutions with a rotation pool, nets/models/p4cnn.py, widths halved
   to about the CNN's parameters), small and briefly trained through the project's trainer,
   then tested on the test images translated by growing numbers of pixels (each image one of
   the four directions) and rotated by growing angles (either sense), with data/augment's
   bilinear warp (black fill; a turn by 90° about the image centre is an exact permutation of
   the pixels).
3. Equivariance: ||f(shift(x)) - shift(f(x))|| / ||f(x)|| for each model's last spatial
   feature map (the CNN's last conv, the ViT's last token grid, the Swin's last stage),
   shifting by a multiple of every map's stride, so that a perfectly equivariant map scores
   0. The test images sit centred on a black canvas twice their size (so the shifted digit
   stays whole; every model here takes the larger input, the ViT resizing its learned
   position table), and the map cells within a margin of the border, where a conv's zero
   padding rather than the content decides, are left out. The MLP has no spatial map.
4. Rotation equivariance: ||f(R x) - R f(x)|| / ||f(x)|| for an exact quarter turn R of the
   test images (np.rot90), for the CNN's and the P4-CNN's last map; for the P4-CNN R also
   shifts the orientations cyclically (nets.layers.group_conv.rotate_p4), as its layers
   promise.

    python -m experiments.lessons.report --workdir=workdirs/lessons --lessons=12 --scale=full

Hardware: the 2-core x86-64 CPU, one XLA device. Time: 4.5 min (a machine shared with
other jobs, load ~7; 160 s before the P4-CNN joined on a quieter one).
Expected (measured, mnist5k, 600 steps of 32): one 3x3 conv output depends on 9 of 196
positions, one attention output on all. Clean test accuracy MLP 93.6%, CNN 95.4%, ViT 74.2%,
Swin 33.8%, P4-CNN 85.5% (the patch-2 Swin and the P4-CNN learn slower at this budget);
accuracy at 8 px shifts 8.5%, 77.7%, 29.7%, 22.8%, 55.8% (kept on average over 2-8 px: 0.28,
0.88, 0.53, 0.75, 0.83); at 90° 13%, 16%, 10%, 19% and the P4-CNN's 85.5%, its clean
accuracy (45°: 43%). Equivariance error at a 4 px shift: CNN 0.000, ViT 0.151, Swin 0.438,
P4-CNN 0.000; at a quarter turn: CNN 1.16, P4-CNN 9e-7. Verdict: supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.analysis.warped_accuracy import affine_matrices, warped_accuracy_fn
from experiments.lessons import (
    Finding,
    Verdict,
    fresh_runs_dir,
    markdown_table,
    save_figure,
    train_run,
    verdict_of_parts,
)
from nets.layers.group_conv import rotate_image, rotate_p4

NUMBER = 12
TITLE = 'Global vs local; invariance and equivariance'
CLAIM = (
    'Self-attention is global while a conv is local; CNNs are (approximately) '
    'translation-invariant and their feature maps translation-equivariant; none of the '
    'plain models is rotation-invariant, while a p4 group-equivariant CNN is invariant to '
    'quarter turns by construction.'
)

# "More translation-robust": the CNN keeps, averaged over the non-zero shifts, at least 5
# points more of its clean accuracy (as a fraction) than the MLP — beyond test-set noise.
MIN_ROBUSTNESS_GAIN = 0.05
# "More equivariant": the conv map's relative equivariance error is at most half the ViT's.
MAX_EQUIVARIANCE_RATIO = 0.5
# "Not rotation-invariant": at the largest angle a model keeps under 80% of its clean accuracy.
ROTATION_KEEPS_BELOW = 0.8
# Models equivariant to quarter turns by construction (excluded from the line above).
ROTATION_EQUIVARIANT = ('p4cnn',)
# "Invariant to quarter turns": the P4-CNN keeps at least 99% of its clean accuracy at 90
# degrees (its logits are those of the unturned image up to float rounding, which can only flip
# a near tie), and its map's rotation-equivariance error is float32 rounding (<= 1e-4) while
# the plain CNN's is at least 0.1.
ROTATION_KEEPS_ABOVE = 0.99
ROTATION_EQUIVARIANCE_TOLERANCE = 1e-4
PLAIN_ROTATION_ERROR_MIN = 0.1

SETTINGS = {
    # Batches of 32: these small models gain more from more updates than from bigger batches.
    'full': dict(
        dataset='mnist5k',
        steps=600,
        batch=32,
        lr=3e-3,
        shifts=(0, 2, 4, 6, 8),
        angles=(0, 15, 30, 45, 60, 90),
        equivariance_shift=4,
        equivariance_margin=16,
        grid=14,
        width=16,
        models={
            'mlp': ('mlp', dict(depth=2, width=256)),
            'cnn': ('cnn', dict(channels=(16, 32, 32), convs_per_stage=1)),
            'vit': (
                'vit_ti16',
                dict(patch_size=4, hidden_size=32, depth=2, num_heads=4, mlp_dim=64, pool='gap'),
            ),
            'swin': (
                'swin_t',
                dict(
                    patch_size=2,
                    embed_dim=16,
                    depths=(2, 2),
                    num_heads=(2, 4),
                    window_size=7,
                    drop_path_rate=0.0,
                ),
            ),
            'p4cnn': ('p4cnn', dict(channels=(8, 16, 16), convs_per_stage=1)),
        },
    ),
    # Tiny (tests): no Swin (judge() reads whichever models are there), one-stage CNN.
    'tiny': dict(
        dataset='digits',
        steps=12,
        batch=32,
        lr=3e-3,
        shifts=(0, 1, 2),
        angles=(0, 45, 90),
        equivariance_shift=2,
        equivariance_margin=4,
        grid=6,
        width=8,
        models={
            'mlp': ('mlp', dict(depth=1, width=16)),
            'cnn': ('cnn', dict(channels=(4,), convs_per_stage=1)),
            'vit': (
                'vit_ti16',
                dict(patch_size=2, hidden_size=8, depth=1, num_heads=2, mlp_dim=16, pool='gap'),
            ),
            'p4cnn': ('p4cnn', dict(channels=(2,), convs_per_stage=1)),
        },
    ),
}


def feature_map(name: str, fields: dict[str, Any]) -> tuple[str, int]:
    """(submodule whose output is the model's last spatial map, that map's stride in pixels)."""
    if name in ('cnn', 'p4cnn'):
        stages = len(fields['channels'])
        return f'stage{stages - 1}_conv{fields["convs_per_stage"] - 1}', 2 ** (stages - 1)
    if name == 'vit':
        return f'encoderblock_{fields["depth"] - 1}', fields['patch_size']
    stages = len(fields['depths'])
    return (
        f'stage{stages - 1}_block{fields["depths"][-1] - 1}',
        fields['patch_size'] * 2 ** (stages - 1),
    )


# --------------------------------------------------------------------------- global vs local


def one_layer_fields(grid: int, width: int) -> dict[str, Any]:
    """Input positions that one output position depends on, after one 3x3 conv and after one
    self-attention layer over the same (grid x grid, width) map, at initialisation."""
    import flax.linen as nn

    from nets.layers.attention import MultiHeadAttention

    x = jax.random.normal(jax.random.key(0), (1, grid, grid, width))
    centre = grid // 2
    conv, attention = nn.Conv(width, (3, 3), padding='SAME'), MultiHeadAttention(num_heads=2)
    conv_variables = conv.init(jax.random.key(1), x)
    attention_variables = attention.init(jax.random.key(1), x.reshape(1, grid * grid, width))
    layers = {
        'conv': lambda y: conv.apply(conv_variables, y),
        'attention': lambda y: attention.apply(
            attention_variables, y.reshape(1, grid * grid, width)
        ).reshape(y.shape),
    }
    fields = {}
    for name, layer in layers.items():
        reached = jax.jit(jax.grad(lambda y, layer=layer: jnp.sum(layer(y)[0, centre, centre])))(x)
        support = np.asarray(jnp.abs(reached[0]).sum(-1) > 0)
        fields[name] = {
            'positions': int(support.sum()),
            'fraction': float(support.mean()),
            'map': support.astype(int).tolist(),
        }
    return fields


# --------------------------------------------------------------------------- trained models


def make_config(setting: dict, name: str, data_dir: str | None):
    from train.config import default_config, model_config

    registered, fields = setting['models'][name]
    config = default_config()
    config.dataset.name = setting['dataset']
    config.dataset.data_dir = data_dir or ''
    config.model = model_config(registered, **fields)
    config.batch_size = setting['batch']
    config.eval_batch_size = 200
    config.num_steps = setting['steps']
    config.log_every_steps = config.eval_every_steps = setting['steps']
    config.checkpoint_every_steps = setting['steps']
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = setting['lr']
    return config


def transform_parameters(
    kind: str, amount: float, count: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (dx, dy, degrees): a translation by `amount` pixels in one of the four
    directions, or a rotation by `amount` degrees in either sense, drawn per image."""
    rng = np.random.default_rng(seed)
    zeros = np.zeros(count, np.float32)
    if kind == 'rotate':
        return zeros, zeros, (amount * rng.choice([-1.0, 1.0], count)).astype(np.float32)
    directions = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)], np.float32)[rng.integers(0, 4, count)]
    return amount * directions[:, 0], amount * directions[:, 1], zeros


def feature_fn(trained: Any, module: str):
    """Jitted: images -> the output map of `module` ((N, h, w, C), (N, h, w, 4, C) for p4 maps;
    a ViT's (N, h*w, C) tokens as their (N, h, w, C) grid)."""

    def features(x: jax.Array) -> jax.Array:
        _, state = trained.model.apply(
            trained.variables,
            trained.task.standardise(x),
            mutable=['intermediates'],
            capture_intermediates=lambda m, method: m.name == module and method == '__call__',
        )
        out = state['intermediates'][module]['__call__'][0]
        if out.ndim == 3:  # ViT tokens (N, h*w, C) -> their grid
            side = int(round(out.shape[1] ** 0.5))
            out = out.reshape(out.shape[0], side, side, out.shape[-1])
        return out

    return jax.jit(features)


def rotation_equivariance_error(trained: Any, images: jax.Array, module: str, p4: bool) -> float:
    """||f(R x) - R f(x)|| / ||f(x)|| for R an exact quarter turn (np.rot90 of the images and of
    the maps; with `p4` also the cyclic shift of the orientations, `rotate_p4`)."""
    features = feature_fn(trained, module)
    reference = features(images)
    expected = rotate_p4(reference) if p4 else rotate_image(reference)
    turned = features(rotate_image(images))
    return float(jnp.linalg.norm(turned - expected) / jnp.linalg.norm(expected))


def equivariance_error(
    trained: Any, images: jax.Array, module: str, stride: int, shift: int, margin: int
) -> float:
    """||f(shift(x)) - shift(f(x))|| / ||f(x)|| over the interior of `module`'s (N, h, w, C)
    output map, averaged over a horizontal and a vertical shift of `shift` pixels.

    The images are centred on a black canvas twice their size, so the shifted content stays
    far from the borders, and the map cells within `margin` pixels of a border (where a conv's
    zero padding, not the content, decides) are left out of both maps."""
    pad = images.shape[1] // 2
    canvas = np.pad(np.asarray(images), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    features = feature_fn(trained, module)
    reference = features(canvas)
    cells = -(-margin // stride)
    inner = (slice(None), slice(cells, -cells), slice(cells, -cells))
    errors = []
    for axis in (1, 2):
        # The content keeps clear of the canvas edge, so a circular shift is a translation.
        moved = features(np.roll(canvas, shift, axis=axis))[inner]
        expected = jnp.roll(reference, shift // stride, axis=axis)[inner]
        errors.append(float(jnp.linalg.norm(moved - expected) / jnp.linalg.norm(expected)))
    return float(np.mean(errors))


# --------------------------------------------------------------------------- the lesson


def judge(numbers: dict) -> Verdict:
    fields, robust = numbers['one_layer'], numbers['translation_robustness']
    equivariance, rotate = numbers['equivariance'], numbers['rotate']
    kept = {m: rotate[m][-1] / max(rotate[m][0], 1e-9) for m in rotate}
    angle = numbers['angles'][-1]
    plain = {m: k for m, k in kept.items() if m not in ROTATION_EQUIVARIANT}
    parts = {
        'one attention layer reaches every position, one 3x3 conv 9': fields['attention'][
            'fraction'
        ]
        == 1.0
        and fields['conv']['positions'] == 9,
        f'CNN keeps >= {MIN_ROBUSTNESS_GAIN:g} more of its accuracy under shifts than the MLP': (
            robust['cnn'] - robust['mlp'] >= MIN_ROBUSTNESS_GAIN
        ),
        f"conv map equivariance error <= {MAX_EQUIVARIANCE_RATIO:g}x the ViT token map's": (
            equivariance['cnn'] <= MAX_EQUIVARIANCE_RATIO * equivariance['vit']
        ),
        f'every plain model keeps < {ROTATION_KEEPS_BELOW:.0%} of its accuracy at {angle} '
        'degrees': all(k < ROTATION_KEEPS_BELOW for k in plain.values()),
    }
    details = (
        f'one layer reaches {fields["conv"]["positions"]} positions (conv) vs '
        f'{fields["attention"]["fraction"]:.0%} of the map (attention); accuracy kept under '
        f'shifts: ' + ', '.join(f'{m} {robust[m]:.2f}' for m in robust) + '; at '
        f'{angle} degrees: '
        + ', '.join(f'{m} {kept[m]:.2f}' for m in kept)
        + '; equivariance error: '
        + ', '.join(f'{m} {e:.3f}' for m, e in equivariance.items())
    )
    if 'p4cnn' in kept:
        turned = numbers['rotation_equivariance']
        parts[f'P4-CNN keeps >= {ROTATION_KEEPS_ABOVE:.0%} of its accuracy at {angle} degrees'] = (
            kept['p4cnn'] >= ROTATION_KEEPS_ABOVE
        )
        parts[
            f'P4-CNN map rotation-equivariant (error <= {ROTATION_EQUIVARIANCE_TOLERANCE:g}), '
            f"the CNN's not (>= {PLAIN_ROTATION_ERROR_MIN:g})"
        ] = (
            turned['p4cnn'] <= ROTATION_EQUIVARIANCE_TOLERANCE
            and turned['cnn'] >= PLAIN_ROTATION_ERROR_MIN
        )
        details += '; quarter-turn equivariance error: ' + ', '.join(
            f'{m} {e:.1e}' for m, e in turned.items()
        )
    return verdict_of_parts(parts, details)


def plot(numbers: dict, out: Path) -> Path:
    from train.pictures import plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for name in numbers['translate']:
        axes[0].plot(numbers['shifts'], numbers['translate'][name], 'o-', label=name)
        axes[1].plot(numbers['angles'], numbers['rotate'][name], 'o-', label=name)
    axes[0].set(
        xlabel='translation (pixels)', ylabel='test accuracy', title='translated test images'
    )
    axes[1].set(xlabel='rotation (degrees)', ylabel='test accuracy', title='rotated test images')
    names = list(numbers['equivariance'])
    axes[2].bar(names, [numbers['equivariance'][n] for n in names], color='tab:purple')
    axes[2].set(
        ylabel='||f(shift x) - shift f(x)|| / ||f(x)||',
        title=f'equivariance, shift {numbers["equivariance_shift"]} px',
    )
    conv = np.asarray(numbers['one_layer']['conv']['map'], float)
    attention = np.asarray(numbers['one_layer']['attention']['map'], float)
    gap = np.full((conv.shape[0], 1), np.nan)
    axes[3].imshow(np.concatenate([conv, gap, attention], 1), cmap='Blues', vmin=0, vmax=1)
    axes[3].set(
        title='inputs one centre output depends on:\n3x3 conv (left), attention (right)',
        xticks=[],
        yticks=[],
    )
    return save_figure(fig, out, axes[:2])


def run(workdir: Path, scale: str, data_dir: str | None) -> Finding:
    from experiments.analysis.runs import load_run
    from experiments.lessons.c08_residual import load_arrays

    setting = SETTINGS[scale]
    runs = fresh_runs_dir(workdir)
    test = load_arrays(setting['dataset'], 'test', data_dir)
    images = jnp.asarray(test['image'], jnp.float32) / 255.0
    labels = jnp.asarray(test['label'])
    numbers: dict[str, Any] = {
        'dataset': setting['dataset'],
        'steps': setting['steps'],
        'shifts': list(setting['shifts']),
        'angles': list(setting['angles']),
        'equivariance_shift': setting['equivariance_shift'],
        'one_layer': one_layer_fields(setting['grid'], setting['width']),
        'params': {},
        'translate': {},
        'rotate': {},
        'equivariance': {},
        'rotation_equivariance': {},
    }
    shift = setting['equivariance_shift']
    for name in setting['models']:
        result = train_run(make_config(setting, name, data_dir), runs / name)
        numbers['params'][name] = result.summary['num_params']
        trained = load_run(runs / name)
        accuracy = warped_accuracy_fn(trained)
        for kind, amounts in (('translate', setting['shifts']), ('rotate', setting['angles'])):
            numbers[kind][name] = []
            for amount in amounts:
                dx, dy, degrees = transform_parameters(kind, amount, len(labels))
                matrices = affine_matrices(degrees, dx, dy)
                numbers[kind][name].append(accuracy(images, labels, matrices))
        if name != 'mlp':
            module, stride = feature_map(name, setting['models'][name][1])
            numbers['equivariance'][name] = equivariance_error(
                trained, images[:256], module, stride, shift, setting['equivariance_margin']
            )
        if name in ('cnn', 'p4cnn'):
            numbers['rotation_equivariance'][name] = rotation_equivariance_error(
                trained, images[:256], module, p4=name == 'p4cnn'
            )
    numbers['translation_robustness'] = {
        name: float(np.mean(acc[1:]) / max(acc[0], 1e-9))
        for name, acc in numbers['translate'].items()
    }
    plot(numbers, Path(workdir) / 'invariance.png')
    rows = [
        [
            name,
            numbers['params'][name],
            numbers['translate'][name][0],
            *numbers['translate'][name][1:],
            *numbers['rotate'][name][1:],
            numbers['equivariance'].get(name, '-'),
            numbers['rotation_equivariance'].get(name, '-'),
        ]
        for name in setting['models']
    ]
    table = markdown_table(
        [
            'model',
            'params',
            'clean accuracy',
            *[f'shift {s}px' for s in setting['shifts'][1:]],
            *[f'rotate {a}°' for a in setting['angles'][1:]],
            'equivariance error',
            'quarter-turn equivariance error',
        ],
        rows,
    )
    return Finding(NUMBER, TITLE, CLAIM, numbers, table, ['invariance.png'], judge(numbers))

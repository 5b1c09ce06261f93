"""On-device data augmentation: pure JAX ops, composed per example under vmap and jit.

    from data import augment
    ops = [{'op': 'rotate', 'degrees': 15}, {'op': 'translate', 'max_pixels': 3},
           {'op': 'flip_lr'}, {'op': 'brightness'}, {'op': 'mixup', 'alpha': 0.2}]
    augment.check_ops(ops)                     # at start-up: plain Python, no compilation
    augmenter = augment.make_augmenter(ops, num_classes=10)
    # in the jitted step:
    images, label_probs = augmenter(jax.random.fold_in(rng, step), images, labels)

`OPS` maps every op name to its `OpSpec` (parameters with defaults and valid ranges; print
`describe_ops()` for the table). An `OpSpec` is also the op as a pure function of
(key, image, **params): `augment.rotate(key, image, degrees=30)` on one (H, W, C) image,
`augment.mixup(key, images, label_probs, alpha=0.4)` on a batch.

Modules, by responsibility:
  spec.py         Param / OpSpec: declared parameters, checking, the op-function protocol
  geometry.py     geometric ops as 3x3 matrices, the coordinate convention, the one warp
  photometric.py  brightness, contrast, saturation, hue, colour jitter, noise, blur
  occlusion.py    cutout, random erasing
  mixing.py       mixup, cutmix (with label mixing)
  color.py        RandAugment's histogram ops (autocontrast, equalize, posterize, solarize,
                  sharpness) and AlexNet's PCA lighting
  randaugment.py  the RandAugment policy built from the ops above
  affine.py       3x3 affine matrices and the one bilinear warp
  pipeline.py     OPS, check_ops, make_augmenter, Augmenter (stages, keys, fused warps)
"""

from data.augment.affine import (
    FILL_MODES,
    rotation_matrix,
    scale_matrix,
    shear_matrix,
    translation_matrix,
    warp,
)
from data.augment.color import pca_lighting
from data.augment.geometry import (
    center_crop,
    flip_lr,
    flip_ud,
    random_resized_crop,
    rotate,
    scale,
    shear,
    stretch,
    translate,
)
from data.augment.mixing import cutmix, mixup
from data.augment.occlusion import cutout, random_erasing
from data.augment.photometric import (
    brightness,
    color_jitter,
    contrast,
    gaussian_blur,
    gaussian_noise,
    hue,
    saturation,
)
from data.augment.pipeline import OPS, Augmenter, check_ops, describe_ops, make_augmenter, plan
from data.augment.randaugment import randaugment
from data.augment.spec import KINDS, OpSpec, Param

__all__ = [
    'pca_lighting',
    'FILL_MODES',
    'KINDS',
    'OPS',
    'Augmenter',
    'OpSpec',
    'Param',
    'brightness',
    'center_crop',
    'check_ops',
    'color_jitter',
    'contrast',
    'cutmix',
    'cutout',
    'describe_ops',
    'flip_lr',
    'flip_ud',
    'gaussian_blur',
    'gaussian_noise',
    'hue',
    'make_augmenter',
    'mixup',
    'plan',
    'random_erasing',
    'random_resized_crop',
    'randaugment',
    'rotate',
    'rotation_matrix',
    'saturation',
    'scale',
    'scale_matrix',
    'shear',
    'shear_matrix',
    'stretch',
    'translate',
    'translation_matrix',
    'warp',
]

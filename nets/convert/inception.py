"""torchvision's GoogLeNet and Inception v3, and timm's Inception v3, into
`nets.models.inception`.

Every torchvision `BasicConv2d` (conv, bn) becomes a `ConvNormAct` (conv, norm) of the same
name in the same block: GoogLeNet's `inception3a.branch2.1` is `inception3a/branch2`, Inception
v3's `Mixed_5b.branch5x5_2` is `mixed_5b/branch5x5_2`. timm's `InceptionV3` is torchvision's
layout under the same names (its `ConvNormAct` keeps `conv` and `bn`), so one mapping serves
both. What the tensors cannot say is set from the source: BatchNorm epsilon 1e-3 (`bn_epsilon`)
for both; torchvision's `transform_input=True`, the setting of its pretrained weights (a model
trained from `googlenet()` / `inception_v3()` without weights has it off: convert with the field
`transform_input=False`), while timm has no such step (`transform_input=False`). The auxiliary
heads (`aux1`, `aux2`, `AuxLogits`; of timm's weights only `inception_v3.tv_in1k` has one) run
only in training; their tensors are skipped, the model is converted with `aux_logits=False`,
and the notes say so. `width_multiplier` is read from the first conv, so narrowed models
convert too.
"""

from __future__ import annotations

import re
from typing import Any

from nets.convert.core import Converted
from nets.convert.tensors import FlaxTree, Tensors

BN_EPSILON = 1e-3  # torchvision's BasicConv2d and timm's InceptionV3 (norm_eps)
MODELS = {'torchvision': ('googlenet', 'inception_v3'), 'timm': ('inception_v3',)}
_IMAGE_SIZES = {'googlenet': 224, 'inception_v3': 299}

# GoogLeNet's Inception module: torchvision Sequential member -> nets branch.
_GOOGLENET_BRANCHES = {
    'branch1': 'branch1',
    'branch2.0': 'branch2_reduce',
    'branch2.1': 'branch2',
    'branch3.0': 'branch3_reduce',
    'branch3.1': 'branch3',
    'branch4.1': 'branch4_proj',
}
_GOOGLENET_BLOCKS = ('3a', '3b', '4a', '4b', '4c', '4d', '4e', '5a', '5b')
_V3_STEM = {
    'Conv2d_1a_3x3': 'conv1a',
    'Conv2d_2a_3x3': 'conv2a',
    'Conv2d_2b_3x3': 'conv2b',
    'Conv2d_3b_1x1': 'conv3b',
    'Conv2d_4a_3x3': 'conv4a',
}
_V3_BLOCKS = ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c')


def _basic_conv(tree: FlaxTree, tensors: Tensors, torch_name: str, path: str) -> None:
    """torchvision's BasicConv2d or timm's ConvNormAct (conv without bias, bn) into ConvNormAct
    `path`."""
    tree.conv(tensors, f'{torch_name}.conv', f'{path}/conv')
    tree.batch_norm(tensors, f'{torch_name}.bn', f'{path}/norm')


def _skip_aux_heads(tensors: Tensors, prefixes: tuple[str, ...]) -> list[str]:
    """Marks the auxiliary heads' tensors as read; returns the heads that were there."""
    found = []
    for prefix in prefixes:
        names = [n for n in tensors.names() if n.startswith(f'{prefix}.')]
        for name in names:
            tensors.take(name)
        if names:
            found.append(prefix)
    return found


def _notes(skipped: list[str], fields: dict[str, Any]) -> list[str]:
    notes = []
    if skipped:
        notes.append(
            f'skipped the auxiliary heads {skipped} (training-time classifiers, no part of '
            'the logits): converted with aux_logits=False'
        )
    if fields['transform_input']:
        notes.append(
            "transform_input=True, torchvision's setting for its pretrained weights (inputs "
            'normalised with the ImageNet mean and std); a model trained without it needs '
            'the field transform_input=False'
        )
    return notes


def inception(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None, source: str
) -> Converted:
    """torchvision GoogLeNet (model 'googlenet') or Inception3 ('inception_v3'), or timm
    InceptionV3 ('inception_v3')."""
    if model not in MODELS[source]:
        raise ValueError(f'{source} has no counterpart of {model!r}; convertible: {MODELS[source]}')
    tree = FlaxTree()
    if model == 'googlenet':
        for name in ('conv1', 'conv2', 'conv3'):
            _basic_conv(tree, tensors, name, f'stem/{name}')
        for block in _GOOGLENET_BLOCKS:
            for torch_branch, branch in _GOOGLENET_BRANCHES.items():
                _basic_conv(
                    tree, tensors, f'inception{block}.{torch_branch}', f'inception{block}/{branch}'
                )
        skipped = _skip_aux_heads(tensors, ('aux1', 'aux2'))
        first_conv, base_width = 'conv1.conv.weight', 64
        inferred: dict[str, Any] = {
            'wide_kernel_size': tensors.shape('inception3a.branch3.1.conv.weight')[-1]
        }
    else:
        for torch_name, name in _V3_STEM.items():
            _basic_conv(tree, tensors, torch_name, f'stem/{name}')
        for block in _V3_BLOCKS:
            pattern = re.compile(rf'Mixed_{block}\.(\w+)\.conv\.weight$')
            branches = sorted({m.group(1) for n in tensors.names() if (m := pattern.match(n))})
            for branch in branches:
                _basic_conv(tree, tensors, f'Mixed_{block}.{branch}', f'mixed_{block}/{branch}')
        skipped = _skip_aux_heads(tensors, ('AuxLogits',))
        first_conv, base_width = 'Conv2d_1a_3x3.conv.weight', 32
        inferred = {}
    tree.dense(tensors, 'fc', 'head')
    inferred.update(
        num_classes=tensors.shape('fc.weight')[0],
        width_multiplier=tensors.shape(first_conv)[0] / base_width,
        stem='imagenet',
        aux_logits=False,
        bn_epsilon=BN_EPSILON,
        transform_input=source == 'torchvision',
    )
    fields = {**inferred, **fields}
    size = image_size or _IMAGE_SIZES[model]
    return Converted(
        model,
        fields,
        tree.params,
        tree.model_state(),
        (size, size, 3),
        notes=_notes(skipped, fields),
    )

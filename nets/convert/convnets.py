"""PyTorch convolutional networks (torchvision and timm names) into `nets.models`.

ResNet (torchvision's and timm's share their names), VGG (torchvision's `classifier.*` or
timm's convolutional `pre_logits` head over the same `features.*`), AlexNet (torchvision),
ConvNeXt (torchvision's `features.*` or timm's `stages.*`). Sizes come from the tensors (widths,
blocks per stage, class count), so any width converts, not only the published ones; PyTorch
flattens (C, H, W) before a classifier and the nets models (H, W, C), so the first fully
connected layer after a pooled grid has its input rows permuted.

timm's VGG head is a ConvMlp: `pre_logits.fc1` a k x k convolution (k = 7) over the last map,
average-pooled up to k x k when smaller, `pre_logits.fc2` a 1x1 convolution, then a global
average pool and `head.fc`. On a map of at most k x k the first conv sees one k x k grid, as
nets' VGG's `fc1` does after its adaptive pool to `pooled_size=k`, so the two agree; on a larger
map (images of 256 px and more at k = 7) timm slides the conv and averages its outputs, which
nets' VGG does not do, and the conversion refuses.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from nets.convert.core import Converted
from nets.convert.tensors import FlaxTree, Tensors, dense_kernel
from nets.layers.blocks import window_output_size

DEFAULT_IMAGE_SIZE = 224
BATCH_NORM_IGNORED = (r'num_batches_tracked$',)


def _image(image_size: int | None) -> tuple[int, int, int]:
    size = image_size or DEFAULT_IMAGE_SIZE
    return (size, size, 3)


def _grid_dense(
    weight: np.ndarray, bias: np.ndarray, name: str, path: str, channels: int, tree: FlaxTree
) -> int:
    """The (out, C*g*g) weight of checkpoint layer `name`, reading a flattened (C, g, g) map, as
    a Dense `path` reading a (g, g, C) one; returns g."""
    out, inputs = weight.shape
    grid = math.isqrt(inputs // channels)
    if grid * grid * channels != inputs:
        raise ValueError(
            f'{name} reads {inputs} features, not a square grid of {channels} channels'
        )
    weight = weight.reshape(out, channels, grid, grid).transpose(0, 2, 3, 1).reshape(out, inputs)
    tree.param(f'{path}/kernel', dense_kernel(weight))
    tree.param(f'{path}/bias', bias)
    return grid


def resnet(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """torchvision/timm ResNet (conv1, bn1, layerN.M.convK/bnK, downsample.0/1, fc)."""
    stem_window = tensors.shape('conv1.weight')[-1]
    if stem_window != 7:
        raise ValueError(f'conv1 is {stem_window}x{stem_window}; the ResNet stem port needs 7x7')
    num_stages = tensors.count(r'layer(\d+)\.')
    stage_sizes = tuple(tensors.count(rf'layer{s + 1}\.(\d+)\.') for s in range(num_stages))
    bottleneck = 'layer1.0.conv3.weight' in tensors
    tree = FlaxTree()
    tree.conv(tensors, 'conv1', 'stem/conv')
    tree.batch_norm(tensors, 'bn1', 'stem/norm')
    for stage, blocks in enumerate(stage_sizes):
        for i in range(blocks):
            prefix, path = f'layer{stage + 1}.{i}', f'stage{stage}_block{i}'
            for k in (1, 2, 3) if bottleneck else (1, 2):
                tree.conv(tensors, f'{prefix}.conv{k}', f'{path}/conv{k}/conv')
                tree.batch_norm(tensors, f'{prefix}.bn{k}', f'{path}/conv{k}/norm')
            if f'{prefix}.downsample.0.weight' in tensors:
                tree.conv(tensors, f'{prefix}.downsample.0', f'{path}/shortcut/proj/conv')
                tree.batch_norm(tensors, f'{prefix}.downsample.1', f'{path}/shortcut/proj/norm')
    tree.dense(tensors, 'fc', 'head')
    inferred = dict(
        num_classes=tensors.shape('fc.weight')[0],
        stage_sizes=stage_sizes,
        block='bottleneck' if bottleneck else 'basic',
        width=tensors.shape('conv1.weight')[0],
        stem='imagenet',
        shortcut='projection',
    )
    return Converted(
        model, {**inferred, **fields}, tree.params, tree.model_state(), _image(image_size)
    )


def _feature_layers(tensors: Tensors) -> list[int]:
    """Indices of the convolutions in a torchvision `features` Sequential."""
    indices = {int(n.split('.')[1]) for n in tensors.names() if n.startswith('features.')}
    return sorted(i for i in indices if len(tensors.shape(f'features.{i}.weight')) == 4)


def _vgg_stages(tensors: Tensors) -> tuple[list[list[int]], bool]:
    """The conv indices of a `features` Sequential grouped by stage, and whether BatchNorm follows
    each conv (torchvision's and timm's VGG build the same Sequential)."""
    convs = _feature_layers(tensors)
    batch_norm = f'features.{convs[0] + 1}.running_mean' in tensors
    # A conv is followed by [BatchNorm,] ReLU; a stage ends with a max pool, one index more.
    step = 3 if batch_norm else 2
    stages: list[list[int]] = [[convs[0]]]
    for previous, index in zip(convs, convs[1:]):
        if index - previous == step:
            stages[-1].append(index)
        else:
            stages.append([index])
    return stages, batch_norm


def _timm_vgg_head(
    tensors: Tensors, tree: FlaxTree, channels: int, image_size: int
) -> tuple[int, list[str]]:
    """timm's ConvMlp head (see the module docstring) as fc1, fc2; returns pooled_size, notes."""
    fc1 = tensors.take('pre_logits.fc1.weight')
    fc2 = tensors.take('pre_logits.fc2.weight')
    if fc2.shape[0] != fc1.shape[0]:
        raise ValueError(
            f'timm VGG pre_logits widens {fc1.shape[0]} -> {fc2.shape[0]} (mlp_ratio != 1); '
            'nets VGG has one fc_width for fc1 and fc2'
        )
    window = fc1.shape[-1]
    last_map = image_size
    for _ in range(5):  # the five 2x2/2 max pools
        last_map = window_output_size(last_map, 2, 2)
    if last_map > window:
        raise ValueError(
            f'at image_size {image_size} timm VGG slides its {window}x{window} pre_logits.fc1 '
            f'over a {last_map}x{last_map} map and averages, which nets VGG (fc1 after an '
            f'adaptive pool to {window}x{window}) does not; give an image_size whose last map is '
            f'at most {window}x{window} (below {32 * (window + 1)} px)'
        )
    bias = tensors.take('pre_logits.fc1.bias')
    flat = fc1.reshape(fc1.shape[0], -1)  # (out, C, k, k): a Linear over the flattened k x k map
    pooled = _grid_dense(flat, bias, 'pre_logits.fc1', 'fc1', channels, tree)
    tree.param('fc2/kernel', dense_kernel(fc2.reshape(fc2.shape[:2])))
    tree.param('fc2/bias', tensors.take('pre_logits.fc2.bias'))
    tree.dense(tensors, 'head.fc', 'head')
    note = (
        f"timm's ConvMlp head ({window}x{window} and 1x1 convs) as fc1/fc2: exact while the last "
        f'map is at most {window}x{window} (images below {32 * (window + 1)} px)'
    )
    return pooled, [note]


def vgg(
    tensors: Tensors,
    model: str,
    fields: dict[str, Any],
    image_size: int | None,
    source: str,
) -> Converted:
    """torchvision or timm VGG: features.N convs (BatchNorm after each in the _bn variants), then
    torchvision's classifier.0/3/6 or timm's pre_logits.fc1/fc2 and head.fc."""
    stages, batch_norm = _vgg_stages(tensors)
    tree = FlaxTree()
    for stage, indices in enumerate(stages):
        for i, index in enumerate(indices):
            tree.conv(tensors, f'features.{index}', f'stage{stage}_conv{i}/conv')
            if batch_norm:
                tree.batch_norm(tensors, f'features.{index + 1}', f'stage{stage}_conv{i}/norm')
    channels = tensors.shape(f'features.{stages[-1][-1]}.weight')[0]
    image = _image(image_size)
    notes: list[str] = []
    if source == 'timm':
        pooled, notes = _timm_vgg_head(tensors, tree, channels, image[0])
        fc_width, head = tensors.shape('pre_logits.fc1.weight')[0], 'head.fc'
    else:
        weight, bias = tensors.take('classifier.0.weight'), tensors.take('classifier.0.bias')
        pooled = _grid_dense(weight, bias, 'classifier.0', 'fc1', channels, tree)
        tree.dense(tensors, 'classifier.3', 'fc2')
        tree.dense(tensors, 'classifier.6', 'head')
        fc_width, head = weight.shape[0], 'classifier.6'
    inferred = dict(
        num_classes=tensors.shape(f'{head}.weight')[0],
        stage_convs=tuple(len(s) for s in stages),
        batch_norm=batch_norm,
        width=tensors.shape(f'features.{stages[0][0]}.weight')[0],
        fc_width=fc_width,
        stem='imagenet',
        pooled_size=pooled,
    )
    return Converted(model, {**inferred, **fields}, tree.params, tree.model_state(), image, notes)


def alexnet(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """torchvision AlexNet (features.0/3/6/8/10, classifier.1/4/6)."""
    convs = _feature_layers(tensors)
    if len(convs) != 5 or tensors.shape(f'features.{convs[0]}.weight')[-1] != 11:
        raise ValueError('AlexNet needs five convolutions in features, the first 11x11')
    tree = FlaxTree()
    for i, index in enumerate(convs):
        tree.conv(tensors, f'features.{index}', f'conv{i + 1}/conv')
    channels = tensors.shape(f'features.{convs[-1]}.weight')[0]
    weight, bias = tensors.take('classifier.1.weight'), tensors.take('classifier.1.bias')
    pooled = _grid_dense(weight, bias, 'classifier.1', 'fc1', channels, tree)
    tree.dense(tensors, 'classifier.4', 'fc2')
    tree.dense(tensors, 'classifier.6', 'head')
    inferred = dict(
        num_classes=tensors.shape('classifier.6.weight')[0],
        width=tensors.shape('features.0.weight')[0],
        fc_width=tensors.shape('classifier.1.weight')[0],
        stem='imagenet',
        pooled_size=pooled,
    )
    return Converted(
        model, {**inferred, **fields}, tree.params, tree.model_state(), _image(image_size)
    )


# ConvNeXt names: torchvision's nested Sequentials and timm's named stages.
_CONVNEXT_NAMES = {
    'torchvision': dict(
        stem='features.0.0',
        stem_norm='features.0.1',
        stage=r'features\.(\d+)\.\d+\.block\.0\.weight',
        block='features.{index}.{i}',
        dwconv='block.0',
        norm='block.2',
        fc1='block.3',
        fc2='block.5',
        layer_scale='layer_scale',
        downsample_norm='features.{index_before}.0',
        downsample='features.{index_before}.1',
        head_norm='classifier.0',
        head='classifier.2',
    ),
    'timm': dict(
        stem='stem.0',
        stem_norm='stem.1',
        stage=r'stages\.(\d+)\.blocks\.\d+\.conv_dw\.weight',
        block='stages.{index}.blocks.{i}',
        dwconv='conv_dw',
        norm='norm',
        fc1='mlp.fc1',
        fc2='mlp.fc2',
        layer_scale='gamma',
        downsample_norm='stages.{index}.downsample.0',
        downsample='stages.{index}.downsample.1',
        head_norm='head.norm',
        head='head.fc',
    ),
}


def convnext(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None, source: str
) -> Converted:
    """torchvision or timm ConvNeXt: patchify stem + LayerNorm, stages of blocks, head."""
    names = _CONVNEXT_NAMES[source]
    stage_indices = sorted(
        {int(m) for n in tensors.names() if (m := _match(names['stage'], n)) is not None}
    )
    tree = FlaxTree()
    tree.conv(tensors, names['stem'], 'stem')
    tree.layer_norm(tensors, names['stem_norm'], 'stem_norm')
    depths, dims = [], []
    for stage, index in enumerate(stage_indices):
        where = dict(index=index, index_before=index - 1)
        if stage > 0:
            tree.layer_norm(
                tensors, names['downsample_norm'].format(**where), f'downsample{stage}_norm'
            )
            tree.conv(tensors, names['downsample'].format(**where), f'downsample{stage}')
        block = names['block'].format(index=index, i='{i}')
        depth = tensors.count(rf'{_escape(block.split("{i}")[0])}(\d+)\.')
        for i in range(depth):
            prefix, path = block.format(i=i), f'stage{stage}_block{i}'
            tree.conv(tensors, f'{prefix}.{names["dwconv"]}', f'{path}/dwconv')
            tree.layer_norm(tensors, f'{prefix}.{names["norm"]}', f'{path}/norm')
            tree.dense(tensors, f'{prefix}.{names["fc1"]}', f'{path}/pwconv1')
            tree.dense(tensors, f'{prefix}.{names["fc2"]}', f'{path}/pwconv2')
            scale = tensors.take(f'{prefix}.{names["layer_scale"]}')
            tree.param(f'{path}/layer_scale', scale.reshape(-1))
        depths.append(depth)
        dims.append(tensors.shape(f'{block.format(i=0)}.{names["dwconv"]}.weight')[0])
    tree.layer_norm(tensors, names['head_norm'], 'head_norm')
    tree.dense(tensors, names['head'], 'head')
    stem_window = tensors.shape(f'{names["stem"]}.weight')[-1]
    stems = {4: 'imagenet', 2: 'small'}
    if stem_window not in stems:
        raise ValueError(f'ConvNeXt stem is {stem_window}x{stem_window}; portable: 4x4, 2x2')
    first = names['block'].format(index=stage_indices[0], i=0)
    inferred = dict(
        num_classes=tensors.shape(f'{names["head"]}.weight')[0],
        depths=tuple(depths),
        dims=tuple(dims),
        stem=stems[stem_window],
        kernel_size=tensors.shape(f'{first}.{names["dwconv"]}.weight')[-1],
        mlp_ratio=tensors.shape(f'{first}.{names["fc1"]}.weight')[0] // dims[0],
    )
    return Converted(
        model, {**inferred, **fields}, tree.params, tree.model_state(), _image(image_size)
    )


def _match(pattern: str, name: str) -> str | None:
    match = re.fullmatch(pattern, name)
    return match.group(1) if match else None


def _escape(prefix: str) -> str:
    return re.escape(prefix)

"""The conversion API behind `nets.convert` (see the package docstring): the source/family
mappings, `convert` and `convert_to_folder`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nets
from nets.convert import convnets, inception, nfnet, recurrent, transformers
from nets.convert.core import Converted, check_fits, save
from nets.convert.tensors import Tensors, read_tensors
from nets.layers.blocks import check_choice

SOURCES = ('torchvision', 'timm', 'big_vision', 'torch')

Mapping = Callable[[Tensors, str, dict[str, Any], int | None], Converted]
MAPPINGS: dict[tuple[str, str], Mapping] = {
    ('torchvision', 'resnet'): convnets.resnet,
    ('timm', 'resnet'): convnets.resnet,
    ('torchvision', 'vgg'): functools.partial(convnets.vgg, source='torchvision'),
    ('timm', 'vgg'): functools.partial(convnets.vgg, source='timm'),
    ('torchvision', 'alexnet'): convnets.alexnet,
    ('torchvision', 'convnext'): functools.partial(convnets.convnext, source='torchvision'),
    ('timm', 'convnext'): functools.partial(convnets.convnext, source='timm'),
    ('torchvision', 'vit'): transformers.torchvision_vit,
    ('timm', 'vit'): transformers.timm_vit,
    ('big_vision', 'vit'): transformers.big_vision_vit,
    ('torchvision', 'swin'): functools.partial(transformers.swin, source='torchvision'),
    ('timm', 'swin'): functools.partial(transformers.swin, source='timm'),
    ('torchvision', 'inception'): functools.partial(inception.inception, source='torchvision'),
    ('timm', 'inception'): functools.partial(inception.inception, source='timm'),
    ('timm', 'nfnet'): nfnet.timm_nfnet,
    ('torch', 'rnn'): recurrent.classifier,
    ('torch', 'language_model'): recurrent.language_model,
}
# Buffers the nets models recompute or do not need (Swin's index and, in checkpoints of the
# original code and older timm, its shifted-window masks).
IGNORED = (r'num_batches_tracked$', r'relative_position_index$', r'\.attn_mask$')


def convertible() -> list[str]:
    """'source:family' pairs that have a mapping."""
    return sorted(f'{source}:{family}' for source, family in MAPPINGS)


def convert(
    source: str,
    model: str,
    checkpoint: str | Path,
    *,
    fields: dict[str, Any] | None = None,
    image_size: int | None = None,
) -> Converted:
    """The checkpoint file's weights as model `model` (a registered name), with `fields`
    overriding what the tensors and the source imply; ValueError naming what does not fit."""
    check_choice('source', source, SOURCES)
    family = nets.model_family(model)
    if (source, family) not in MAPPINGS:
        raise ValueError(
            f'no {source} mapping for {model!r} (family {family!r}); '
            f'convertible source:family pairs: {convertible()}'
        )
    raw = read_tensors(checkpoint)
    if source == 'big_vision':  # big_vision writes 'params/...' when the optimiser state is saved
        params = {k[len('params/') :]: v for k, v in raw.items() if k.startswith('params/')}
        raw = params or raw
    tensors = Tensors(raw, origin=str(checkpoint), ignore=IGNORED)
    converted = MAPPINGS[source, family](tensors, model, dict(fields or {}), image_size)
    tensors.check_all_taken(f'{model} ({family})')
    check_fits(converted)
    return converted


def convert_to_folder(
    source: str,
    model: str,
    checkpoint: str | Path,
    out: str | Path,
    *,
    fields: dict[str, Any] | None = None,
    image_size: int | None = None,
) -> Path:
    """`convert`, then `save` into `out`; returns the folder."""
    converted = convert(source, model, checkpoint, fields=fields, image_size=image_size)
    description = {'source': source, 'checkpoint': str(Path(checkpoint).absolute())}
    return save(converted, out, description)

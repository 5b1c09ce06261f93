"""Converting other frameworks' checkpoints into `nets` models, to evaluate or fine-tune them.

    python -m nets.convert --source=torchvision --model=resnet50 \
        --checkpoint=resnet50.safetensors --out=DIR [--image_size=N] [--field=key=value ...]

`convert(source, model, checkpoint)` reads the file (no download, no torch needed for
.safetensors and .npz), maps its tensors onto the registered model `model` by the family's
mapping, takes the sizes from the tensors (so reduced widths and depths convert too), checks
that every tensor found a place and every parameter of the model got one, and `save` writes the
folder that `--config.init_from=DIR` (fine-tuning) and `train.evaluate --init_from=DIR` load.

Mappings (source: families): torchvision: resnet, vgg, alexnet, convnext, vit, swin; timm:
resnet, convnext, vit; big_vision: vit (.npz, big_vision's and the original ViT's names).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nets
from nets.convert import convnets, transformers
from nets.convert.core import CHECKPOINTS, METADATA_FILE, Converted, check_fits, read_metadata, save
from nets.convert.tensors import Tensors, read_tensors
from nets.layers.blocks import check_choice

SOURCES = ('torchvision', 'timm', 'big_vision')

Mapping = Callable[[Tensors, str, dict[str, Any], int | None], Converted]
MAPPINGS: dict[tuple[str, str], Mapping] = {
    ('torchvision', 'resnet'): convnets.resnet,
    ('timm', 'resnet'): convnets.resnet,
    ('torchvision', 'vgg'): convnets.vgg,
    ('torchvision', 'alexnet'): convnets.alexnet,
    ('torchvision', 'convnext'): functools.partial(convnets.convnext, source='torchvision'),
    ('timm', 'convnext'): functools.partial(convnets.convnext, source='timm'),
    ('torchvision', 'vit'): transformers.torchvision_vit,
    ('timm', 'vit'): transformers.timm_vit,
    ('big_vision', 'vit'): transformers.big_vision_vit,
    ('torchvision', 'swin'): transformers.torchvision_swin,
}
# Buffers the nets models recompute or do not need.
IGNORED = (r'num_batches_tracked$', r'relative_position_index$')


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


__all__ = [
    'CHECKPOINTS',
    'IGNORED',
    'MAPPINGS',
    'METADATA_FILE',
    'SOURCES',
    'Converted',
    'check_fits',
    'convert',
    'convert_to_folder',
    'convertible',
    'read_metadata',
    'read_tensors',
    'save',
]

"""Converting other frameworks' checkpoints into `nets` models, to evaluate or fine-tune them.

    python -m nets.convert --source=torchvision --model=resnet50 \
        --checkpoint=resnet50.safetensors --out=DIR [--image_size=N] [--field=key=value ...]

`convert(source, model, checkpoint)` reads the file (no download, no torch needed for
.safetensors and .npz), maps its tensors onto the registered model `model` by the family's
mapping, takes the sizes from the tensors (so reduced widths and depths convert too), checks
that every tensor found a place and every parameter of the model got one, and `save` writes the
folder that `--config.init_from=DIR` (fine-tuning) and `train.evaluate --init_from=DIR` load.

Mappings (source: families): torchvision: resnet, vgg, alexnet, convnext, vit, swin, inception
(googlenet, inception_v3); timm: resnet, vgg, convnext, vit, swin, inception (inception_v3),
nfnet (dm_nfnet_f*, nfnet_f*, nfnet_l*); big_vision: vit (.npz, big_vision's and the original
ViT's names); torch (plain nn.LSTM / nn.GRU / nn.RNN models): rnn (lstm, gru, rnn classifiers),
language_model (char_lstm, char_gru, char_rnn). docs/zoo.md lists them with what each assumes;
what a conversion assumed beyond the tensors is in its `notes` (printed, and kept in
converted.json).
"""

from __future__ import annotations

import importlib
from typing import Any

# The API loads on first use (PEP 562), so that reading a converted folder's metadata
# (train.init_from imports nets.convert.core) does not load every family's mapping.
_MODULE_OF = {
    'IGNORED': 'api',
    'MAPPINGS': 'api',
    'SOURCES': 'api',
    'convert': 'api',
    'convert_to_folder': 'api',
    'convertible': 'api',
    'CHECKPOINTS': 'core',
    'METADATA_FILE': 'core',
    'Converted': 'core',
    'check_fits': 'core',
    'read_metadata': 'core',
    'save': 'core',
    'read_tensors': 'tensors',
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f'{__name__}.{_MODULE_OF[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

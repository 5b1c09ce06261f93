"""The converter's command line (see `nets.convert`); bad input prints one line and exits 64."""

from __future__ import annotations

import ast
from typing import Any

from absl import flags

from nets.convert.api import SOURCES, convert_to_folder
from nets.convert.core import read_metadata
from train import cli

flags.DEFINE_enum('source', None, list(SOURCES), 'Where the checkpoint comes from.')
flags.DEFINE_string(
    'model', None, 'A registered nets model name (e.g. resnet50, vit_b16, char_lstm).'
)
flags.DEFINE_string('checkpoint', None, 'The checkpoint file (.safetensors, .npz, .pth).')
flags.DEFINE_string('out', None, 'The folder to write (new or empty).')
flags.DEFINE_integer(
    'image_size', None, 'Input size to convert for (ViT: resamples the position table).'
)
flags.DEFINE_multi_string(
    'field', [], 'key=value: a model field the checkpoint does not fix (e.g. num_heads=12).'
)
for _name in ('source', 'model', 'checkpoint', 'out'):
    flags.mark_flag_as_required(_name)


def parse_fields(items: list[str]) -> dict[str, Any]:
    """['num_heads=2', 'stem=imagenet'] -> {'num_heads': 2, 'stem': 'imagenet'}: Python literals
    where they parse, strings otherwise."""
    fields = {}
    for item in items:
        key, has_value, text = item.partition('=')
        if not has_value or not key.strip():
            raise ValueError(f'--field needs key=value, got {item!r}')
        try:
            fields[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            fields[key.strip()] = text.strip()
    return fields


def main(argv: list[str]) -> None:
    del argv
    options = flags.FLAGS
    out = convert_to_folder(
        options.source,
        options.model,
        options.checkpoint,
        options.out,
        fields=parse_fields(options.field),
        image_size=options.image_size,
    )
    for note in read_metadata(out)['notes']:
        print(f'note: {note}')
    print(f'wrote {out}')


if __name__ == '__main__':
    cli.run(main, user_errors=(*cli.USER_ERRORS, ValueError))

"""Model zoo: MLPs, ConvNets, ResNets, Vision Transformers, Swin, sequence and generative models
in Flax linen.

The folders show the architecture:
  models/   one model family per file; each registers its named variants
  layers/   shared building blocks (norms, conv-norm-act, attention, positions, recurrent
            cells, decoding)
  kernels/  backend-specific implementations behind one switch (`nets.kernels.switch`)
  tools/    summaries, FLOP counts, conv arithmetic

Build a registered variant with `create(name, **overrides)` and size it with `count_params`;
model families load on first use, so importing a layer does not import the zoo.
"""

from nets.registry import (
    count_params,
    create,
    list_families,
    list_models,
    model_class,
    model_defaults,
    model_family,
    model_fields,
    register,
)

__all__ = [
    'count_params',
    'create',
    'list_families',
    'list_models',
    'model_class',
    'model_defaults',
    'model_family',
    'model_fields',
    'register',
]

"""Any model of the zoo on Fashion-MNIST, with its small-input stem: the zoo table's command.

Command:
  python -m train.main --config=experiments/fashion_mnist_zoo.py:model=resnet18 \
      --workdir=workdirs/resnet18
The argument is any registered image classifier (`python -c "import nets;
print(nets.list_models())"`). Models with a `stem` field get their small-input stem ('cifar'
for ResNets, 'small' elsewhere) so 28x28 inputs are not downsampled away; override any field
with --config.model.<field>=..., e.g. --config.model.width=16 to shrink a ResNet.
Family recipes: deformable models train their offset (and v2 mask) convs at 0.1x the learning
rate, as the DCN papers do; NFNets use adaptive gradient clipping at the paper's λ = 0.01,
skipping the final linear layer `head` (train/param_rules.py).
Hardware: 2-core CPU for the small models; the ImageNet-width ones (resnet50, vgg16,
convnext_t, vit_b16, nfnet_f0, ...) want an accelerator: on this CPU resnet20 trains at about
270 examples/s (an epoch in about 4 minutes).
Expected: the ConvNet comparison (experiments/fashion_mnist_convnets.py) gives measured
accuracies for small members of each family after one epoch (docs/zoo.md); ImageNet-width models
are not measured on this machine.
"""

import nets
from train.config import ConfigError, default_config, model_config, parse_arg

_SMALL_STEM = {'resnet': 'cifar', 'deformable': 'cifar'}
# The offset/mask conv inside every deformable conv (nets/models/deformable.py).
DEFORMABLE_OFFSETS = '.*/offset/.*'
DEFORMABLE_OFFSET_LR_FACTOR = 0.1
# The paper's clipping threshold at batch 4096; smaller batches tolerate larger ones, so 0.01 is
# the safe choice at the batch sizes used here.
NFNET_AGC_CLIP = 0.01
# Families whose models classify images (the sequence models have their own experiments).
IMAGE_FAMILIES = frozenset(
    {
        'mlp',
        'cnn',
        'resnet',
        'vit',
        'alexnet',
        'vgg',
        'inception',
        'inception_resnet',
        'deformable',
        'convnext',
        'nfnet',
        'swin',
        'p4cnn',
    }
)


def get_config(arg: str = ''):
    model_name = parse_arg(arg, model='resnet20').model
    if model_name not in nets.list_models():
        raise ConfigError(
            f'config argument model={model_name!r} is not a registered model; '
            f'valid: {nets.list_models()}'
        )
    fields = nets.model_fields(model_name)
    family = nets.model_family(model_name)
    if family not in IMAGE_FAMILIES:
        raise ConfigError(
            f'{model_name!r} (family {family!r}) is not an image classifier; '
            f'valid families: {sorted(IMAGE_FAMILIES)}'
        )
    overrides = {}
    if family == 'vit':
        if (
            fields['stem'] == 'resnet'
        ):  # hybrid: stride-1 root, 3 stages /4 -> 7x7 grid of 1x1 patches
            overrides.update(resnet_root='cifar', patch_size=1)
        else:
            overrides['patch_size'] = 4  # 28x28 -> 7x7 tokens
    elif family == 'swin':
        # 1x1 patches and the first three stages: 28 -> 14 -> 7 tokens, window 7.
        overrides.update(
            patch_size=1, depths=fields['depths'][:3], num_heads=fields['num_heads'][:3]
        )
    elif 'stem' in fields:
        overrides['stem'] = _SMALL_STEM.get(family, 'small')
    config = default_config()
    config.dataset.name = 'fashion_mnist'
    config.model = model_config(model_name, **overrides)
    config.batch_size = 128
    config.num_epochs = 10.0
    config.optimizer.name = 'momentum'
    config.optimizer.learning_rate = 0.05
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 1.0
    if family == 'deformable':
        config.optimizer.lr_multipliers = ((DEFORMABLE_OFFSETS, DEFORMABLE_OFFSET_LR_FACTOR),)
    elif family == 'nfnet':
        # No batch norm: AGC bounds each unit's update instead (Brock et al. 2021, §4). The
        # default config.optimizer.agc_exclude, ('head/.*',), exempts the classifier as the
        # paper does.
        config.optimizer.agc_clip = NFNET_AGC_CLIP
    return config

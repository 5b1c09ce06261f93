"""Deformable against plain convolution where geometry varies: ResNet-20 (width 8) and the same
network with its last stage's 3x3 convs deformable (DCNv2's convs: learned offsets and
modulation masks), trained on Fashion-MNIST rotated by any angle and zoomed (on device, a
fresh draw every step), tested on test images warped the same way (a fixed draw) and on the
clean test images.

Command (one model):
  python -m train.main --config=experiments/fashion_mnist_deformable.py:model=deformable \
      --workdir=workdirs/deformable/deformable
Both, with the results table:
  python -m experiments.sweeps.deformable_comparison --workdir=workdirs/deformable
The argument is 'resnet' or 'deformable'; everything else is shared: 2 epochs of 60,000 images,
batch 128, SGD with momentum 0.9 at 0.05 (warmup-cosine), weight decay 5e-4; the deformable
model's offset/mask convs train at 0.1x the rate (the DCN papers' recipe, as the zoo config).
Hardware: 2-core CPU, one XLA device.
Expected (measured 2026-12-07, docs/zoo.md): rotated + zoomed test images resnet 73.04%,
deformable 72.87% (clean 70.99% / 71.31%): no measurable gain, at 1,082 against 109 training
examples/s (about 2 and 18 minutes).
"""

from experiments.fashion_mnist_zoo import DEFORMABLE_OFFSET_LR_FACTOR, DEFORMABLE_OFFSETS
from train.config import check_arg_choice, default_config, model_config, parse_arg

# The geometry that varies: any rotation and a zoom of 0.8-1.25 (log-uniform), one affine warp.
GEOMETRY = ({'op': 'rotate'}, {'op': 'scale', 'min_factor': 0.8, 'max_factor': 1.25})
# The CIFAR ResNet-20 layout at width 8: 3 stages of 3 basic blocks, 8/16/32 channels.
_RESNET = dict(stage_sizes=(3, 3, 3), block='basic', width=8, stem='cifar')
MODELS = {
    'resnet': ('resnet20', dict(width=8)),
    # Deformable in the last stage (7x7 maps), DCNv1's placement: the sampling's backward pass
    # is a scatter-add, slow on CPUs, and with stage 1 (14x14) deformable too a step took 3.2x
    # as long (35 against 112 examples/s on the 2-core CPU, the plain model 1,800).
    'deformable': ('deformable_resnet50', dict(_RESNET, deformable_stages=(2,))),
}


def get_config(arg: str = ''):
    name = parse_arg(arg, model='deformable').model
    check_arg_choice('model', name, MODELS)
    registered, fields = MODELS[name]
    config = default_config()
    config.dataset.name = 'fashion_mnist'
    config.model = model_config(registered, **fields)
    config.augment = GEOMETRY
    config.batch_size = 128
    config.num_epochs = 2.0
    config.optimizer.name = 'momentum'
    config.optimizer.learning_rate = 0.05
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.3
    if name == 'deformable':
        config.optimizer.lr_multipliers = ((DEFORMABLE_OFFSETS, DEFORMABLE_OFFSET_LR_FACTOR),)
    return config

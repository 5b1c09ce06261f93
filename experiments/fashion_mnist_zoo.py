"""Any model of the zoo on Fashion-MNIST, with its small-input stem: the zoo table's command.

Command:
  python -m train.main --config=experiments/fashion_mnist_zoo.py:resnet18 \
      --workdir=workdirs/resnet18
The argument is any registered image classifier (`python -c "import nets;
print(nets.list_models())"`). Models with a `stem` field get their small-input stem ('cifar'
for ResNets, 'small' elsewhere) so 28x28 inputs are not downsampled away; override any field
with --config.model.<field>=..., e.g. --config.model.width=16 to shrink a ResNet.
Hardware: 2-core CPU for the small models; the ImageNet-width ones (resnet50, vgg16,
convnext_t, vit_b16, nfnet_f0, ...) want an accelerator: on this CPU resnet20 trains at about
270 examples/s (an epoch in about 4 minutes).
Expected: the ConvNet comparison (experiments/fashion_mnist_convnets.py) gives measured
accuracies for small members of each family after one epoch (README); ImageNet-width models
are not measured on this machine.
"""

import nets
from train.config import default_config, model_config

_SMALL_STEM = {'resnet': 'cifar', 'deformable': 'cifar'}


def get_config(model_name: str = 'resnet20'):
    fields = nets.model_fields(model_name)  # an unknown name fails here, listing valid ones
    overrides = {}
    if 'stem' in fields:
        overrides['stem'] = _SMALL_STEM.get(nets.model_family(model_name), 'small')
    if nets.model_family(model_name) == 'vit':
        overrides['patch_size'] = 4  # 28x28 -> 7x7 tokens
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
    return config

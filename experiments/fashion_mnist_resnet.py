"""Any ResNet of the zoo on Fashion-MNIST, with the small-input (CIFAR-style) stem.

Command:
  python -m train.main --config=experiments/fashion_mnist_resnet.py:resnet20 \
      --workdir=workdirs/fashion_mnist_resnet20
The argument is a registered ResNet name (resnet20, resnet32, ..., resnet18, resnet50, ...);
ImageNet-size variants get the 3x3 stride-1 stem so 28x28 inputs keep their resolution.
Hardware: 2-core CPU; resnet20 (0.27M parameters) runs about 250 examples/s there, so 10 epochs
take about 40 minutes; on a GPU or TPU, minutes.
Expected: resnet20 about 93-94% test accuracy after 10 epochs (not yet measured here).
"""

from train.config import default_config, model_config


def get_config(model_name: str = 'resnet20'):
    config = default_config()
    config.dataset.name = 'fashion_mnist'
    config.model = model_config(model_name, stem='cifar')
    config.batch_size = 128
    config.num_epochs = 10.0
    config.optimizer.name = 'momentum'
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 1.0
    return config

"""The ConvNet families of the course, each sized for 28x28, on Fashion-MNIST with one budget.

Command (one model):
  python -m train.main --config=experiments/fashion_mnist_convnets.py:model=resnet \
      --workdir=workdirs/convnets/resnet
All of them, with the results table (accuracy, parameters, FLOPs, examples/s) and a plot:
  python -m experiments.sweeps.convnet_comparison --workdir=workdirs/convnets
The argument is one of MODELS below: the families (AlexNet, VGG, GoogLeNet, ResNet, ConvNeXt)
at small widths with their small-input stems, plus the course's comparison of an MLP and a CNN
of about the same parameter count (203,530 vs 206,970).
Hardware: 2-core CPU, one XLA device; about 30 minutes for all seven (GoogLeNet is the slowest).
Expected (measured, 1 epoch): mlp 86.2%, cnn 88.2%, alexnet 77.5%, vgg 90.0%, googlenet 89.3%,
resnet 86.9%, convnext 85.6% (docs/zoo.md).
"""

from train.config import check_arg_choice, default_config, model_config, parse_arg

# name -> (registered model, fields). Widths chosen so every model trains in minutes on a CPU.
MODELS = {
    'mlp': ('mlp', dict(depth=1, width=256)),
    'cnn': (
        'cnn',
        dict(
            channels=(16, 32), convs_per_stage=1, head='flatten', head_hidden=128, dropout_rate=0.2
        ),
    ),
    'alexnet': ('alexnet', dict(stem='small', width=16, fc_width=256)),
    'vgg': ('vgg11_bn', dict(stem='small', width=16, fc_width=256)),
    'googlenet': ('googlenet', dict(stem='small', width_multiplier=0.25)),
    'resnet': ('resnet20', dict(width=8)),
    'convnext': ('convnext_t', dict(stem='small', depths=(1, 1, 3, 1), dims=(16, 32, 64, 128))),
    # The course's "ViT or CNN?" at small scale: 4x4 patches make a 7x7 grid of 49 tokens.
    'vit': ('vit_ti16', dict(patch_size=4, hidden_size=64, depth=6, num_heads=4, mlp_dim=128)),
    # 2x2 patches: 14x14 tokens in 7x7 windows (regular, then shifted), merged to one 7x7 window.
    'swin': (
        'swin_t',
        dict(
            patch_size=2,
            window_size=7,
            embed_dim=48,
            depths=(2, 2),
            num_heads=(3, 6),
            drop_path_rate=0.1,
        ),
    ),
}
# Trained with AdamW and weight decay 0.05 (the Transformer / ConvNeXt recipe), not SGD.
ADAMW_MODELS = ('convnext', 'vit', 'swin')


def get_config(arg: str = ''):
    name = parse_arg(arg, model='cnn').model
    check_arg_choice('model', name, MODELS)
    model_name, fields = MODELS[name]
    config = default_config()
    config.dataset.name = 'fashion_mnist'
    config.model = model_config(model_name, **fields)
    config.batch_size = 128
    config.num_epochs = 1.0
    config.optimizer.name = 'adamw' if name in ADAMW_MODELS else 'momentum'
    # AlexNet has no batch norm: at 0.05 its loss spikes early; the paper's 0.01 trains.
    config.optimizer.learning_rate = {
        'convnext': 2e-3,
        'vit': 2e-3,
        'swin': 2e-3,
        'alexnet': 0.01,
    }.get(name, 0.05)
    config.optimizer.weight_decay = 0.05 if name in ADAMW_MODELS else 5e-4
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.5
    config.log_every_steps = 100
    return config

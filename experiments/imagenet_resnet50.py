"""ResNet-50 on ImageNet-1k with the Flax ImageNet example's recipe, through the JPEG input path.

Command (data: TFDS imagenet2012 prepared in array_record under the data dir, see docs/data.md):
  python -m train.main --config=experiments/imagenet_resnet50.py --workdir=gs://BUCKET/resnet50
  (on a pod slice: the same command on every host with --multihost; WORKSPACE.md's TPU runbook)
Recipe: batch 1024, SGD with Nesterov momentum 0.9, learning rate 0.1 x batch / 256 with 5
warm-up epochs then cosine to 0, L2 weight decay 1e-4 on the weights (not biases or norms),
100 epochs, Inception-style random-resized crops + flips at 224 px (0.875 centre crops for
eval), bfloat16 compute with float32 parameters.
Hardware and time (published, Flax examples): one TPU-v3-8, 4.4 hours. Expected: 76.5% top-1
on the validation split (torchvision's v1 recipe reports 76.1%).
Smoke test on any CPU in about a minute: `:smoke` trains a width-16 ResNet-50 on the offline
stand-in (python -m data.prepare imagenet_standin) at 64 px for 6 steps.
"""

from train.config import default_config, model_config, parse_arg

BATCH_SIZE = 1024


def get_config(arg: str = ''):
    args = parse_arg(arg, smoke=False)
    config = default_config()
    config.dataset.name = 'imagenet2012'
    config.dataset.eval_split = 'validation'
    config.dataset.image_size = 224
    config.model = model_config('resnet50')
    config.dtype = 'bfloat16'
    config.batch_size = BATCH_SIZE
    config.eval_batch_size = 1000
    config.num_epochs = 100.0
    config.optimizer.name = 'nesterov'
    config.optimizer.momentum = 0.9
    config.optimizer.learning_rate = 0.1 * BATCH_SIZE / 256
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_mode = 'coupled'
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 5.0
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    if args.smoke:
        _shrink_for_smoke(config)
        config.model.width = 16
    return config


def _shrink_for_smoke(config) -> None:
    """The same recipe on the stand-in at CPU size: the JPEG path, crops, checkpoints, eval."""
    config.dataset.name = 'imagenet_standin/tiny'
    config.dataset.image_size = 64
    config.dataset.worker_count = 1
    config.dtype = 'float32'
    config.batch_size = config.eval_batch_size = 8
    config.num_steps = 6
    config.optimizer.learning_rate = 0.1 * 8 / 256
    config.log_every_steps = config.checkpoint_every_steps = 3
    config.eval_every_steps = 6  # one evaluation: each pass starts its decoding workers

"""ViT-S/16 or ViT-B/16 on ImageNet-1k with big_vision's `vit_s16_i1k` recipe, through the JPEG
input path.

Command (data: TFDS imagenet2012 prepared in array_record under the data dir, see docs/data.md):
  python -m train.main --config=experiments/imagenet_vit.py:model=vit_s16 --workdir=gs://BUCKET/s16
  python -m train.main --config=experiments/imagenet_vit.py:model=vit_b16 --workdir=gs://BUCKET/b16
  (on a pod slice: the same command on every host with --multihost; WORKSPACE.md's TPU runbook)
Recipe (big_vision vit_s16_i1k): batch 1024, Adam (b1 0.9, b2 0.999) with decoupled weight
decay 1e-4, learning rate 1e-3, 10,000 warm-up steps then cosine to 0, gradients clipped to
global norm 1, 90 epochs, random-resized crops (area 5-100%) + flips at 224 px, RandAugment
(2 ops, magnitude 10 of 10) and mixup (alpha 0.2), 2-D sin-cos position embeddings and
global-average-pooled tokens into the head,
bfloat16 compute with float32 parameters.
Hardware and time (published, big_vision): ViT-S/16 on one TPU-v3-8, 6-7 hours.
Expected: ViT-S/16 76.5% top-1 on the validation split after 90 epochs. ViT-B/16 with this
recipe is not published by big_vision; torchvision's (longer, heavier) recipe reaches 81.1%.
Smoke test on any CPU in about a minute: `:smoke` trains a 2-block, width-64 ViT on the offline
stand-in (python -m data.prepare imagenet_standin) at 64 px for 6 steps with the same
augmentation.
"""

from train.config import check_arg_choice, default_config, model_config, parse_arg

BATCH_SIZE = 1024
MODELS = ('vit_s16', 'vit_b16')


def get_config(arg: str = ''):
    args = parse_arg(arg, model='vit_s16', smoke=False)
    check_arg_choice('model', args.model, MODELS)
    config = default_config()
    config.dataset.name = 'imagenet2012'
    config.dataset.eval_split = 'validation'
    config.dataset.image_size = 224
    config.dataset.crop_area_range = (0.05, 1.0)
    config.model = model_config(args.model, pool='gap', posemb='sincos2d')
    config.dtype = 'bfloat16'
    config.batch_size = BATCH_SIZE
    config.eval_batch_size = 1000
    config.num_epochs = 90.0
    config.optimizer.name = 'adamw'
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.grad_clip_norm = 1.0
    config.schedule.name = 'warmup_cosine'
    # 10,000 steps of the 1,281,167-image train split at batch 1024.
    config.schedule.warmup_epochs = 10_000 * BATCH_SIZE / 1_281_167
    config.augment = (
        {'op': 'randaugment', 'num_ops': 2, 'magnitude': 10.0},
        {'op': 'mixup', 'alpha': 0.2},
    )
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    if args.smoke:
        config.dataset.name = 'imagenet_standin/tiny'
        config.dataset.image_size = 64
        config.dataset.worker_count = 1
        config.dtype = 'float32'
        config.model.depth, config.model.hidden_size = 2, 64
        config.model.num_heads, config.model.mlp_dim = 2, 128
        config.batch_size = config.eval_batch_size = 8
        config.num_steps = 6
        config.schedule.warmup_epochs = 0.0
        config.log_every_steps = config.checkpoint_every_steps = 3
        config.eval_every_steps = 6  # one evaluation: each pass starts its decoding workers
    return config

"""Addition, the Flax examples' seq2seq sanity task: "123+45" -> "168" in characters.

Command:
  python -m train.main --config=experiments/addition.py:model=attention \
      --workdir=workdirs/addition_attention
  python -m train.main --config=experiments/addition.py:model=context \
      --workdir=workdirs/addition_context
  python -m train.main --config=experiments/addition.py:model=transformer \
      --workdir=workdirs/addition_transformer
The argument is the model: 'context' (Cho et al. 2014: one context vector), 'attention'
(Bahdanau et al. 2015) or 'transformer' (transformer_tiny without dropout). 50,000 train /
1,000 test pairs of numbers 0..999 (data/builders/addition.py), batch 128, Adam; the recurrent
models clip gradients to global norm 1. Greedy decoding; exact match = the whole sum right.
Hardware: 2-core CPU shared with other jobs, one XLA device: 'attention' about 1,700
examples/s, 2,000 steps in 208 s with its four evaluations.
Expected (measured, 1,000 test pairs): attention, 2,000 steps: exact match 98.8% (13.1% at
step 500, 89.6% at 1,000, 98.0% at 1,500), token accuracy 99.7%, loss 0.0086, character
BLEU 99.4. Shorter runs of the other two (--config.num_steps=800, 55 s and 82 s): transformer
exact match 42.1% (token accuracy 83.7%, BLEU 55.2), context 2.8% (62.9%, BLEU 16.2); the
fixed-context model is far behind at that length.
"""

from train.config import check_arg_choice, default_config, model_config, parse_arg

_MODELS = {
    'context': dict(name='seq2seq_context'),
    'attention': dict(name='seq2seq_attention'),
    # The sum is a deterministic function of 8 characters: no dropout needed.
    'transformer': dict(name='transformer_tiny', dropout_rate=0.0),
}


def get_config(arg: str = ''):
    args = parse_arg(arg, model='attention')
    check_arg_choice('model', args.model, _MODELS)
    config = default_config()
    config.task = 'seq2seq'
    config.dataset.name = 'addition'
    fields = dict(_MODELS[args.model])
    config.model = model_config(fields.pop('name'), **fields)
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_steps = 2000
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.5
    config.schedule.end_factor = 0.05
    config.log_every_steps = 100
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 1000
    if args.model == 'transformer':
        config.optimizer.learning_rate = 1e-3
    else:
        # Recurrent gradients can spike early on; clipping keeps Adam's steps bounded.
        config.optimizer.grad_clip_norm = 1.0
    return config

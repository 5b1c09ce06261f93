"""English -> Spanish Bible verses (data/builders/translation.py) with the three encoder-decoders.

Command:
  python -m train.main --config=experiments/translation.py:model=context \
      --workdir=workdirs/translation_context
  python -m train.main --config=experiments/translation.py:model=attention \
      --workdir=workdirs/translation_attention
  python -m train.main --config=experiments/translation.py:model=transformer \
      --workdir=workdirs/translation_transformer
The argument is the model: 'context' (Cho et al. 2014 / Sutskever et al. 2014, one fixed
context vector), 'attention' (Bahdanau et al. 2015), 'transformer' (Vaswani et al. 2017 at
transformer_tiny size: d_model 64, 4 heads, 2 + 2 post-LN layers, one shared 14,546-word table)
or 'transformer_small' (d_model 128, 4 heads, MLP 512, 3 + 3 pre-LN layers, 3.3M parameters).
28,342 train pairs, word vocabularies of 8,287 (English) and 14,546 (Spanish) ids; evaluated
on the 1,000 test pairs (teacher-forced loss/perplexity, greedy exact match, and sacrebleu
BLEU of the greedy translations against the raw Spanish text, case-insensitive).
CPU budget: a few hundred steps of batch 64 (under one epoch), trained only on the 61% of
pairs whose both sides fit in 32 tokens (seq2seq.max_train_length = 32; evaluation uses
every test pair at full length). Recurrent models clip gradients to global norm 1.
Hardware: 2-core CPU shared with other jobs (load 5-7), one XLA device: about 1.7 s a step
for 'attention', 1.0 s for 'context' and 0.95 s for 'transformer'; 6-9 minutes each with the
final evaluation (decoding 1,000 verses twice, about a minute).
Expected: a measurement at this budget, not a target: BLEU stays in single digits; outputs
are frequent words and <unk> ("y el que <unk>, y el que ..."). Measured (test, 1,000 pairs):
  context      300 steps, 368 s: loss 4.96, perplexity 143, token accuracy 22.0%, BLEU 1.28
  attention    250 steps, 537 s: loss 5.01, perplexity 149, token accuracy 23.2%, BLEU 1.59
  transformer  300 steps, 353 s: loss 5.24, perplexity 188, token accuracy 19.2%, BLEU 0.43
Exact match 0 for all three. BLEU is against the raw Spanish text (case-insensitive); against
the reference as the vocabulary encodes it (bleu_decoded_reference, where a <unk> output can
match a rare word's <unk>) it reads 4.56 / 5.87 / 1.70.
Longer, over seeds (experiments/sweeps/translation_comparison.py, 1,500 steps each, seeds 0
and 1, on the idle 2-core CPU): BLEU attention 14.86 / 14.71, transformer_small 10.82 / 10.92,
context 3.85 / 3.73, each pair separated; transformer_tiny 4.07 / 3.78 (docs/sequences.md).
"""

from train.config import check_arg_choice, default_config, model_config, parse_arg

MODELS = {
    'context': dict(name='seq2seq_context'),
    'attention': dict(name='seq2seq_attention'),
    'transformer': dict(name='transformer_tiny'),
    'transformer_small': dict(name='transformer_small'),
}


# What fits about 6 minutes of training here (the recurrences cost per position; the
# Transformer's cost is mostly the 14,546-way output layer).
_STEPS = {'context': 300, 'attention': 250, 'transformer': 300, 'transformer_small': 300}


def get_config(arg: str = ''):
    args = parse_arg(arg, model='attention')
    check_arg_choice('model', args.model, MODELS)
    config = default_config()
    config.task = 'seq2seq'
    config.dataset.name = 'translation'
    config.dataset.eval_split = 'test'
    fields = dict(MODELS[args.model])
    config.model = model_config(fields.pop('name'), **fields)
    config.batch_size = 64
    config.eval_batch_size = 500
    config.num_steps = _STEPS[args.model]
    config.seq2seq.max_train_length = 32
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 2e-3
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.05  # 22 steps of 443 per epoch
    config.schedule.end_factor = 0.1
    config.log_every_steps = 25
    config.eval_every_steps = config.num_steps  # evaluating decodes 1,000 verses: once, at the end
    config.checkpoint_every_steps = 100
    if not args.model.startswith('transformer'):
        # Recurrent gradients can spike (products over up to 64 steps); clip them.
        config.optimizer.grad_clip_norm = 1.0
    return config

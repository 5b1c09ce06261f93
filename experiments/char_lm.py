"""Character-level language models on char_corpus (the Python Language Reference topics):
Elman RNN, LSTM, GRU and a decoder-only Transformer of similar size, trained on the same data.

Command:
  python -m train.main --config=experiments/char_lm.py:model=lstm --workdir=workdirs/char_lm_lstm
  python -m train.main --config=experiments/char_lm.py:model=gru --workdir=workdirs/char_lm_gru
  python -m train.main --config=experiments/char_lm.py:model=rnn --workdir=workdirs/char_lm_rnn
  python -m train.main --config=experiments/char_lm.py:model=transformer \
      --workdir=workdirs/char_lm_transformer
  python -m train.main --config=experiments/char_lm.py:model=lstm,streams ...   (truncated BPTT)
(`python -m data.prepare --datasets=char_corpus` first; it takes a second.) Each model reads
the same 250 batches of 32 windows of 256 characters (2.05M characters, 4.9 epochs of the
418k-character train split) with Adam, 0.5 epochs of warm-up and a cosine decay to 0.1x; the
recurrent ones clip gradients to global norm 1. Learning rates: 1e-2 for LSTM and GRU, 3e-3
for the Elman RNN and the Transformer (short probes: the LSTM was at 2.64 bpc after 100 steps
with 1.2e-2, 2.93 with 6e-3 and 3.49 with 2e-3; the RNN's gradients are ~6x larger and it did
better at 3e-3 than at 1e-2). Models, all of similar size at the 107-character vocabulary:
rnn: one Elman layer of 448; lstm: one layer of 224; gru: one layer of 256 (each after a
64-dimensional character embedding, with a dense softmax layer); transformer: 2 pre-LN causal
blocks, d = 128, 4 heads, MLP 256, sinusoidal positions. ',streams' trains a recurrent model
with truncated BPTT: the batch's rows are 32 contiguous streams through the text and the state
is carried from step to step (config.dataset.order = 'streams'; not among the measured runs).
Evaluation: the test split (23,040 characters), every 256-character window read from a zero
state; `bits_per_character` = mean NLL / ln 2. Outputs: samples.txt (greedy and
temperature-0.8 continuations of 'The '), pictures/loss_by_position.png.
Hardware: 2-core CPU shared with other jobs (load ~6 during the runs), one XLA device,
`nice -n 5`. Times below are train_and_evaluate's wall time (the whole command: 7-21 s more;
CPU user+sys 112, 109, 91, 211 s); on an idle machine expect them about halved.
Expected (measured here, test split after 250 steps):
  model        parameters   test bpc   accuracy   time
  gru             280,875      1.732      0.675     2m53s
  lstm            289,867      2.241      0.587     3m04s
  rnn             284,715      2.589      0.543     1m58s
  transformer     292,715      2.935      0.444     5m34s
The GRU learns fastest; the Transformer is still on its bigram-level plateau (train loss ~2.4
nats) when the budget ends and is 2.2x slower per step on this CPU, so at this budget it is last.
Samples (temperature 0.8, after the prompt 'The '):
  gru: "retuinat value.  If the function object is called to the preceror, the interpreter Python;"
  lstm: "the zeation is a newing for a lister us anscebles the    prubure kele dingtrer be"
  rnn: "thon tation is a nestrod." with of a difinstebco(sest, of subuent, oN exception 3__P"
  transformer: "the itatis cestust withef" with othe ul anscebuna te s t pe be or ale e terecis"
"""

from nets.layers.recurrent import CELLS
from train.config import ConfigError, check_arg_choice, default_config, model_config, parse_arg

_MODELS = {cell: f'char_{cell}' for cell in CELLS} | {'transformer': 'char_transformer'}
_LEARNING_RATES = {'lstm': 1e-2, 'gru': 1e-2, 'rnn': 3e-3, 'transformer': 3e-3}


def get_config(arg: str = ''):
    args = parse_arg(arg, model='lstm', streams=False)
    model = args.model
    check_arg_choice('model', model, _MODELS)
    if args.streams and model not in CELLS:
        raise ConfigError(f'streams carries a recurrent state; model={model!r} has none')
    recurrent = model in CELLS
    config = default_config()
    config.task = 'language_model'
    config.dataset.name = 'char_corpus'
    config.dataset.eval_split = 'test'
    config.dataset.order = 'streams' if args.streams else 'shuffled'
    config.model = model_config(_MODELS[model])  # sizes: the registered char_* defaults
    config.batch_size = 32
    config.eval_batch_size = 96
    config.num_steps = 250
    config.optimizer.name = 'adam'
    # Short runs want large steps: 1e-2 beat 6e-3 (and 2e-3) clearly for the LSTM after 100
    # steps; the Elman RNN's gradients are ~6x larger and it did better at 3e-3.
    config.optimizer.learning_rate = _LEARNING_RATES[model]
    # Recurrent gradients are products over 256 steps and can spike: clip their global norm.
    config.optimizer.grad_clip_norm = 1.0 if recurrent else 0.0
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.5
    config.schedule.end_factor = 0.1
    config.log_every_steps = 25
    config.eval_every_steps = 50
    config.checkpoint_every_steps = 125
    return config

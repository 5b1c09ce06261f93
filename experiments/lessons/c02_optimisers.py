"""Claim 2: momentum, RMSProp and Adam optimise faster than plain gradient descent, and
learning-rate schedules help.

The same MLP on the same data, for the same number of steps, through the project's trainer
(train/optim.py builds each optimiser): every optimiser at a constant learning rate, each at the
best of a small grid (its loss after the run decides), so none loses to a badly chosen rate.
"Faster" = how soon (smoothed) training loss reaches the loss plain SGD ends at. Then momentum
SGD at its best rate with a warm-up + cosine and a step (÷10 at 40% and 80%) schedule.

    python -m experiments.lessons.report --workdir=workdirs/lessons --lessons=2 --scale=full

Hardware: the 2-core x86-64 CPU, one XLA device. Time: 176 s at --scale=full (measured by
the runner while other jobs shared the machine). Expected: partly supported — each at its best
constant rate, Adam reaches SGD's final train loss (0.382 after 600 steps) 1.36x sooner, but
momentum (0.380) and RMSProp (0.380) only tie with tuned SGD; warm-up + cosine (0.316) and
step decay (0.329) end 17% and 13% below the constant rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.lessons import (
    Finding,
    Verdict,
    fresh_runs_dir,
    markdown_table,
    save_figure,
    steps_to_reach,
    trailing_means,
    train_run,
    verdict_of_parts,
)

NUMBER = 2
TITLE = 'Optimisers and schedules'
CLAIM = (
    'Momentum, RMSProp and Adam optimise faster than plain gradient descent; adaptive '
    'learning-rate schedules help.'
)

# "Faster" must beat run-to-run noise: reaching SGD's final loss in at most 1/1.25 of the steps.
MIN_SPEEDUP = 1.25
# A schedule "helps" when the run ends at a train loss at least 5% below the constant rate's.
MIN_LOSS_CUT = 0.05
# Losses are means over `log_every_steps`; a trailing mean of this many of them smooths
# the batch noise out of "when did it reach the target" and "where did it end".
SMOOTH = 3

SETTINGS = {
    'full': dict(
        dataset='fashion_mnist',
        train_split='train[:20000]',
        eval_split='test[:2000]',
        steps=600,
        batch=64,
        depth=2,
        width=128,
        log_every=10,
        grid=(0, 1, 2),
        optimisers=('sgd', 'momentum', 'rmsprop', 'adam'),
        schedules=('constant', 'warmup_cosine', 'step'),
    ),
    # Tiny (tests): one rate each, two runs (no scheduled one); judge() reads whichever are there.
    'tiny': dict(
        dataset='digits',
        train_split='train[:256]',
        eval_split='test[:64]',
        steps=12,
        batch=32,
        depth=1,
        width=16,
        log_every=4,
        grid=(2,),
        optimisers=('sgd', 'momentum'),
        schedules=('constant',),
    ),
}
# Grids a factor ~3 apart around each optimiser's usual rate (momentum's is lower than
# SGD's: with β = 0.9 its steps add up to ~10 gradients).
LEARNING_RATES = {
    'sgd': (0.03, 0.1, 0.3),
    'momentum': (0.01, 0.03, 0.1),
    'rmsprop': (3e-4, 1e-3, 3e-3),
    'adam': (3e-4, 1e-3, 3e-3),
}


def make_config(
    setting: dict,
    data_dir: str | None,
    optimizer: str,
    learning_rate: float,
    schedule: str = 'constant',
    train_examples: int = 0,
):
    from train.config import default_config, model_config

    config = default_config()
    config.dataset.name = setting['dataset']
    config.dataset.data_dir = data_dir or ''
    config.dataset.train_split = setting['train_split']
    config.dataset.eval_split = setting['eval_split']
    config.model = model_config('mlp', depth=setting['depth'], width=setting['width'])
    config.batch_size = setting['batch']
    config.eval_batch_size = 200
    config.num_steps = setting['steps']
    config.log_every_steps = setting['log_every']
    config.eval_every_steps = config.checkpoint_every_steps = setting['steps']
    config.optimizer.name = optimizer
    config.optimizer.learning_rate = learning_rate
    if optimizer == 'momentum':  # RMSProp and Adam keep their own defaults (no momentum term)
        config.optimizer.momentum = 0.9
    config.schedule.name = schedule
    if schedule != 'constant':
        run_epochs = setting['steps'] * setting['batch'] / train_examples
        config.schedule.warmup_epochs = 0.05 * run_epochs if schedule == 'warmup_cosine' else 0.0
        config.schedule.decay_factor = 0.1
        config.schedule.decay_every_epochs = 0.4 * run_epochs
    return config


def train_once(config, workdir: Path) -> dict[str, Any]:
    from train.loop import NonFiniteError

    try:
        result = train_run(config, workdir)
    except NonFiniteError:  # diverged: this rate is out of the race
        return {'curve': [], 'final_loss': None, 'test_accuracy': None}
    curve = [[r['step'], r['loss']] for r in result.train]
    return {
        'curve': curve,
        'final_loss': trailing_means([loss for _, loss in curve], SMOOTH)[-1],
        'test_accuracy': result.summary['eval']['accuracy'],
    }


def judge(numbers: dict) -> Verdict:
    optimisers, schedules = numbers['optimisers'], numbers['schedules']
    parts = {}
    faster = [name for name in optimisers if name != 'sgd']
    for name in faster:
        parts[f'{name} >= {MIN_SPEEDUP:g}x faster than SGD'] = (
            optimisers[name]['speedup'] or 0.0
        ) >= MIN_SPEEDUP
    constant = schedules['constant']['final_loss']
    for name, record in schedules.items():
        if name != 'constant':
            loss = record['final_loss']
            parts[f'{name} ends >= {MIN_LOSS_CUT:.0%} below constant'] = (
                loss is not None and constant is not None and loss <= constant * (1 - MIN_LOSS_CUT)
            )
    speedups = ', '.join(f'{n} {optimisers[n]["speedup"] or 0:.2f}x' for n in faster)
    losses = ', '.join(f'{n} {r["final_loss"] or float("nan"):.3f}' for n, r in schedules.items())
    return verdict_of_parts(
        parts,
        f"steps to SGD's final loss: {speedups} faster; final train loss by schedule: {losses}",
    )


def plot(numbers: dict, out: Path) -> Path:
    from train.pictures import plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, record in numbers['optimisers'].items():
        if record['curve']:
            steps, losses = zip(*record['curve'])
            axes[0].plot(steps, losses, label=f'{name} (lr {record["best_lr"]:g})')
        sweep = [(r['lr'], r['final_loss']) for r in record['lr_sweep'] if r['final_loss']]
        if sweep:
            axes[1].plot(*zip(*sweep), 'o-', label=name)
    axes[0].axhline(numbers['target_loss'], color='grey', ls=':', label="SGD's final loss")
    axes[0].set(
        yscale='log', xlabel='step', ylabel='train loss', title='best constant rate per optimiser'
    )
    axes[1].set(
        xscale='log',
        yscale='log',
        xlabel='learning rate',
        ylabel='final train loss',
        title='learning-rate sweep',
    )
    for name, record in numbers['schedules'].items():
        if record['curve']:
            axes[2].plot(*zip(*record['curve']), label=name)
    axes[2].set(
        yscale='log',
        xlabel='step',
        ylabel='train loss',
        title=f'momentum SGD, lr {numbers["schedule_lr"]:g}',
    )
    return save_figure(fig, out, axes)


def run(workdir: Path, scale: str, data_dir: str | None) -> Finding:
    import data

    setting = SETTINGS[scale]
    runs = fresh_runs_dir(workdir)
    train_examples = len(data.load_source(setting['dataset'], setting['train_split'], data_dir))
    optimisers: dict[str, Any] = {}
    for name in setting['optimisers']:
        grid = LEARNING_RATES[name]
        sweep = []
        for lr in (grid[i] for i in setting['grid']):
            outcome = train_once(make_config(setting, data_dir, name, lr), runs / f'{name}_{lr:g}')
            sweep.append({'lr': lr, **outcome})
        best = min(
            sweep, key=lambda r: r['final_loss'] if r['final_loss'] is not None else float('inf')
        )  # a diverged rate only wins if all diverged
        optimisers[name] = {
            'best_lr': best['lr'],
            'final_loss': best['final_loss'],
            'test_accuracy': best['test_accuracy'],
            'curve': best['curve'],
            'lr_sweep': [{'lr': r['lr'], 'final_loss': r['final_loss']} for r in sweep],
        }
    target = optimisers['sgd']['final_loss']
    sgd_steps = steps_to_reach(optimisers['sgd']['curve'], target, SMOOTH) if target else None
    for record in optimisers.values():
        reached = (
            steps_to_reach(record['curve'], target, SMOOTH) if target and record['curve'] else None
        )
        record['steps_to_target'] = reached
        record['speedup'] = sgd_steps / reached if reached and sgd_steps else None

    schedule_lr = optimisers['momentum']['best_lr']
    schedules = {
        'constant': {k: optimisers['momentum'][k] for k in ('curve', 'final_loss', 'test_accuracy')}
    }
    for name in setting['schedules'][1:]:
        config = make_config(setting, data_dir, 'momentum', schedule_lr, name, train_examples)
        schedules[name] = train_once(config, runs / f'momentum_{name}')
    numbers = {
        'dataset': setting['dataset'],
        'train_split': setting['train_split'],
        'steps': setting['steps'],
        'target_loss': target,
        'schedule_lr': schedule_lr,
        'optimisers': optimisers,
        'schedules': schedules,
    }
    plot(numbers, Path(workdir) / 'optimisers.png')
    rows = [
        [
            name,
            r['best_lr'],
            r['final_loss'],
            r['steps_to_target'] or 'never',
            r['speedup'] or '-',
            r['test_accuracy'],
        ]
        for name, r in optimisers.items()
    ]
    rows += [
        [f'momentum + {name}', schedule_lr, r['final_loss'], '', '', r['test_accuracy']]
        for name, r in schedules.items()
        if name != 'constant'
    ]
    table = markdown_table(
        [
            'optimiser',
            'best lr',
            'final train loss',
            "steps to SGD's final loss",
            'speed-up vs SGD',
            'test accuracy',
        ],
        rows,
    )
    return Finding(NUMBER, TITLE, CLAIM, numbers, table, ['optimisers.png'], judge(numbers))

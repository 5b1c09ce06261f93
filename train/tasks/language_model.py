"""Language modelling: next-token cross-entropy, accuracy, bits per character, and samples.

The batch holds `inputs` (batch, T) and `targets` (batch, T) = the inputs shifted by one
token (data/builders/char_corpus.py). The loss is the mean negative log-likelihood of the
targets over the non-padding tokens (targets != PAD_ID):

    J = -(1 / N) Σ_{b,t: y_bt ≠ pad} log ŷ_bt[y_bt]       (nats per token)

and bits per character (bpc) = J / ln 2, reported for the eval split along with accuracy
(top-1 next token) and perplexity exp(J).

Truncated backpropagation through time (`carried_streams` > 0, set by the loop when
`config.dataset.order == 'streams'`): the training batch's rows are parallel contiguous
streams (data.pipeline.stream_loader), and a recurrent model's final state after one step is
the initial state of the next. The state lives in the train state's `model_state` under
'tbptt_carry', so it is checkpointed with everything else and a resumed run continues
exactly. Gradients stop at the step boundary (each step differentiates only its own T
tokens: that is the truncation); rows whose batch says `reset` (the first step of an epoch)
start from zeros. Evaluation always starts every window from a zero state.

Outputs: `loss_by_position.png` (eval bits per character against the position in the
window: how much context helps), and `samples.txt`, text the model writes from a prompt
(`write_samples`, called by the loop at the end of a run).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from data import DatasetInfo
from data.tokenizers import NUM_SPECIAL, PAD_ID, CharVocabulary, Vocabulary, WordVocabulary
from nets.models.language_model import RecurrentLM, sample
from train import pictures
from train.tasks.base import Task

CARRY_COLLECTION = 'tbptt_carry'

# What samples.txt holds: greedy continuation and a few draws at a moderate temperature.
SAMPLE_PROMPT = 'The '
SAMPLE_LENGTH = 400
SAMPLE_TEMPERATURE = 0.8
NUM_SAMPLES = 3


def token_vocabulary(class_names: tuple[str, ...]) -> Vocabulary:
    """The vocabulary behind a data set's target classes: character-level when every token
    is one character, else words."""
    tokens = class_names[NUM_SPECIAL:]
    if all(len(token) == 1 for token in tokens):
        return CharVocabulary(tokens)
    return WordVocabulary(tokens)


def carry_to_state(carry: Any) -> dict[str, jax.Array]:
    """A model's carry (tuples, LSTMState) -> a flat dict of arrays that checkpoints as is."""
    return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(carry))}


def state_to_carry(state: dict[str, jax.Array], like: Any) -> Any:
    """Inverse of `carry_to_state`, with the structure of `like`."""
    leaves = [state[str(i)] for i in range(len(state))]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def masked_token_sums(
    logits: jax.Array, targets: jax.Array, row_mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Sums of next-token NLL (nats) and correct predictions over non-padding targets, in
    total and per position (T,), and the token counts."""
    weights = (targets != PAD_ID).astype(jnp.float32)
    if row_mask is not None:
        weights = weights * row_mask.astype(jnp.float32)[:, None]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return {
        'nll_sum': jnp.sum(nll * weights),
        'correct': jnp.sum(correct * weights),
        'tokens': jnp.sum(weights),
        'position_nll': jnp.sum(nll * weights, axis=0),
        'position_tokens': jnp.sum(weights, axis=0),
    }


class LanguageModelTask(Task):
    """Loss, metrics and samples of a next-token model (RecurrentLM, TransformerLM).

    With `config.dataset.order='streams'` (truncated BPTT) row r of consecutive batches reads
    consecutive text, and the model's final carry of one step is the next step's initial
    carry (kept in `model_state`, one per row)."""

    carries_streams = True

    @classmethod
    def options(cls, config) -> dict[str, Any]:
        return {'carried_streams': config.batch_size if config.dataset.order == 'streams' else 0}

    @classmethod
    def accumulates_gradients(cls, config) -> bool:
        return config.dataset.order != 'streams'  # the state runs across the rows of a batch

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        augmenter: Any = None,
        *,
        carried_streams: int = 0,
    ):
        if augmenter is not None:
            raise ValueError('the language_model task has no augmentation; set config.augment = ()')
        if len(info.example_shape) != 1 or info.image_dtype not in ('int32', 'int64'):
            raise ValueError(
                f'language modelling needs (T,) int token ids; data set {info.name!r} '
                f'has {info.image_dtype} examples of shape {info.example_shape}'
            )
        if carried_streams and not isinstance(model, RecurrentLM):
            raise ValueError(
                f"config.dataset.order='streams' carries a recurrent state; "
                f"{type(model).__name__} has none, use order 'shuffled'"
            )
        super().__init__(model, info)
        self.carried_streams = carried_streams
        self.vocabulary = token_vocabulary(info.class_names)

    @property
    def init_batch_shape(self) -> tuple[int, ...]:
        return (1, *self.info.example_shape)

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        tokens = jnp.zeros(self.init_batch_shape, jnp.int32)
        variables = dict(self.model.init({'params': rng, 'dropout': rng}, tokens, train=True))
        if self.carried_streams:
            variables[CARRY_COLLECTION] = carry_to_state(
                self.model.initial_carry(self.carried_streams)
            )
        return variables

    def _apply(self, params, model_state, inputs, *, train: bool, rng=None, initial_carry=None):
        """-> (logits, updated model collections, final carry or None)."""
        collections = {k: v for k, v in model_state.items() if k != CARRY_COLLECTION}
        variables = {'params': params, **collections}
        kwargs = dict(train=train)
        if train:
            kwargs['rngs'] = {'dropout': rng}
        if initial_carry is not None:
            kwargs.update(initial_carry=initial_carry, return_carry=True)
        if train and collections:
            output, collections = self.model.apply(
                variables, inputs, mutable=list(collections), **kwargs
            )
        else:
            output = self.model.apply(variables, inputs, **kwargs)
        carry, logits = output if initial_carry is not None else (None, output)
        return logits, dict(collections), carry

    def train_loss(self, params, model_state, batch, rng):
        inputs, targets = batch['inputs'], batch['targets']
        initial_carry = None
        if self.carried_streams:
            like = self.model.initial_carry(inputs.shape[0])
            carried = state_to_carry(model_state[CARRY_COLLECTION], like)
            # A new epoch restarts the streams: those rows begin from the zero state.
            reset = batch['reset']
            initial_carry = jax.tree.map(
                lambda c: jnp.where(reset.reshape(-1, *(1,) * (c.ndim - 1)), jnp.zeros_like(c), c),
                carried,
            )
        logits, new_state, final_carry = self._apply(
            params, model_state, inputs, train=True, rng=rng, initial_carry=initial_carry
        )
        if final_carry is not None:
            # The carry is passed on as data: no gradient crosses the step boundary.
            new_state[CARRY_COLLECTION] = carry_to_state(jax.lax.stop_gradient(final_carry))
        sums = masked_token_sums(logits, targets)
        tokens = jnp.maximum(sums['tokens'], 1.0)
        loss = sums['nll_sum'] / tokens
        return loss, (new_state, {'loss': loss, 'accuracy': sums['correct'] / tokens})

    def eval_sums(self, params, model_state, batch) -> dict[str, jax.Array]:
        logits, _, _ = self._apply(params, model_state, batch['inputs'], train=False)
        return masked_token_sums(logits, batch['targets'], batch['mask'])

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        tokens = max(float(sums['tokens']), 1.0)
        loss = float(sums['nll_sum']) / tokens
        return {
            'loss': loss,
            'accuracy': float(sums['correct']) / tokens,
            'bits_per_character': loss / math.log(2),
            'perplexity': math.exp(min(loss, 700.0)),
            'tokens': int(sums['tokens']),
        }

    def write_pictures(self, picture_dir: Path, sums: dict[str, np.ndarray]) -> list[Path]:
        counts = np.asarray(sums['position_tokens'], np.float64)
        bits = np.asarray(sums['position_nll'], np.float64) / np.maximum(counts, 1) / math.log(2)
        fig, ax = pictures.figure(figsize=(6, 3.6))
        ax.plot(np.arange(len(bits))[counts > 0], bits[counts > 0], lw=1)
        ax.set_xlabel('position t in the window (the model has read t + 1 characters)')
        ax.set_ylabel('bits per character (eval)')
        ax.grid(alpha=0.3)
        return [pictures.save_figure(fig, picture_dir / 'loss_by_position.png')]

    def samples(
        self,
        params: Any,
        *,
        prompt: str = SAMPLE_PROMPT,
        length: int = SAMPLE_LENGTH,
        temperature: float = SAMPLE_TEMPERATURE,
        num_samples: int = NUM_SAMPLES,
        seed: int = 0,
    ) -> list[str]:
        """Continuations of `prompt` (the prompt included): the greedy one first, then
        `num_samples` drawn at `temperature`."""
        ids = jnp.asarray([self.vocabulary.encode(prompt)], jnp.int32)
        texts = []
        for sample_temperature, rows in ((0.0, 1), (temperature, num_samples)):
            run = jax.jit(
                functools.partial(sample, self.model, length=length, temperature=sample_temperature)
            )
            tokens = run(
                {'params': params}, jnp.repeat(ids, rows, axis=0), rng=jax.random.key(seed)
            )
            texts += [
                prompt + self.vocabulary.decode(row, stop_at_eos=False)
                for row in np.asarray(tokens)
            ]
        return texts

    def write_samples(self, out_dir: Path, variables: dict[str, Any]) -> list[Path]:
        """samples.txt in `out_dir`: the greedy continuation of the prompt and a few draws
        (from the zero state, not the training streams')."""
        texts = self.samples(variables['params'])
        parts = [f'[greedy, prompt {SAMPLE_PROMPT!r}]\n{texts[0]}']
        parts += [
            f'[temperature {SAMPLE_TEMPERATURE}, sample {i + 1}]\n{text}'
            for i, text in enumerate(texts[1:])
        ]
        path = Path(out_dir) / 'samples.txt'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('\n\n'.join(parts) + '\n', encoding='utf-8')
        return [path]

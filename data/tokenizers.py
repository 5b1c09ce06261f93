"""Vocabularies for the sequence data sets: text <-> int token ids, saved as JSON.

Every vocabulary starts with the same four special ids, so models and losses can rely on
them whatever the data set: pad=0 (also the mask: id > 0 is a real token), bos=1, eos=2,
unk=3. Ordinary tokens follow from id 4 in the order the vocabulary was built.

    vocab = WordVocabulary.build(train_texts, min_count=2, lowercase=True)
    ids = vocab.encode_padded("In the beginning.", 16)   # int32 [16], ends in eos, then pad
    vocab.decode(ids)                                     # 'in the beginning.'
    vocab.save(path); load_vocabulary(path) == vocab

`CharVocabulary` splits text into characters (exactly invertible); `WordVocabulary` into
words and single punctuation marks (invertible up to whitespace and, optionally, case).
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
SPECIAL_TOKENS: tuple[str, ...] = ('<pad>', '<bos>', '<eos>', '<unk>')
NUM_SPECIAL = len(SPECIAL_TOKENS)

# Words are runs of letters/digits/underscore; every other visible character is a token of
# its own, so "don't!" -> don ' t ! and splitting never depends on the spacing around marks.
_WORD_PATTERN = re.compile(r'\w+|[^\w\s]')
# Marks written without a space before / after them when tokens are joined back into text.
_NO_SPACE_BEFORE = frozenset('.,;:!?)]}')
_NO_SPACE_AFTER = frozenset('([{¿¡')


class Vocabulary:
    """Token <-> id map: the four special tokens, then `tokens` from id 4 on.

    Subclasses define how text splits into tokens (`split`) and how tokens join back
    (`join`); encoding maps tokens missing from the vocabulary to UNK_ID.
    """

    kind: ClassVar[str] = ''

    def __init__(self, tokens: Iterable[str]):
        tokens = tuple(tokens)
        clashes = sorted(set(tokens) & set(SPECIAL_TOKENS))
        if clashes:
            raise ValueError(f'tokens {clashes} are reserved for the special ids')
        if len(set(tokens)) != len(tokens):
            duplicates = sorted(t for t, n in collections.Counter(tokens).items() if n > 1)
            raise ValueError(f'duplicate tokens: {duplicates[:10]}')
        self._tokens = SPECIAL_TOKENS + tokens
        self._ids = {token: i for i, token in enumerate(self._tokens)}

    # ------------------------------------------------------------ subclass hooks

    def split(self, text: str) -> list[str]:
        """Text -> tokens (strings, not yet looked up)."""
        raise NotImplementedError

    def join(self, tokens: Sequence[str]) -> str:
        """Tokens -> text; `split(join(split(t))) == split(t)` for every text t."""
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------ lookups

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every token in id order, the special tokens first."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.tokens == self.tokens
            and other._options() == self._options()
        )

    def __hash__(self) -> int:
        return hash((self.kind, self._tokens))

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={len(self)}, {self._options()})'

    def token_id(self, token: str) -> int:
        """The id of `token`, UNK_ID if it is not in the vocabulary."""
        return self._ids.get(token, UNK_ID)

    # ------------------------------------------------------------ encode / decode

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by BOS_ID / EOS_ID."""
        ids = [self.token_id(token) for token in self.split(text)]
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def encode_padded(
        self, text: str, length: int, *, bos: bool = False, eos: bool = True, truncate: bool = False
    ) -> np.ndarray:
        """int32 [length]: `encode(text, bos=, eos=)` followed by PAD_ID.

        Raises ValueError when the ids do not fit, unless `truncate` (then the tail is cut,
        eos included).
        """
        ids = self.encode(text, bos=bos, eos=eos)
        if len(ids) > length:
            if not truncate:
                raise ValueError(
                    f'{len(ids)} token ids do not fit in length {length}: {text[:80]!r}'
                )
            ids = ids[:length]
        padded = np.full(length, PAD_ID, dtype=np.int32)
        padded[: len(ids)] = ids
        return padded

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Text of `ids`: pad and bos are skipped, decoding stops at the first eos (unless
        `stop_at_eos=False`, which skips it), unknown and out-of-range ids read '<unk>'."""
        tokens = []
        for i in (int(i) for i in ids):
            if i == EOS_ID:
                if stop_at_eos:
                    break
                continue
            if i in (PAD_ID, BOS_ID):
                continue
            tokens.append(
                self._tokens[i] if NUM_SPECIAL <= i < len(self._tokens) else SPECIAL_TOKENS[UNK_ID]
            )
        return self.join(tokens)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; `vocabulary_from_dict` inverts it."""
        return {
            'kind': self.kind,
            'special_tokens': list(SPECIAL_TOKENS),
            'tokens': list(self._tokens[NUM_SPECIAL:]),
            **self._options(),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Writes `to_dict()` as UTF-8 JSON."""
        Path(path).write_text(
            json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding='utf-8'
        )


class CharVocabulary(Vocabulary):
    """One token per character; `decode(encode(t)) == t` when every character is known."""

    kind = 'char'

    def split(self, text: str) -> list[str]:
        return list(text)

    def join(self, tokens: Sequence[str]) -> str:
        return ''.join(tokens)

    @classmethod
    def build(cls, texts: Iterable[str], *, min_count: int = 1) -> CharVocabulary:
        """The characters seen at least `min_count` times, sorted by code point."""
        counts = collections.Counter()
        for text in texts:
            counts.update(text)
        return cls(sorted(c for c, n in counts.items() if n >= min_count))


class WordVocabulary(Vocabulary):
    """Words and single punctuation marks; optionally lower-cased before lookup.

    `join` puts one space between tokens except before closing marks (`.,;:!?)]}`) and
    after opening ones (`([{¿¡`), so decoded text reads naturally and re-splits into the
    same tokens.
    """

    kind = 'word'

    def __init__(self, tokens: Iterable[str], *, lowercase: bool = False):
        self.lowercase = lowercase
        super().__init__(tokens)

    def _options(self) -> dict[str, Any]:
        return {'lowercase': self.lowercase}

    def split(self, text: str) -> list[str]:
        return _WORD_PATTERN.findall(text.lower() if self.lowercase else text)

    def join(self, tokens: Sequence[str]) -> str:
        pieces = []
        for i, token in enumerate(tokens):
            if i and token not in _NO_SPACE_BEFORE and tokens[i - 1] not in _NO_SPACE_AFTER:
                pieces.append(' ')
            pieces.append(token)
        return ''.join(pieces)

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        lowercase: bool = False,
    ) -> WordVocabulary:
        """Tokens seen at least `min_count` times, most frequent first (ties alphabetical,
        so the result depends only on the texts); at most `max_size` ids in all, specials
        included."""
        vocab = cls((), lowercase=lowercase)
        counts = collections.Counter()
        for text in texts:
            counts.update(vocab.split(text))
        ranked = sorted(
            (t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            if max_size < NUM_SPECIAL:
                raise ValueError(
                    f'max_size {max_size} leaves no room for the {NUM_SPECIAL} special tokens'
                )
            ranked = ranked[: max_size - NUM_SPECIAL]
        return cls(ranked, lowercase=lowercase)


_KINDS: dict[str, type[Vocabulary]] = {cls.kind: cls for cls in (CharVocabulary, WordVocabulary)}


def vocabulary_from_dict(description: dict[str, Any]) -> Vocabulary:
    """Inverse of `Vocabulary.to_dict()`."""
    kind = description.get('kind')
    if kind not in _KINDS:
        raise ValueError(f'unknown vocabulary kind {kind!r}; known: {", ".join(sorted(_KINDS))}')
    if tuple(description.get('special_tokens', SPECIAL_TOKENS)) != SPECIAL_TOKENS:
        raise ValueError(
            f'vocabulary has special tokens {description["special_tokens"]}, '
            f'expected {list(SPECIAL_TOKENS)}'
        )
    options = {
        k: v for k, v in description.items() if k not in ('kind', 'special_tokens', 'tokens')
    }
    return _KINDS[kind](description['tokens'], **options)


def load_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """A vocabulary written by `Vocabulary.save`."""
    return vocabulary_from_dict(json.loads(Path(path).read_text(encoding='utf-8')))

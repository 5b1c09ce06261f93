"""Tests for the sequence data sets (char_corpus, translation, addition, digit_captions) and
the vocabularies of data.tokenizers they share."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import catalog, tokenizers
from data.builders import addition, char_corpus, digit_captions, mnist5k, sword, translation
from data.prepare import prepare
from data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CharVocabulary, WordVocabulary

SEQUENCE_SETS = ('char_corpus', 'translation', 'addition', 'digit_captions')
SMALL_ADDITION = {'num_train': 2000, 'num_test': 200}
SMALL_CAPTIONS = {'num_train': 300, 'num_test': 100}
FAKE_TRANSLATION_SPLITS = {'num_validation': 2, 'num_test': 2}


# ---------------------------------------------------------------- a tiny SWORD library


def write_ztext_module(
    library: Path, module: str, testaments: dict[str, list[str]], slots_per_block: int = 3
) -> None:
    """A zText module (conf + .bzs/.bzv/.bzz per testament) holding the given verse slots."""
    data_path = f'modules/texts/ztext/{module.lower()}'
    (library / 'mods.d').mkdir(parents=True, exist_ok=True)
    (library / 'mods.d' / f'{module.lower()}.conf').write_text(
        f'[{module}]\nDataPath=./{data_path}/\nModDrv=zText\nCompressType=ZIP\n'
        'Encoding=UTF-8\nSourceType=OSIS\n# DataPath=ignored/comment\n',
        encoding='utf-8',
    )
    directory = library / data_path
    directory.mkdir(parents=True, exist_ok=True)
    for testament, slots in testaments.items():
        verse_index, block_index, compressed = b'', b'', b''
        # Several blocks, so the reader must follow the block index.
        for first in range(0, len(slots), slots_per_block):
            block, offsets = b'', []
            for slot in slots[first : first + slots_per_block]:
                data = slot.encode('utf-8')
                offsets.append((len(block), len(data)))
                block += data
            number = first // slots_per_block
            for offset, size in offsets:
                verse_index += struct.pack(
                    '<IIH', number if size else 0, offset if size else 0, size
                )
            packed = zlib.compress(block)
            block_index += struct.pack('<III', len(compressed), len(packed), len(block))
            compressed += packed
        for suffix, payload in (('bzv', verse_index), ('bzs', block_index), ('bzz', compressed)):
            (directory / f'{testament}.{suffix}').write_bytes(payload)


def osis_book(book: str, chapters: list[list[str]]) -> list[str]:
    """Slots of one book: book heading, then per chapter a heading slot and its verses."""
    slots = [
        f'<div canonical="true" osisID="{book}" sID="b{book}" type="book"/> '
        f'<title type="main">{book}</title>'
    ]
    for number, verses in enumerate(chapters, start=1):
        slots.append(f'<chapter n="{number}" osisID="{book}.{number}" sID="{book}.{number}"/>')
        slots.extend(verses)
    # Closing tags land in the last verse, as osis2mod writes them.
    slots[-1] += (
        f' <chapter eID="{book}.{len(chapters)}"/><div eID="b{book}" osisID="{book}" type="book"/>'
    )
    return slots


LONG_ENGLISH = ' '.join(['word'] * 70) + '.'
FAKE_ENGLISH = {
    'ot': [
        '',
        '<milestone type="x-importer"/>',
        *osis_book(
            'Gen',
            [
                [
                    (
                        '<w lemma="strong:H7225">In the beginning</w>, '
                        'God<note placement="foot">A note.</note> created.'
                    ),
                    '',  # Gen.1.2 missing in English: the pair is dropped.
                    'God said, “Let there be light.”',
                    'God saw the light was good.',
                    LONG_ENGLISH,
                ],
                [
                    'The heavens and the earth were finished.',
                    'God blessed the seventh day.',
                    'These are the generations of the heavens.',
                ],
            ],
        ),
        *osis_book(
            'Ps',
            [
                [
                    '<title canonical="true" type="psalm">A Psalm.</title> <title>Book One</title>'
                    'Blessed is the man.',
                    'His delight is in the law.',
                    'Yahweh spoke to Moses, saying,',
                ]
            ],
        ),
    ],
    'nt': [
        '',
        '',
        *osis_book(
            'John',
            [
                [
                    'In the beginning was the Word.',
                    'The same was in the beginning with God.',
                    'Yahweh spoke to Moses, saying,',
                    'All things were made through him.',
                    'In him was life &amp; light.',
                ]
            ],
        ),
    ],
}
FAKE_SPANISH = {
    'ot': [
        '',
        '<milestone type="x-importer"/>',
        *osis_book(
            'Gen',
            [
                [
                    'EN el principio crió Dios.',
                    'Y la tierra estaba desordenada.',
                    'Y dijo Dios: Sea la luz.',
                    (
                        'Y vió Dios que la luz era buena y apartó Dios la luz de las tinieblas '
                        'y llamó Dios á la luz Día.'
                    ),
                    'Palabra larga.',
                ],
                [
                    'Y fueron acabados los cielos y la tierra.',
                    'Y bendijo Dios al día séptimo.',
                    'Estos son los orígenes de los cielos.',
                ],
            ],
        ),
        *osis_book(
            'Ps',
            [
                [
                    'Salmo. Bienaventurado el varón.',
                    'En la ley de Jehová es su voluntad.',
                    'Habló Jehová á Moisés, diciendo:',
                ]
            ],
        ),
    ],
    'nt': [
        '',
        '',
        *osis_book(
            'John',
            [
                [
                    'EN el principio era el Verbo.',
                    'Este era en el principio con Dios.',
                    'Habló Jehová á Moisés, diciendo:',
                    'Todas las cosas por él fueron hechas.',
                    'En él estaba la vida y la luz.',
                ]
            ],
        ),
    ],
}
# What clean_pairs keeps, in canonical order (see FAKE_ENGLISH / FAKE_SPANISH above).
FAKE_KEPT_REFERENCES = [
    'Gen.1.1',
    'Gen.1.3',
    'Gen.2.1',
    'Gen.2.2',
    'Gen.2.3',
    'Ps.1.1',
    'Ps.1.2',
    'Ps.1.3',
    'John.1.1',
    'John.1.2',
    'John.1.4',
    'John.1.5',
]


@pytest.fixture(scope='session')
def sword_library(tmp_path_factory) -> Path:
    library = tmp_path_factory.mktemp('sword')
    write_ztext_module(library, translation.SOURCE_MODULE, FAKE_ENGLISH)
    write_ztext_module(library, translation.TARGET_MODULE, FAKE_SPANISH)
    return library


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory, sword_library) -> Path:
    """The four sequence sets prepared once: char_corpus at full size through data.prepare,
    the others small (and translation from the tiny SWORD library)."""
    directory = tmp_path_factory.mktemp('tfds_text')
    prepare(['char_corpus'], directory, verbose=False)
    builder_kwargs = {
        'addition': SMALL_ADDITION,
        'digit_captions': SMALL_CAPTIONS,
        'translation': {'source_dir': sword_library, **FAKE_TRANSLATION_SPLITS},
    }
    for name, kwargs in builder_kwargs.items():
        catalog.get_builder(name, directory, **kwargs).download_and_prepare()
    return directory


def read_split(name: str, split: str, data_dir: Path) -> list[dict]:
    source = catalog.load_source(name, split, data_dir)
    return list(source.__getitems__(list(range(len(source)))))


def text(value) -> str:
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- tokenizers


def test_special_ids_are_shared():
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    for vocab in (CharVocabulary('ab'), WordVocabulary(['a'])):
        assert vocab.tokens[:4] == tokenizers.SPECIAL_TOKENS
        assert vocab.token_id('<eos>') == EOS_ID and vocab.token_id('never seen') == UNK_ID
    with pytest.raises(ValueError, match='reserved'):
        WordVocabulary(['<pad>'])
    with pytest.raises(ValueError, match='duplicate'):
        CharVocabulary('aba')


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet='ab c\n’é', max_size=40))
def test_char_vocabulary_round_trip(sample):
    vocab = CharVocabulary.build(['ab c\n’é'])
    assert vocab.decode(vocab.encode(sample, bos=True, eos=True)) == sample
    assert vocab.decode(vocab.encode_padded(sample, 50)) == sample


def test_char_vocabulary_is_sorted_and_marks_unknowns():
    vocab = CharVocabulary.build(['banana', 'ab'], min_count=2)
    assert vocab.tokens[4:] == ('a', 'b', 'n')
    assert vocab.encode('bax') == [5, 4, UNK_ID]
    assert vocab.decode(vocab.encode('bax')) == 'ba<unk>'


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZé1 ,.;:!?()¿¡“”’'-\n")), max_size=40))
def test_word_split_join_split_is_split(sample):
    for vocab in (WordVocabulary([]), WordVocabulary([], lowercase=True)):
        tokens = vocab.split(sample)
        assert vocab.split(vocab.join(tokens)) == tokens


def test_word_vocabulary_build_counts_order_and_case():
    texts = ['The cat sat.', 'the dog sat!', 'A cat.']
    vocab = WordVocabulary.build(texts, min_count=2, lowercase=True)
    # Most frequent first, ties alphabetical; "dog" and "a" are below the cutoff.
    assert vocab.tokens[4:] == ('.', 'cat', 'sat', 'the')
    assert (
        vocab.decode(vocab.encode('The cat sat, the dog sat.'))
        == 'the cat sat <unk> the <unk> sat.'
    )
    assert len(WordVocabulary.build(texts, max_size=6)) == 6
    cased = WordVocabulary.build(texts)
    assert 'The' in cased and 'the' in cased
    assert cased.join(['¿', 'Who', '(', 'me', ')', '?', '“', 'Yes', '”']) == '¿Who (me)? “ Yes ”'


def test_encode_padded_frames_pads_and_checks_length():
    vocab = CharVocabulary('abc')
    ids = vocab.encode_padded('cab', 6, bos=True)
    assert ids.dtype == np.int32 and ids.tolist() == [BOS_ID, 6, 4, 5, EOS_ID, PAD_ID]
    with pytest.raises(ValueError, match='do not fit'):
        vocab.encode_padded('abcabc', 6)
    assert vocab.encode_padded('abcabc', 4, truncate=True).tolist() == [4, 5, 6, 4]
    # Decoding skips pad and bos, stops at eos unless told not to, maps stray ids to <unk>.
    assert vocab.decode([BOS_ID, 4, EOS_ID, 5]) == 'a'
    assert vocab.decode([4, EOS_ID, 5, PAD_ID, 99], stop_at_eos=False) == 'ab<unk>'


@pytest.mark.parametrize(
    'vocab',
    [
        CharVocabulary.build(['héllo\n wörld']),
        WordVocabulary.build(['Hello, world!'], lowercase=True),
    ],
)
def test_vocabulary_save_load_round_trip(tmp_path, vocab):
    path = tmp_path / 'vocab.json'
    vocab.save(path)
    loaded = tokenizers.load_vocabulary(path)
    assert loaded == vocab and type(loaded) is type(vocab) and loaded.tokens == vocab.tokens
    assert loaded.encode('hello, world') == vocab.encode('hello, world')
    with pytest.raises(ValueError, match='unknown vocabulary kind'):
        tokenizers.vocabulary_from_dict({**vocab.to_dict(), 'kind': 'bpe'})


# ---------------------------------------------------------------- catalog


def test_sequence_sets_are_registered():
    assert set(SEQUENCE_SETS) <= set(catalog.list_datasets())


@pytest.mark.parametrize('name', SEQUENCE_SETS)
def test_unprepared_sequence_set_fails_fast_with_command(tmp_path, name):
    start = time.perf_counter()
    with pytest.raises(catalog.DatasetNotPreparedError) as error:
        catalog.load_source(name, 'train', tmp_path)
    assert time.perf_counter() - start < 1.0
    assert f'python -m data.prepare --datasets={name} --data_dir={tmp_path}' in str(error.value)


@pytest.mark.parametrize(
    'name,splits,shape,dtype,vocab_sizes',
    [
        ('char_corpus', {'train': 1634, 'validation': 90, 'test': 90}, (256,), 'int32', None),
        ('addition', {'train': 2000, 'test': 200}, (8,), 'int32', {'inputs': 15, 'targets': 15}),
        ('digit_captions', {'train': 300, 'test': 100}, (28, 112, 1), 'uint8', {'targets': 14}),
        ('translation', {'train': 8, 'validation': 2, 'test': 2}, (64,), 'int32', None),
    ],
)
def test_dataset_info_of_sequence_sets(data_dir, name, splits, shape, dtype, vocab_sizes):
    info = catalog.dataset_info(name, data_dir)
    vocabularies = catalog.load_vocabularies(name, data_dir)
    if name == 'char_corpus':  # The split sizes depend on the Python release's documentation.
        assert sum(info.splits.values()) > 1000 and list(info.splits) == list(splits)
    else:
        assert info.splits == splits
    assert info.example_shape == shape and info.image_dtype == dtype
    assert info.vocab_sizes == {feature: len(vocab) for feature, vocab in vocabularies.items()}
    if vocab_sizes is not None:
        assert info.vocab_sizes == vocab_sizes
    assert (
        info.num_classes == len(vocabularies['targets'])
        and info.class_names == vocabularies['targets'].tokens
    )
    if dtype == 'uint8':  # Image inputs get their normalisation statistics...
        assert len(info.mean) == 1 and 0 < info.mean[0] < 0.5 and 0 < info.std[0] < 0.5
    else:  # ...token inputs none.
        assert info.mean == () and info.std == ()


def test_image_sets_have_no_vocabularies(data_dir):
    prepare(['digits'], data_dir, verbose=False)
    assert catalog.dataset_info('digits', data_dir).vocab_sizes == {}
    assert catalog.load_vocabularies('digits', data_dir) == {}


# ---------------------------------------------------------------- char_corpus


def test_char_corpus_windows_are_the_text_split_by_position(data_dir):
    vocab = catalog.load_vocabularies('char_corpus', data_dir)['inputs']
    corpus = char_corpus.load_text()
    assert vocab == CharVocabulary.build([char_corpus.split_text(corpus)['train'][1]])
    assert len(corpus) > 400_000 and 80 <= len(vocab) <= 150
    ranges = {}
    for split in ('train', 'validation', 'test'):
        records = read_split('char_corpus', split, data_dir)
        offsets = np.array([r['offset'] for r in records])
        step = char_corpus.SEQUENCE_LENGTH
        np.testing.assert_array_equal(np.diff(offsets), step)  # Contiguous, no gaps or overlap.
        ranges[split] = (offsets[0], offsets[-1] + step + 1)
        for r in records[:3] + records[-2:]:
            assert r['inputs'].shape == (step,) and r['inputs'].dtype == np.int32
            np.testing.assert_array_equal(r['inputs'][1:], r['targets'][:-1])
            window = corpus[r['offset'] : r['offset'] + step + 1]
            expected = vocab.encode(window)
            np.testing.assert_array_equal(
                np.concatenate([r['inputs'], r['targets'][-1:]]), expected
            )
            if split == 'train':  # Every train character is in the vocabulary.
                assert vocab.decode(np.concatenate([r['inputs'], r['targets'][-1:]])) == window
    # Splits in text order and disjoint; together they cover 90/5/5 of the text.
    assert ranges['train'][0] == 0
    assert (
        ranges['train'][1] <= ranges['validation'][0] < ranges['validation'][1] <= ranges['test'][0]
    )
    assert ranges['test'][1] <= len(corpus)
    assert abs(ranges['validation'][0] / len(corpus) - 0.90) < 0.001


# ---------------------------------------------------------------- addition


def test_addition_examples_are_correct_sums(data_dir):
    vocab = addition.VOCABULARY
    seen = {}
    for split in ('train', 'test'):
        records = read_split('addition', split, data_dir)
        seen[split] = {text(r['source_text']) for r in records}
        assert len(seen[split]) == len(records)  # No repeated question within a split.
        for r in records:
            question, answer = text(r['source_text']), text(r['target_text'])
            a, b = map(int, question.split('+'))
            assert 0 <= a <= 999 and 0 <= b <= 999 and int(answer) == a + b
            assert r['inputs'].shape == (addition.INPUT_LENGTH,) and r['targets'].shape == (
                addition.TARGET_LENGTH,
            )
            assert vocab.decode(r['inputs']) == question and vocab.decode(r['targets']) == answer
            assert EOS_ID in r['targets']
    assert not seen['train'] & seen['test']
    assert catalog.load_vocabularies('addition', data_dir)['inputs'] == vocab


def test_addition_pairs_depend_only_on_seed_and_sizes():
    first, again = addition.sample_pairs(100, 10), addition.sample_pairs(100, 10)
    for split in first:
        np.testing.assert_array_equal(first[split], again[split])
    # Distinct ordered pairs within and across splits, operands in range.
    pairs = np.concatenate(list(addition.sample_pairs(5000, 1000).values()))
    assert (
        len({tuple(p) for p in pairs.tolist()}) == 6000 and pairs.min() >= 0 and pairs.max() <= 999
    )


# ---------------------------------------------------------------- digit_captions


def test_digit_captions_match_the_digits_they_show(data_dir):
    pools = mnist5k.load_arrays()
    pool_labels = {split: {image.tobytes(): set() for image in pools[split][0]} for split in pools}
    for split, (images, labels) in pools.items():
        for image, label in zip(images, labels):
            pool_labels[split][image.tobytes()].add(int(label))
    vocab = digit_captions.VOCABULARY
    size = digit_captions.DIGIT_SIZE
    for split in ('train', 'test'):
        records = read_split('digit_captions', split, data_dir)
        counts = set()
        for r in records:
            image, slots = r['image'], r['slot_labels']
            assert (
                image.shape == (size, size * digit_captions.NUM_SLOTS, 1)
                and image.dtype == np.uint8
            )
            filled = [int(d) for d in slots if d != digit_captions.EMPTY_SLOT]
            counts.add(len(filled))
            words = text(r['target_text']).split()
            assert words == [digit_captions.DIGIT_NAMES[d] for d in filled]
            assert r['targets'].tolist() == [d + tokenizers.NUM_SPECIAL for d in filled] + [
                EOS_ID
            ] + [PAD_ID] * (digit_captions.NUM_SLOTS - len(filled))
            assert vocab.decode(r['targets']) == text(r['target_text'])
            for slot, digit in enumerate(slots):
                pixels = image[:, slot * size : (slot + 1) * size]
                if digit == digit_captions.EMPTY_SLOT:
                    assert not pixels.any()
                else:  # The slot shows a digit of this split's pool with that label.
                    assert int(digit) in pool_labels[split].get(pixels.tobytes(), set())
        assert counts == {2, 3, 4}


# ---------------------------------------------------------------- translation


def test_sword_reader_numbers_verses_from_the_markup(sword_library):
    verses = sword.read_verses(sword_library, translation.SOURCE_MODULE)
    assert list(verses)[:4] == ['Gen.1.1', 'Gen.1.3', 'Gen.1.4', 'Gen.1.5']  # Gen.1.2 is empty.
    assert 'Gen.2.4' not in verses and 'Gen.2.3' in verses and 'John.1.5' in verses
    assert sword.plain_text(verses['Gen.1.1']) == 'In the beginning, God created.'
    assert (
        sword.plain_text(verses['Ps.1.1']) == 'A Psalm. Blessed is the man.'
    )  # Canonical title kept.
    assert sword.plain_text(verses['John.1.5']) == 'In him was life & light.'


def test_translation_cleaning_keeps_aligned_short_unique_pairs(sword_library):
    pairs = translation.load_pairs(sword_library)
    assert [ref for ref, _, _ in pairs][:3] == ['Gen.1.1', 'Gen.1.3', 'Gen.1.4']
    kept = translation.clean_pairs(pairs)
    # Dropped: Gen.1.4 (lengths differ by more than 2x), Gen.1.5 (over 63 tokens), John.1.3
    # (same English as Ps.1.3).
    assert [ref for ref, _, _ in kept] == FAKE_KEPT_REFERENCES


def test_translation_missing_library_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match='apt-get install sword-text-web sword-text-sparv'):
        translation.load_pairs(tmp_path)


def test_translation_splits_are_disjoint_and_vocabularies_from_train(data_dir):
    vocabularies = catalog.load_vocabularies('translation', data_dir)
    splits = {
        split: read_split('translation', split, data_dir)
        for split in ('train', 'validation', 'test')
    }
    references = {
        split: {text(r['reference']) for r in records} for split, records in splits.items()
    }
    assert sorted(set().union(*references.values())) == sorted(FAKE_KEPT_REFERENCES)
    assert sum(len(r) for r in references.values()) == len(FAKE_KEPT_REFERENCES)
    train = [
        (text(r['reference']), text(r['source_text']), text(r['target_text']))
        for r in splits['train']
    ]
    assert vocabularies == translation.build_vocabularies(train)
    for records in splits.values():
        for r in records:
            for feature, raw in (('inputs', r['source_text']), ('targets', r['target_text'])):
                vocab, ids = vocabularies[feature], r[feature]
                assert ids.shape == (translation.MAX_LENGTH,) and ids.dtype == np.int32
                tokens = vocab.split(text(raw))
                assert ids[len(tokens)] == EOS_ID and not ids[len(tokens) + 1 :].any()
                assert [
                    vocab.tokens[i] if i != UNK_ID else t for i, t in zip(ids, tokens)
                ] == tokens


def test_translation_split_is_one_fixed_shuffle():
    pairs = [(f'Gen.1.{i}', f'english {i}', f'español {i}') for i in range(50)]
    first = translation.split_pairs(pairs, num_validation=5, num_test=5)
    assert first == translation.split_pairs(pairs, num_validation=5, num_test=5)
    assert first != translation.split_pairs(pairs, num_validation=5, num_test=5, seed=1)
    assert sorted(sum(first.values(), [])) == sorted(pairs)
    assert [len(first[s]) for s in ('train', 'validation', 'test')] == [40, 5, 5]
    with pytest.raises(ValueError, match='nothing to train on'):
        translation.split_pairs(pairs, num_validation=25, num_test=25)


@pytest.mark.skipif(
    not all(
        (Path(sword.DEFAULT_LIBRARY) / 'mods.d' / f'{m}.conf').exists()
        for m in (translation.SOURCE_MODULE, translation.TARGET_MODULE)
    ),
    reason='sword-text-web / sword-text-sparv not installed',
)
def test_real_bibles_give_aligned_pairs():
    # Parses and cleans the real modules (a few seconds) rather than preparing them.
    pairs = {
        ref: (source, target)
        for ref, source, target in translation.clean_pairs(translation.load_pairs())
    }
    assert 29_000 < len(pairs) < 31_000
    assert pairs['John.3.16'][0].startswith('For God so loved the world')
    assert pairs['John.3.16'][1].startswith('Porque de tal manera amó Dios al mundo')
    assert pairs['Gen.1.1'] == (
        'In the beginning, God created the heavens and the earth.',
        'EN el principio crió Dios los cielos y la tierra.',
    )

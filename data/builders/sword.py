"""Bible verses from SWORD zText modules (Debian's sword-text-* packages), without libsword.

A SWORD library is a folder with `mods.d/<module>.conf` files (key=value) and the module
data where the conf's DataPath says. A zText module stores each testament as three files:
`ot.bzv` / `nt.bzv` hold one 10-byte little-endian entry per verse slot (block number u32,
offset u32 and size u16 inside the decompressed block), `*.bzs` one 12-byte entry per block
(offset u32, size u32, decompressed size u32 in `*.bzz`), and `*.bzz` the zlib-compressed
blocks. The slots follow the module's versification: a testament heading, the module
heading, then per book a book-heading slot and per chapter a chapter-heading slot followed
by one slot per verse. Instead of embedding versification tables we number verses from
the OSIS markup itself: a slot holding a `<chapter osisID="Gen.1">` start tag opens a
chapter and the slots after it are verses 1, 2, ...; a slot holding a book start
(`<div type="book" sID=...>`) closes it.
"""

from __future__ import annotations

import html
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

DEFAULT_LIBRARY = '/usr/share/sword'
LIBRARY_ENV = 'SWORD_PATH'  # SWORD's own variable for the library folder.

_VERSE_ENTRY = struct.Struct('<IIH')  # block, offset in block, size
_BLOCK_ENTRY = struct.Struct('<III')  # offset in .bzz, compressed size, decompressed size
_CHAPTER_START = re.compile(r'<chapter\b[^>]*\bosisID="([^"]+)"')
_DIV_TAG = re.compile(r'<div\b[^>]*>')
_START_ID = re.compile(r'\ssID="')
# Footnotes, editorial headings and speaker labels are not part of the verse text; canonical
# titles (a psalm's "A Psalm by David, ...") are, and other translations print them in verse 1.
# Notes go first: they also sit inside titles.
_NOTE = re.compile(r'<note\b[^>]*?(?<!/)>.*?</note>', re.DOTALL)
_HEADING = re.compile(r'<(title|speaker)\b([^>]*?)(?<!/)>(.*?)</\1>', re.DOTALL)
# Removed elements leave a space (they often stand between two words); none belongs before
# a closing mark.
_SPACE_BEFORE_MARK = re.compile(r'\s+([,.;:!?)\]])')
_TAG = re.compile(r'<[^>]*>')


def resolve_library(library: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else $SWORD_PATH, else the Debian location."""
    return Path(library or os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY)


def read_conf(library: str | os.PathLike, module: str) -> dict[str, str]:
    """The `[module]` section of mods.d/*.conf as key -> value (first value of repeated keys).

    Raises FileNotFoundError when the library has no such module.
    """
    conf_dir = Path(library) / 'mods.d'
    for path in sorted(conf_dir.glob('*.conf')) if conf_dir.is_dir() else ():
        lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
        header = next((line.strip() for line in lines if line.strip().startswith('[')), '')
        if header.lower() != f'[{module.lower()}]':
            continue
        conf = {}
        for line in lines:
            key, sep, value = line.partition('=')
            if sep and not line.lstrip().startswith('#'):
                conf.setdefault(key.strip(), value.strip())
        return conf
    raise FileNotFoundError(f'SWORD module {module!r} not found in {conf_dir}')


def module_dir(library: str | os.PathLike, module: str) -> Path:
    """The folder of a zText module's data files; checks the conf says zText, zlib, UTF-8."""
    conf = read_conf(library, module)
    expected = {'ModDrv': 'zText', 'CompressType': 'ZIP', 'Encoding': 'UTF-8'}
    wrong = {
        k: conf.get(k) for k, v in expected.items() if (conf.get(k) or '').lower() != v.lower()
    }
    if wrong:
        raise ValueError(f'SWORD module {module!r}: expected {expected}, conf has {wrong}')
    return Path(library) / conf['DataPath'].lstrip('./').rstrip('/')


def testament_slots(directory: str | os.PathLike, testament: str) -> Iterator[str]:
    """Every verse slot's raw markup, in slot order ('' for empty slots)."""
    base = Path(directory) / testament
    if not base.with_suffix('.bzv').exists():
        return  # A module may lack a testament.
    verse_index = base.with_suffix('.bzv').read_bytes()
    block_index = base.with_suffix('.bzs').read_bytes()
    compressed = base.with_suffix('.bzz').read_bytes()
    blocks: dict[int, bytes] = {}
    for block, offset, size in _VERSE_ENTRY.iter_unpack(verse_index):
        if size == 0:
            yield ''
            continue
        if block not in blocks:
            start, length, expected = _BLOCK_ENTRY.unpack_from(
                block_index, block * _BLOCK_ENTRY.size
            )
            blocks[block] = zlib.decompress(compressed[start : start + length])
            if len(blocks[block]) != expected:
                raise ValueError(
                    f'{base}.bzz block {block}: {len(blocks[block])} bytes, index says {expected}'
                )
        yield blocks[block][offset : offset + size].decode('utf-8')


def _opens_book(markup: str) -> bool:
    # The start tag has sID; the end tag (in a book's last verse) has eID, and both osisID.
    return any('type="book"' in tag and _START_ID.search(tag) for tag in _DIV_TAG.findall(markup))


def read_verses(library: str | os.PathLike, module: str) -> dict[str, str]:
    """OSIS reference ("Gen.1.1") -> raw verse markup, in canonical order, non-empty only."""
    directory = module_dir(library, module)
    verses = {}
    for testament in ('ot', 'nt'):
        chapter, verse = None, 0
        for markup in testament_slots(directory, testament):
            start = _CHAPTER_START.search(markup)
            if start:
                chapter, verse = start.group(1), 0
            elif _opens_book(markup):
                chapter = None
            elif chapter is not None:
                verse += 1
                if markup:
                    verses[f'{chapter}.{verse}'] = markup
    if not verses:
        raise ValueError(f'SWORD module {module!r} in {directory}: no verses found')
    return verses


def _keep_canonical_title(match: re.Match) -> str:
    element, attributes, content = match.groups()
    return f' {content} ' if element == 'title' and 'canonical="true"' in attributes else ' '


def plain_text(markup: str) -> str:
    """Verse text without footnotes, non-canonical headings, speaker labels or tags; spaces
    collapsed."""
    text = _TAG.sub('', _HEADING.sub(_keep_canonical_title, _NOTE.sub(' ', markup)))
    return _SPACE_BEFORE_MARK.sub(r'\1', ' '.join(html.unescape(text).split()))

"""Where a run's files live: a local folder or a Google Cloud Storage URL (`gs://bucket/dir`).

Every workdir path is an `etils.epath.Path`: local paths behave as `pathlib.Path`, `gs://` URLs
go through fsspec's GCS filesystem (gcsfs; epath would take tf.io.gfile instead were TensorFlow
installed). Orbax and grain take the same paths; orbax writes arrays through TensorStore's own
GCS driver. Credentials are Google's application default credentials for both.

What differs on GCS, and is handled here: objects cannot be appended to or renamed (a rename is
a copy and a delete), writing an object is atomic by itself, and folders do not exist (a prefix
exists once an object is under it).

Pointing the clients at an emulator (tests/test_gcs.py does) takes `STORAGE_EMULATOR_HOST`
(gcsfs, google-cloud-storage), `TENSORSTORE_GCS_HTTP_URL` and `GOOGLE_AUTH_TOKEN_FOR_TESTING`
(TensorStore), and `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` (gcsfs otherwise asks the bucket's
layout over gRPC, which an emulator does not serve, and waits a minute per bucket).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import fsspec
from etils import epath

Path = epath.Path
# Orbax and TensorStore write objects behind gcsfs's back: a cached listing would miss them.
fsspec.config.conf.setdefault('gcs', {}).setdefault('use_listings_cache', False)
REMOTE_PREFIX = 'gs://'


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: a local path made absolute (as the run records it), a gs:// URL
    as it is."""
    path = epath.Path(path)
    return path if is_remote(path) else path.absolute()


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names cloud storage (gs://) rather than a local file."""
    return os.fspath(path).startswith(REMOTE_PREFIX)


def files_under(directory: epath.Path) -> Iterator[epath.Path]:
    """Every file below `directory`, at any depth (epath's rglob refuses gs:// URLs)."""
    for entry in directory.iterdir():
        if entry.is_dir():
            yield from files_under(entry)
        else:
            yield entry


def write_whole(path: epath.Path, text: str) -> None:
    """Writes `path` so that after a crash it is either complete or absent: on GCS an object
    upload is atomic; locally a temporary file is fsynced and renamed, and its folder fsynced."""
    if is_remote(path):
        path.write_text(text)
        return
    temporary = path.with_name(f'{path.name}.tmp')
    with open(temporary, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def move_folder(source: epath.Path, target: epath.Path) -> None:
    """Moves a folder: one rename locally; on GCS, where there are no folders to rename, each
    object is copied to its new name, then the old ones deleted (not atomic: the caller must
    not depend on it being so)."""
    if not is_remote(source):
        os.replace(source, target)
        return
    for file in list(files_under(source)):
        file.copy(target / file.relative_to(source), overwrite=True)
    source.rmtree()

"""Where numbers go: metrics.jsonl (one JSON record per line), TensorBoard events, the console.

Only JAX process 0 writes; the others get a writer that drops everything, so callers never
branch on the process index. Files are strict JSON: a non-finite number (a NaN loss) is written
as null; `train.pictures.read_metrics` reads it back as NaN.

On GCS, where an object cannot be appended to, both are written to a local mirror (a temporary
folder) and copied into the bucket at every `flush` (every checkpoint) and at `close`: what a
killed run loses is what its resumption drops anyway (the records past its last checkpoint).
TensorBoard's own gs:// writer is not used: it would need a second GCS client
(google-cloud-storage) with its own credentials, beside gcsfs.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import shutil
import tempfile
import time
from pathlib import Path as LocalPath
from typing import Any

from absl import logging

from train.progress import finite_or_none
from train.storage import Path, as_path, is_remote


class _LibraryInfoFilter(std_logging.Filter):
    """Drops the INFO lines of orbax, grain and TFDS (several per checkpoint or file); their
    warnings and errors still show."""

    _LIBRARIES = ('/orbax/', '/grain/', '/tensorflow_datasets/')

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            part in record.pathname for part in self._LIBRARIES
        )


def quiet_library_logs() -> None:
    """Keeps the console to the run's own lines (call once from an entry point)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter())


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)


class MetricWriter:
    """Appends records to `<workdir>/metrics.jsonl`, TensorBoard events in
    `<workdir>/tensorboard`. `metrics_file` is where the run's records can be read back now
    (on GCS, the local mirror; `metrics_url` is the object they are copied to)."""

    def __init__(self, workdir: Path, *, enabled: bool = True):
        workdir = as_path(workdir)
        self.enabled = enabled
        self.metrics_url = workdir / 'metrics.jsonl'
        self.tensorboard_dir = workdir / 'tensorboard'
        self._mirror = None  # the local folder standing in for a gs:// workdir
        self.metrics_file = self.metrics_url
        self._tb = None
        if not enabled:
            return
        local_tensorboard = self.tensorboard_dir
        if is_remote(workdir):
            self._mirror = LocalPath(tempfile.mkdtemp(prefix='deepnets-metrics-'))
            self.metrics_file = self._mirror / 'metrics.jsonl'
            if self.metrics_url.exists():  # a resumed run goes on with the records
                self.metrics_file.write_bytes(self.metrics_url.read_bytes())
            local_tensorboard = self._mirror / 'tensorboard'
        from tensorboardX import SummaryWriter  # pure-Python event writer: no TensorFlow

        self._tb = SummaryWriter(str(local_tensorboard), flush_secs=30)

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {'step': int(step), 'kind': kind, 'time': time.time(), **metrics}
        with open(self.metrics_file, 'a') as f:
            f.write(json.dumps(finite_or_none(record), allow_nan=False) + '\n')
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f'{kind}/{name}', value, int(step))

    def console(
        self,
        step: int,
        total_steps: int,
        kind: str,
        metrics: dict[str, Any],
        eta_seconds: float | None = None,
    ) -> None:
        if not self.enabled:
            return
        parts = [f'{kind} step {step}/{total_steps}']
        parts += [f'{k} {_format(v)}' for k, v in metrics.items()]
        if eta_seconds is not None and math.isfinite(eta_seconds):
            parts.append(f'ETA {int(eta_seconds // 60)}m{int(eta_seconds % 60):02d}s')
        logging.info(' | '.join(parts))

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`: a resumed run rewrites what the interrupted one logged after
        its last checkpoint, so the file holds each step once."""
        if not self.enabled or not self.metrics_file.exists():
            return
        lines = self.metrics_file.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)['step'] <= step]
        self.metrics_file.write_text(''.join(line + '\n' for line in kept))
        self._upload()

    def flush(self) -> None:
        """Writes buffered TensorBoard events to disk, and the mirror to the bucket (at every
        checkpoint, so a killed run loses no points that its checkpoint covers)."""
        if self._tb is not None:
            self._tb.flush()
        self._upload()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._upload()
        if self._mirror is not None:
            shutil.rmtree(self._mirror, ignore_errors=True)
            self._mirror = None
            self.metrics_file = self.metrics_url

    def _upload(self) -> None:
        """Copies the local mirror of a gs:// workdir into the bucket (whole objects)."""
        if self._mirror is None:
            return
        if self.metrics_file.exists():
            self.metrics_url.write_bytes(self.metrics_file.read_bytes())
        for events in sorted((self._mirror / 'tensorboard').glob('*')):
            (self.tensorboard_dir / events.name).write_bytes(events.read_bytes())

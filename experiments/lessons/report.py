"""The lessons report: runs the chosen lessons, then writes `<workdir>/report.md` from every
`finding.json` present, so a partial rerun regenerates the whole report.

    python -m experiments.lessons.report --workdir=workdirs/lessons [--lessons=1,4,9] \
        [--scale=full|tiny] [--data_dir=...] [--rerun] [--copy_to=docs/lessons]

A lesson whose finding.json exists at the same scale is skipped unless --rerun; a lesson that
fails leaves `error.json` in its folder and shows as an error row, and the others still run.
The report holds a summary table (claim, verdict, one-line reason, seconds), then one section
per claim: its text, the verdict and reason, the numbers, the plots (relative links) and the
command that reruns it alone. --copy_to copies report.md and the plots, links kept valid.
Hardware: the 2-core x86-64 CPU; each lesson takes at most ~4 minutes at --scale=full.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from experiments.lessons import LESSONS, SCALES, Finding, check_scale, run_lesson

ERROR_FILE = 'error.json'
FINDING_FILE = 'finding.json'
REASON_CHARS = 200  # the summary table's one-line reason; the section has all of it


def define_flags() -> None:
    """Flags of the command line only: tests import this module beside other absl programs."""
    flags.DEFINE_string('workdir', None, "Folder of the lessons' runs and of report.md.")
    flags.DEFINE_string('lessons', '', 'Comma-separated claim numbers to run; empty: all.')
    flags.DEFINE_enum('scale', 'full', list(SCALES), 'full: the report; tiny: seconds (tests).')
    flags.DEFINE_string(
        'data_dir', None, 'TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).'
    )
    flags.DEFINE_bool('rerun', False, 'Run lessons again even if their finding.json exists.')
    flags.DEFINE_string(
        'copy_to', None, 'Also copy report.md and its plots here (e.g. docs/lessons).'
    )


def parse_lessons(text: str) -> list[int]:
    """'1,4,9' -> [1, 4, 9]; '' -> every lesson."""
    if not text.strip():
        return sorted(LESSONS)
    numbers = [int(part) for part in text.split(',') if part.strip()]
    unknown = [n for n in numbers if n not in LESSONS]
    if unknown:
        raise ValueError(f'no lesson(s) {unknown}; valid: {sorted(LESSONS)}')
    return numbers


def lesson_dir(workdir: Path, number: int) -> Path:
    return Path(workdir) / LESSONS[number]


def read_finding(workdir: Path, number: int) -> Finding | None:
    path = lesson_dir(workdir, number) / FINDING_FILE
    return Finding.from_json(json.loads(path.read_text())) if path.exists() else None


def read_error(workdir: Path, number: int) -> dict | None:
    """The lesson's last failure, unless a finding was written after it."""
    folder = lesson_dir(workdir, number)
    error, finding = folder / ERROR_FILE, folder / FINDING_FILE
    if not error.exists():
        return None
    if finding.exists() and finding.stat().st_mtime > error.stat().st_mtime:
        return None
    return json.loads(error.read_text())


def run_lessons(
    workdir: Path,
    numbers: Sequence[int],
    scale: str = 'full',
    data_dir: str | None = None,
    rerun: bool = False,
) -> dict[int, str]:
    """Runs each lesson (or skips it, see the module docstring); returns what happened to each:
    'ran', 'skipped' or 'error'."""
    check_scale(scale)
    outcome = {}
    for number in numbers:
        existing = read_finding(workdir, number)
        if existing is not None and existing.scale == scale and not rerun:
            print(
                f'lesson {number}: skipped, {FINDING_FILE} at scale {scale} exists '
                '(--rerun runs it again)'
            )
            outcome[number] = 'skipped'
            continue
        folder = lesson_dir(workdir, number)
        started = time.time()
        try:
            finding = run_lesson(number, workdir, scale, data_dir)
        except Exception as error:  # noqa: BLE001 - one failing lesson must not stop the rest
            folder.mkdir(parents=True, exist_ok=True)
            (folder / ERROR_FILE).write_text(
                json.dumps(
                    {
                        'number': number,
                        'scale': scale,
                        'seconds': time.time() - started,
                        'error': f'{type(error).__name__}: {error}',
                        'traceback': traceback.format_exc(),
                    },
                    indent=2,
                )
            )
            print(f'lesson {number}: FAILED after {time.time() - started:.0f} s: {error!r}')
            outcome[number] = 'error'
            continue
        (folder / ERROR_FILE).unlink(missing_ok=True)
        print(
            f'lesson {number} ({finding.title}): {finding.verdict.verdict} in '
            f'{finding.seconds:.0f} s — {finding.verdict.reason}'
        )
        outcome[number] = 'ran'
    return outcome


def _cell(text: str) -> str:
    """Text that stays inside one markdown table cell."""
    return ' '.join(str(text).split()).replace('|', '\\|')


def _one_line(text: str) -> str:
    """A reason shortened for the summary table, the parts that do not hold first."""
    text = ' '.join(text.split())
    details, marker, failed = text.partition(' (does not hold: ')
    if marker:
        text = f'does not hold: {failed.rstrip(")")} — {details}'
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1].rstrip() + '…'


def rerun_command(workdir: Path, number: int, scale: str, data_dir: str | None = None) -> str:
    extra = f' --data_dir={data_dir}' if data_dir else ''
    return (
        f'python -m experiments.lessons.report --workdir={workdir} --lessons={number} '
        f'--scale={scale}{extra} --rerun'
    )


def render_report(workdir: Path, data_dir: str | None = None) -> str:
    """report.md's text from the finding.json (and error.json) files under `workdir`."""
    findings = {n: f for n in sorted(LESSONS) if (f := read_finding(workdir, n)) is not None}
    errors = {n: e for n in sorted(LESSONS) if (e := read_error(workdir, n)) is not None}
    missing = [n for n in sorted(LESSONS) if n not in findings and n not in errors]
    lines = [
        "# The course's claims, each one measured",
        '',
        'Each claim is one small experiment in `experiments/lessons/`; its verdict is '
        "computed by the lesson's `judge()` from the numbers it measured, never written "
        'in advance. Regenerate everything with',
        '',
        f'    python -m experiments.lessons.report --workdir={workdir} --rerun',
        '',
        '| # | claim | verdict | reason | scale | seconds |',
        '|---|---|---|---|---|---|',
    ]
    for number in sorted(set(findings) | set(errors)):
        if number in errors:
            error = errors[number]
            lines.append(
                f'| {number} | [{LESSONS[number]}](#claim-{number}) | **error** | '
                f'{_cell(_one_line(error["error"]))} | {error["scale"]} | '
                f'{error["seconds"]:.0f} |'
            )
            continue
        f = findings[number]
        lines.append(
            f'| {number} | [{_cell(f.title)}](#claim-{number}) | {f.verdict.verdict} | '
            f'{_cell(_one_line(f.verdict.reason))} | {f.scale} | {f.seconds:.0f} |'
        )
    if missing:
        lines += ['', f'Not run yet: claims {", ".join(map(str, missing))}.']
    for number in sorted(set(findings) | set(errors)):
        lines += ['', f'<a id="claim-{number}"></a>', '']
        if number in errors:
            error = errors[number]
            lines += [
                f'## {number}. {LESSONS[number]}: error',
                '',
                '```',
                error['traceback'].rstrip(),
                '```',
            ]
        else:
            f = findings[number]
            lines += [
                f'## {number}. {f.title}',
                '',
                f'> {f.claim}',
                '',
                f'**Verdict: {f.verdict.verdict}** — {f.verdict.reason}',
                '',
                f'Scale `{f.scale}`, {f.seconds:.0f} s.',
                '',
                f.table,
                '',
            ]
            for plot in f.plots:
                lines += [f'![{f.title}: {Path(plot).stem}]({LESSONS[number]}/{plot})', '']
        lines += [
            'Rerun this claim alone:',
            '',
            '    '
            + rerun_command(
                workdir,
                number,
                findings[number].scale if number in findings else errors[number]['scale'],
                data_dir,
            ),
        ]
    return '\n'.join(lines) + '\n'


def write_report(workdir: Path, data_dir: str | None = None) -> Path:
    path = Path(workdir) / 'report.md'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(workdir, data_dir))
    return path


def copy_report(workdir: Path, destination: Path) -> Path:
    """report.md and every finding's plots, at the same relative paths under `destination`."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for number in LESSONS:
        finding = read_finding(workdir, number)
        for plot in finding.plots if finding else []:
            source = lesson_dir(workdir, number) / plot
            if source.exists():
                target = destination / LESSONS[number] / plot
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    shutil.copyfile(Path(workdir) / 'report.md', destination / 'report.md')
    return destination / 'report.md'


def build_report(
    workdir: Path,
    lessons: Sequence[int] | None = None,
    scale: str = 'full',
    data_dir: str | None = None,
    rerun: bool = False,
    copy_to: Path | None = None,
) -> Path:
    """Runs `lessons` (default: all), writes report.md (and its copy); returns report.md."""
    run_lessons(workdir, sorted(LESSONS) if lessons is None else lessons, scale, data_dir, rerun)
    report = write_report(workdir, data_dir)
    if copy_to:
        copy_report(workdir, copy_to)
    return report


def main(argv: Sequence[str]) -> None:
    del argv
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    options = flags.FLAGS
    if not options.workdir:
        raise app.UsageError('--workdir is required, e.g. --workdir=workdirs/lessons')
    report = build_report(
        Path(options.workdir),
        parse_lessons(options.lessons),
        options.scale,
        options.data_dir,
        options.rerun,
        Path(options.copy_to) if options.copy_to else None,
    )
    print(report)


if __name__ == '__main__':
    define_flags()
    app.run(main)

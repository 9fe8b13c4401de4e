"""Run a command and record its wall time and peak memory (for the reproduce page).

Usage:
    python workflow/scripts/timed.py --out results/cpu/pipeline_time.txt \
        [--keep-if "Nothing to be done" --keep-if "This was a dry-run"] -- snakemake ...

The record is a small YAML file: the command, start and end (UTC), wall seconds,
the peak resident memory of the largest single process the command started
(``getrusage(RUSAGE_CHILDREN)``: children and the grandchildren they waited
for), the exit status and the machine. Standard library only, so it works
wherever Python does (GNU ``/usr/bin/time -v`` is missing on macOS and slim
containers).

With ``--keep-if PATTERN`` (repeatable) the command's output (standard output
and error, merged into standard output) is scanned while it is passed through; when a PATTERN appears (Snakemake's "Nothing to be
done", or the end of a dry run), an existing record is kept, so a no-op rerun
does not overwrite the timing of the run that did the work.

With ``--watch DIR`` a thread prints, every ``--watch-every`` seconds, one line per
stage log in DIR written to since the last look: the stage and the last progress
bar its notebook drew (stage, epoch or iteration, ETA), so a long first job shows
signs of life while its full log stays in DIR.

The exit status is the command's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

#: A tqdm bar as the stage notebooks draw it: "desc:  45%|####  | 45/100 [00:12<00:15, ...]".
BAR = re.compile(r"[^\r\n]*\d+%\|[^\r\n]*\]")


def last_progress(log: Path, tail: int = 8192) -> str | None:
    """The last progress bar in the end of a stage log, or ``None``."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - tail))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    bars = BAR.findall(text)
    return " ".join(bars[-1].split()) if bars else None


def watch(folder: Path, every: float, stop: threading.Event) -> None:
    """Print the stages' live progress lines until ``stop`` is set."""
    seen: dict[Path, float] = {}
    while not stop.wait(every):
        for log in sorted(folder.glob("*.log")):
            mtime = log.stat().st_mtime
            if seen.get(log) == mtime:
                continue
            seen[log] = mtime
            bar = last_progress(log)
            if bar:
                print(f"[{log.stem}] {bar}", flush=True)


def peak_rss_mb() -> float:
    """Largest resident set size among waited-for descendants, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the record")
    parser.add_argument(
        "--keep-if", action="append", default=[], help="keep an old record if stderr has this"
    )
    parser.add_argument("--watch", type=Path, help="folder of stage logs to report from")
    parser.add_argument("--watch-every", type=float, default=30.0, help="seconds between reports")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")

    stop = threading.Event()
    if args.watch is not None:
        args.watch.mkdir(parents=True, exist_ok=True)
        threading.Thread(
            target=watch, args=(args.watch, args.watch_every, stop), daemon=True
        ).start()
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    seen = False
    if args.keep_if:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            seen = seen or any(p in line for p in args.keep_if)
        status = proc.wait()
    else:
        status = subprocess.call(command)
    stop.set()
    wall = time.monotonic() - t0
    finished = dt.datetime.now(dt.timezone.utc)

    if seen and args.out.is_file():
        print(f"timed.py: nothing ran; kept {args.out}", file=sys.stderr)
        return status
    record = {
        "command": shlex.join(command),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": finished.isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_note": "largest single process, not the sum over processes",
        "exit_status": status,
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()})",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    # JSON scalars are valid YAML: strings stay quoted, numbers stay numbers.
    tmp.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in record.items()))
    os.replace(tmp, args.out)
    print(
        f"timed.py: {wall:.1f} s wall, peak {record['peak_rss_mb']} MiB -> {args.out}",
        file=sys.stderr,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The 10-minute GPU check: the three stage benchmarks and the `gpu` profile, in at most 540 s.

Drives the library directly (no papermill, no Snakemake), on the device
machine's own Python; ``benchmarks/gpu_suite.sh`` installs the carried wheels
(kornia) first. Parts, in order, each with a wall-clock share of the budget
(``benchmarks/gpu_budget.py`` predicts them; ``--plan`` prints the plan):

1. ``bench_experts``, ``bench_distill``, ``bench_evaluate``: ``benchmarks/bench_*.py``
   at reduced repeats, each in its own process, killed at its deadline;
2. ``data``: CIFAR-10 from the carried archive (``.gpu_carry/cifar10-jpeg.tar.xz``,
   unpacked and decoded by ``lsslib.data.load_data``), ZCA;
3. ``experts``: ``lsslib.experts.train_experts`` (fewer experts when the measured
   training speed says the planned number cannot finish in its share);
4. ``distill:<run>``: ``lsslib.distill.Distiller(...).run()`` for every run of the
   profile, stopped at its deadline after the current iteration and saved;
5. ``eval:<run>`` / ``eval:<baseline>``: ``lsslib.evaluate.evaluate_images`` of every
   distilled set and baseline (``random_real_subset``).

A part stopped by its deadline keeps what it finished and is labelled
``partial`` with the reason, in its own JSON and in ``results.json``; the parts
after it still run in their own shares. Outputs (at most 8 files, each under
16 MB, in ``--out``; rewritten atomically after every part):

``suite_log.txt`` (timestamped log: device, nvidia-smi, driver, versions, each part),
``bench_experts.json``, ``bench_distill.json``, ``bench_evaluate.json`` (records of
``bench_*.py``, or a partial stub), ``results.json`` (environment, plan, every
part's status and time, buffer, runs, accuracies), ``tables.md`` (speed against
the targets, accuracies, time per part), ``logs.csv`` (distillation logs of all
runs), ``synsets.tar`` (each run's ``synset.json`` and the tensor file it names).

Usage::

    bash benchmarks/gpu_suite.sh --prepare            # here: wheels + archive into .gpu_carry/
    bash benchmarks/gpu_suite.sh --out $OUT           # on the GPU (carry .gpu_carry)
    bash benchmarks/gpu_suite.sh --device cpu --tiny --out /tmp/suite   # toy sizes, < 3 min
    python benchmarks/gpu_suite.py --plan             # predicted time of every part
    python benchmarks/gpu_suite.py --unpack DIR       # into benchmarks/records/ and records/gpu/
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import gpu_book  # noqa: E402
from gpu_budget import (  # noqa: E402
    BENCH_ARGS,
    BUDGET_S,
    MARGIN,
    MARGINS,
    Rates,
    baseline_parameters,
    experts_that_fit,
    load_profile,
    plan_suite,
    stage_parameters,
)

#: Files the suite writes, in this order; the device returns at most 8, each < 16 MiB.
OUTPUT_FILES = (
    "suite_log.txt",
    "bench_experts.json",
    "bench_distill.json",
    "bench_evaluate.json",
    "results.json",
    "tables.md",
    "logs.csv",
    "synsets.tar",
)
MAX_FILES = 8
MAX_FILE_BYTES = 16_000_000  # under 16 MiB, with room
CARRY = REPO / ".gpu_carry"
ARCHIVE = "cifar10-jpeg.tar.xz"
STAGES = ("experts", "distill", "evaluate")

#: ``--tiny``: toy sizes of the same profile and benchmarks (CPU, < 3 minutes).
TINY_PROFILE = {
    "data": {"train_per_class": 10, "test_per_class": 10},
    "model": {"net_width": 8},
    "buffers": {"num_experts": 2, "experts_per_group": 2, "batch_train": 64},
    "distill": {"iterations": 4, "checkpoint_every": 2},
    "runs": {"syn_steps": 3, "schedule_iterations": 2},
    "eval": {"num_eval": 2, "eval_epochs": 3, "batch_eval": 64},
}
TINY_BENCH_ARGS = {
    "experts": ["--width", "8", "--experts", "2", "--images", "128", "--repeats", "1"],
    "distill": [
        *("--width", "8", "--syn-steps", "2", "--batch-syn", "8", "--n-syn", "16"),
        *("--repeats", "1", "--tesla-steps", "1,2", "--tesla-batch", "8", "--expert-steps", "1"),
    ],
    "evaluate": [
        *("--width", "8", "--nets", "2", "--images", "20", "--epochs", "2"),
        *("--test-images", "100", "--repeats", "1"),
    ],
}
# toy runs skip the CPU matmul-peak measurement (2 x 10 matmuls of 2048^2 per process):
# their fraction-of-peak figures mean nothing anyway
for _a in TINY_BENCH_ARGS.values():
    _a += ["--peak-tflops", "1.0"]
TINY_BUDGET_S = 150.0  # so that a loaded 2-core machine still ends within 3 minutes


class Cut(Exception):
    """Raised inside a part when its wall-clock deadline has passed (or on SIGTERM)."""


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------ log
class Log:
    """Timestamped lines to stdout and ``suite_log.txt`` (appended and flushed line by line)."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path, self.t0 = path, t0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")

    def __call__(self, msg: str) -> None:
        stamp = f"{utc_now()} +{time.time() - self.t0:7.1f}s"
        for line in str(msg).splitlines() or [""]:
            text = f"{stamp} {line}"
            print(text, flush=True)
            self.fh.write(text + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


# --------------------------------------------------------------------- budget
class Budget:
    """Wall-clock deadlines of the parts.

    Planned shares are cumulative: part ``i`` must end by ``start + sum of the
    shares up to i``, so a part that ends early leaves its time to the next
    ones and one that overruns cannot take theirs. A part without a share (the
    ``--tiny`` default) runs until the global end. ``--part-seconds NAME=S``
    gives one part ``S`` seconds from its own start. Nothing runs past
    ``t0 + total - reserve`` (the reserve is for writing the outputs).
    """

    def __init__(
        self,
        t0: float,
        total: float,
        shares: Mapping[str, float | None],
        overrides: Mapping[str, float],
        reserve: float,
    ) -> None:
        self.t0, self.total, self.reserve = t0, total, reserve
        self.shares = dict(shares)
        self.overrides = dict(overrides)
        self.start = time.time()
        self.cum: dict[str, float] = {}
        acc = 0.0
        for name, s in self.shares.items():
            if s is not None:
                acc += self.overrides.get(name, s)
                self.cum[name] = acc

    @property
    def cap(self) -> float:
        return self.t0 + self.total - self.reserve

    def deadline(self, part: str, part_start: float) -> float:
        if part in self.overrides:
            return min(part_start + self.overrides[part], self.cap)
        if part in self.cum:
            return min(self.start + self.cum[part], self.cap)
        return self.cap

    def share(self, part: str) -> float | None:
        return self.overrides.get(part, self.shares.get(part))


def guard(deadline: float, what: str) -> Callable[..., None]:
    """A progress/callback function that raises :class:`Cut` once ``deadline`` has passed."""

    def check(*_args: Any) -> None:
        if time.time() > deadline:
            raise Cut(f"wall-clock guard: {what} stopped at its deadline")

    return check


# ---------------------------------------------------------------- environment
def _run(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict[str, Any]:
    """Device, driver, CUDA, package versions, commit, host (for the log and the book)."""
    from importlib import metadata

    import torch

    import lsslib

    versions = {"python": platform.python_version(), "lsslib": lsslib.__version__}
    for pkg in (
        "torch",
        "torchvision",
        "numpy",
        "pandas",
        "matplotlib",
        "safetensors",
        "kornia",
        "kornia_rs",
        "PyYAML",
        "pillow",
    ):
        try:
            versions[pkg.lower()] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg.lower()] = None
    smi = _run(["nvidia-smi"])
    query = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
            "--format=csv,noheader",
        ]
    )
    env: dict[str, Any] = {
        "device": device,
        "versions": versions,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "nvidia_smi": smi,
        "nvidia_smi_query": query,
        "driver": query.split(",")[1].strip() if query and "," in query else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "commit": _commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        from lsslib.report import describe_device

        env["device_name"] = describe_device("cpu")
    return env


def _commit() -> str | None:
    stamp = CARRY / "commit.txt"
    if stamp.is_file():  # written by `gpu_suite.sh --prepare`: the device copy has no git
        return stamp.read_text().strip() or None
    out = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if out and _run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]):
        out += "+dirty"
    return out


# ------------------------------------------------------------------- profile
def tiny_profile(prof: Mapping[str, Any]) -> dict[str, Any]:
    """The profile at toy sizes (:data:`TINY_PROFILE`), validated like a loaded profile."""
    p = json.loads(json.dumps(prof))
    for block in ("data", "model", "buffers", "distill", "eval"):
        p.setdefault(block, {}).update(TINY_PROFILE[block])
    for over in (p.get("runs") or {}).values():
        for k, v in TINY_PROFILE["runs"].items():
            if k == "syn_steps" or k in over:
                over[k] = v
    p["name"] = f"{prof.get('name', 'gpu')}-tiny"
    validate(p)
    return p


def validate(prof: Mapping[str, Any]) -> None:
    """Build every stage's parameters of ``prof`` (raises ``ValueError`` on a bad value)."""
    stage_parameters(prof, "buffers")
    for run in prof.get("runs") or {}:
        stage_parameters(prof, "distill", run)
        stage_parameters(prof, "evaluate", run)
    for name in prof.get("baselines") or {}:
        baseline_parameters(prof, name)


def parse_overrides(items: list[str]) -> dict[str, float]:
    """``["distill:lss_ipc1=0", ...]`` -> ``{"distill:lss_ipc1": 0.0}``.

    Raises:
        ValueError: an item without ``=`` or with a value that is no number >= 0.
    """
    out = {}
    for item in items:
        name, sep, val = item.partition("=")
        try:
            s = float(val)
        except ValueError:
            s = -1.0
        if not sep or s < 0:
            raise ValueError(
                f"invalid parameter --part-seconds={item!r}: allowed PART=SECONDS with SECONDS >= 0"
            )
        out[name] = s
    return out


# ---------------------------------------------------------------------- suite
class Suite:
    """State of one run of the suite; ``write()`` rewrites every output from it."""

    def __init__(self, args: argparse.Namespace, t0: float) -> None:
        self.args = args
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.out / "suite_log.txt", t0)
        self.t0 = t0
        self.device = args.device
        self.results: dict[str, Any] = {
            "suite": "gpu_suite",
            "format": 1,
            "mode": "tiny" if args.tiny else "gpu",
            "started_utc": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget,
            "command": " ".join(["python", "benchmarks/gpu_suite.py", *sys.argv[1:]]),
            "parts": {},
            "runs": {},
            "baselines": {},
            "evals": {},
            "bench": {},
            "partial": False,
            "partial_reasons": [],
        }
        self.bench: dict[str, dict[str, Any]] = {}
        self.logs: list[dict[str, Any]] = []
        self.real = None
        self.buffer = None

    # -------------------------------------------------------------- outputs
    def mark(self, part: str, status: str, seconds: float, reason: str | None = None, **kw) -> None:
        entry = {"status": status, "partial": status != "done", "seconds": round(seconds, 2)}
        if reason:
            entry["reason"] = reason
        entry.update(kw)
        self.results["parts"][part] = entry
        if status != "done":
            self.results["partial"] = True
            self.results["partial_reasons"].append(f"{part}: {reason or status}")
        self.log(f"[{part}] {status} in {seconds:.1f} s" + (f": {reason}" if reason else ""))

    def write(self) -> None:
        """Rewrite every output file atomically from the current state."""
        from lsslib.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text

        self.results["wall_s"] = round(time.time() - self.t0, 1)
        self.results["finished_utc"] = utc_now()
        for stage, rec in self.bench.items():
            atomic_write_text(self.out / f"bench_{stage}.json", json.dumps(rec) + "\n")
        atomic_write_json(self.out / "results.json", self.results)
        atomic_write_text(self.out / "tables.md", gpu_book.render_tables(self.results, self.bench))
        if self.logs:
            buf = io.StringIO()
            cols = ["run", *[k for k in self.logs[0] if k != "run"]]
            w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.logs)
            atomic_write_text(self.out / "logs.csv", buf.getvalue())
        sets = sorted((self.work / "runs").glob("*/synset.json"))
        if sets:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for js in sets:
                    # the JSON names its tensor file (synset.<sha12>.safetensors)
                    tensor_file = json.loads(js.read_text())["tensor_file"]
                    for f in (js, js.parent / tensor_file):
                        tar.add(f, arcname=f"{js.parent.name}/{f.name}")
            atomic_write_bytes(self.out / "synsets.tar", buf.getvalue())

    def check_outputs(self) -> list[str]:
        """Problems with the output folder: more than 8 files, a file too large, a folder."""
        problems = []
        entries = sorted(self.out.iterdir())
        files = [e for e in entries if e.is_file()]
        if len(entries) > MAX_FILES:
            problems.append(f"{len(entries)} entries in {self.out}, at most {MAX_FILES} come back")
        problems += [f"{e.name} is not a plain file" for e in entries if not e.is_file()]
        problems += [
            f"{f.name} has {f.stat().st_size:,} bytes, over {MAX_FILE_BYTES:,}"
            for f in files
            if f.stat().st_size > MAX_FILE_BYTES
        ]
        return problems

    # --------------------------------------------------------------- parts
    def run_bench(self, stage: str, budget: Budget) -> None:
        """Run ``benchmarks/bench_<stage>.py`` in its own process group until its deadline.

        A complete run's JSON record is kept with ``partial: false``, the command
        without the suite's ``--out`` and the part's time; a process killed at the
        deadline or failing leaves a stub ``{"partial": true, "reason": ...}`` with
        the tail of its output.
        """
        part = f"bench_{stage}"
        start = time.time()
        deadline = budget.deadline(part, start)
        bargs = (TINY_BENCH_ARGS if self.args.tiny else BENCH_ARGS)[stage]
        rec_path = self.work / f"bench_{stage}.json"
        rec_path.unlink(missing_ok=True)
        rel = f"benchmarks/bench_{stage}.py"
        cmd = [sys.executable, rel, "--device", self.device, *bargs, "--out", str(rec_path)]
        shown = " ".join(["python", rel, "--device", self.device, *bargs])
        timeout = deadline - start
        self.log(f"[{part}] {shown}  (deadline in {timeout:.0f} s)")
        stub = {"bench": stage, "partial": True, "command": shown, "device": self.device}
        if timeout <= 0:
            stub["reason"] = "skipped: no time left in its share"
            self.bench[stage] = stub
            self.mark(part, "skipped", 0.0, stub["reason"])
            return
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        why = None
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            why = "wall-clock guard"
        except Cut as e:
            why = str(e)
        if why is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        seconds = time.time() - start
        lines = (output or "").splitlines()
        for line in lines[-60:]:
            self.log(f"[{part}] | {line}")
        if why is not None:
            stub["reason"] = f"{why}: killed after {seconds:.0f} s (share {timeout:.0f} s)"
            stub["output_tail"] = lines[-20:]
            self.bench[stage] = stub
            self.mark(part, "partial", seconds, stub["reason"])
        elif proc.returncode != 0 or not rec_path.is_file():
            stub["reason"] = f"failed: exit code {proc.returncode}"
            stub["output_tail"] = lines[-20:]
            self.bench[stage] = stub
            self.mark(part, "failed", seconds, stub["reason"])
        else:
            rec = json.loads(rec_path.read_text())
            rec["command"] = shown  # without the suite's temporary --out
            rec["partial"] = False
            rec["suite"] = {
                "part": part,
                "seconds": round(seconds, 1),
                "share_s": budget.share(part),
            }
            self.bench[stage] = rec
            self.mark(part, "done", seconds)

    def load_data(self, prof: Mapping[str, Any]) -> None:
        """``lsslib.data.load_data`` of the profile's data block on the device (not interruptible)."""
        from lsslib import config, data, report

        part, start = "data", time.time()
        flat = stage_parameters(prof, "buffers")
        data_cfg = config.DataConfig.from_params(flat)
        if self.args.data_root:
            data_cfg = config.DataConfig.from_params({**flat, "data_root": self.args.data_root})
        dev = report.pick_device(self.device)
        root = data.find_data_root(data_cfg.dataset, data_cfg.data_root)
        self.log(f"[data] {data_cfg.dataset} from {root} (cache {data.cache_dir()})")
        self.real = data.load_data(data_cfg, dev)
        self.data_cfg = data_cfg
        r = self.real
        self.mark(
            part,
            "done",
            time.time() - start,
            train=int(r.x_train.shape[0]),
            test=int(r.x_test.shape[0]),
            source=str(root),
        )

    def train_experts(self, prof: Mapping[str, Any], budget: Budget) -> None:
        """``lsslib.experts.train_experts``, with fewer experts when the measured speed says
        the planned ones cannot finish (labelled partial); a cut leaves no buffer."""
        from lsslib import config, experts, report

        part, start = "experts", time.time()
        deadline = budget.deadline(part, start)
        flat = stage_parameters(prof, "buffers")
        model_cfg = config.ModelConfig.from_params(flat)
        buf = dict(prof["buffers"])
        scaled = None
        rates = self.measured_rates(prof)
        if rates is not None:
            have = deadline - time.time()
            fit = experts_that_fit(
                _spec_of(model_cfg), buf, rates, have / 1.1, len(self.real.y_train)
            )
            if fit < int(buf["num_experts"]):
                scaled = {
                    "num_experts": [int(buf["num_experts"]), fit],
                    "reason": f"measured training rate {rates.train_tflops:.2f} TFLOP/s: "
                    f"{fit} experts fit the {have:.0f} s left",
                }
                buf["num_experts"] = fit
                buf["experts_per_group"] = min(int(buf.get("experts_per_group", 10)), fit)
                self.log(f"[experts] scaled down: {scaled}")
        buf_cfg = config.BufferConfig.from_params(buf)
        report.pick_device(self.device)
        check = guard(deadline, "expert training")
        try:
            self.buffer = experts.train_experts(
                self.real,
                model_cfg,
                buf_cfg,
                self.work / "buffers",
                log=lambda m: self.log(f"[experts] {m}"),
                progress=check,
            )
        except Cut as e:
            self.mark(
                part, "partial", time.time() - start, f"{e}; no complete buffer, so no distillation"
            )
            return
        acc = self.buffer.accuracy_curves()["test"]
        finals = [c[-1] for c in acc]
        info = {
            "num_experts": self.buffer.num_experts,
            "epochs": self.buffer.epochs,
            "final_test_acc_mean": sum(finals) / len(finals),
            "final_test_acc": finals,
        }
        self.results["buffer"] = info
        if scaled:
            self.results["buffer"]["scaled"] = scaled
        status = "done" if not scaled else "partial"
        self.mark(
            part,
            status,
            time.time() - start,
            None if not scaled else "scaled down: " + scaled["reason"],
            **info,
        )

    def measured_rates(self, prof: Mapping[str, Any]) -> Rates | None:
        """Training rate from this run's experts benchmark, if it measured the profile's network."""
        rec = self.bench.get("experts")
        if not rec or rec.get("partial") or "results" not in rec:
            return None
        m = prof.get("model") or {}
        if (
            rec["config"]["model"]
            != f"ConvNetD{m.get('net_depth', 3)} width {m.get('net_width', 128)}"
        ):
            return None
        r = rec["results"][rec["together"]]
        return Rates(train_tflops=r["images_per_s_median"] * rec["flops_train_per_image"] / 1e12)

    def distill_run(self, prof: Mapping[str, Any], run: str, budget: Budget) -> None:
        """``Distiller(...).run()`` of one run in strict fp32; at the deadline the current
        iteration ends, the state is checkpointed and the set saved (labelled partial)."""
        from lsslib import config, distill, parameterisations, report, synset

        part, start = f"distill:{run}", time.time()
        if self.buffer is None:
            self.mark(part, "skipped", 0.0, "no expert buffer")
            return
        deadline = budget.deadline(part, start)
        flat = stage_parameters(prof, "distill", run)
        cfg = config.DistillConfig.from_params(flat)
        if (
            max(cfg.min_start_epoch, cfg.max_start_epoch - 1) + cfg.expert_epochs
            > self.buffer.epochs
        ):
            self.mark(part, "skipped", 0.0, "the buffer has too few epochs")
            return
        dev = report.pick_device(self.device, tf32=False)  # strict fp32 (book/choices.md §6)
        out = self.work / "runs" / run
        shutil.rmtree(out, ignore_errors=True)
        d = distill.Distiller(
            cfg,
            self.data_cfg,
            self.buffer,
            self.real.x_train,
            self.real.y_train,
            out,
            dev,
            normaliser=self.real.normaliser,
            class_names=self.real.classes,
        )
        check = guard(deadline, f"distillation {run}")
        reason = None
        try:
            d.run(callback=check)
        except Cut as e:
            reason = f"{e} after {d.iteration} of {cfg.iterations} iterations"
            d.checkpoint()
            d.save()
        for row in d.log:
            self.logs.append({"run": run, **row})
        loaded = synset.load_synset(Path(out) / "synset", "cpu")
        unit = parameterisations.get(cfg.parameterisation)
        info = {
            "label": f"{unit.title} ({cfg.parameterisation}, IPC {cfg.ipc}"
            + (f", r={cfg.rank}" if unit.uses_rank else "")
            + f", {'soft' if cfg.soft_labels else 'hard'} labels)",
            "parameterisation": cfg.parameterisation,
            "ipc": cfg.ipc,
            "rank": cfg.rank,
            "images_per_class": loaded.meta["layout"]["images_per_class"],
            "storage": loaded.meta["storage"],
            "syn_lr": loaded.syn_lr,
            "iterations_done": d.iteration,
            "iterations_planned": cfg.iterations,
            "partial": reason is not None,
        }
        if reason:
            info["reason"] = reason
        self.results["runs"][run] = info
        self.mark(
            part,
            "partial" if reason else "done",
            time.time() - start,
            reason,
            iterations=d.iteration,
        )

    def evaluate_set(
        self, prof: Mapping[str, Any], name: str, budget: Budget, baseline: bool
    ) -> None:
        """``evaluate_images`` of a distilled set (lr = its learned syn_lr) or a baseline
        (lr 0.01, as notebooks/03_evaluate); a cut leaves no accuracy (labelled partial)."""
        from lsslib import config, evaluate, models, report, synset

        part, start = f"eval:{name}", time.time()
        deadline = budget.deadline(part, start)
        dev = report.pick_device(self.device)
        if baseline:
            kind, real_ipc, flat = baseline_parameters(prof, name)
        else:
            kind, real_ipc, flat = "synset", 0, stage_parameters(prof, "evaluate", name)
        model_cfg = config.ModelConfig.from_params(flat)
        eval_cfg = config.EvalConfig.from_params(flat)
        r = self.real
        spec = models.ConvNetSpec.from_config(
            model_cfg, channels=r.channels, side=r.side, num_classes=r.num_classes
        )
        if kind == "synset":
            folder = self.work / "runs" / name
            if not (folder / "synset.json").is_file():
                self.mark(part, "skipped", 0.0, "no synthetic set")
                return
            loaded = synset.load_synset(Path(folder) / "synset", dev)
            x, y = loaded.export()
            lr = eval_cfg.lr_eval or loaded.syn_lr
        else:
            if kind == "random_real":
                x, y = evaluate.random_real_subset(r, real_ipc, seed=eval_cfg.eval_seed)
                label = f"random real, {real_ipc} per class"
            else:
                x, y = r.x_train, r.y_train
                label = f"full training set ({x.shape[0]} images)"
            lr = eval_cfg.lr_eval or 0.01
            st = synset.real_storage(len(x), r.num_classes, r.channels, r.side).to_dict()
            self.results["baselines"][name] = {
                "kind": kind,
                "label": label,
                "images_per_class": real_ipc or None,
                "storage": st,
            }
        check = guard(deadline, f"evaluation of {name}")
        try:
            res = evaluate.evaluate_images(spec, x, y, r, eval_cfg, lr=lr, progress=check)
        except Cut as e:
            ev = {
                "mean": None,
                "partial": True,
                "reason": f"{e} (no final accuracy)",
                "epochs": eval_cfg.eval_epochs,
            }
            self.results["evals"][name] = ev
            self.mark(part, "partial", time.time() - start, ev["reason"])
            return
        ev = {**res.to_dict(), "partial": False, "num_eval": eval_cfg.num_eval}
        self.results["evals"][name] = ev
        self.log(
            f"[{part}] accuracy {100 * res.mean:.2f} ± {100 * res.std:.2f} % ({len(x)} images, lr {lr:.4g})"
        )
        self.mark(part, "done", time.time() - start)


def _spec_of(model_cfg):
    """The CIFAR-10 ConvNet of ``model_cfg`` (for the time model)."""
    from lsslib.models import ConvNetSpec

    return ConvNetSpec.from_config(model_cfg, channels=3, side=32, num_classes=10)


def run_suite(args: argparse.Namespace) -> int:
    """Run every part within the budget; return 0, or 1 if the outputs break the limits."""
    t0 = args.started_at or time.time()
    if not args.tiny and "LSS_CACHE_DIR" not in os.environ:
        os.environ["LSS_CACHE_DIR"] = str(Path(args.work) / "cache")
    if args.data_root is None and not args.tiny and (CARRY / ARCHIVE).is_file():
        args.data_root = str(CARRY)
    prof = load_profile(args.profile)
    if args.tiny:
        prof = tiny_profile(prof)
    suite = Suite(args, t0)
    log = suite.log
    overrides = parse_overrides(args.part_seconds)

    stopped: list[str] = []

    def on_term(signum, _frame):
        stopped.append(f"signal {signum} received earlier")
        raise Cut(f"signal {signum}: stopped")

    signal.signal(signal.SIGTERM, on_term)

    env = environment(args.device)
    suite.results["environment"] = env
    suite.results["profile_name"] = prof.get("name")
    suite.results["profile"] = prof
    log(
        f"gpu_suite: mode {suite.results['mode']}, device {args.device}, budget {args.budget:.0f} s, out {suite.out}"
    )
    log(
        f"device: {env['device_name']}; driver {env['driver']}; CUDA {env['cuda']}; cuDNN {env['cudnn']}"
    )
    log("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    log(f"host: {env['platform']}, {env['cpu_count']} CPUs; commit {env['commit']}")
    log("nvidia-smi:\n" + (env["nvidia_smi"] or "(not available)"))

    plan = plan_suite(prof)
    shares = plan.shares() if not args.tiny else {k: None for k in plan.parts}
    suite.results["plan"] = {
        k: {"predicted_s": round(v, 1), "share_s": shares[k]} for k, v in plan.parts.items()
    }
    suite.results["plan_rates"] = plan.rates.__dict__
    parts_after_startup = {k: v for k, v in shares.items() if k not in ("startup", "write")}
    budget = Budget(t0, args.budget, parts_after_startup, overrides, reserve=plan.rates.write_s)
    suite.mark("startup", "done", time.time() - t0)
    suite.write()

    def step(part: str, fn: Callable[[], None]) -> None:
        if stopped or time.time() > budget.cap:
            suite.mark(
                part, "skipped", 0.0, stopped[0] if stopped else "the suite's budget is spent"
            )
            suite.write()
            return
        start = time.time()
        try:
            fn()
        except Cut as e:
            suite.mark(part, "partial", time.time() - start, str(e))
        except Exception as e:  # noqa: BLE001 -- one failed part must not lose the others
            import traceback

            log(traceback.format_exc())
            suite.mark(part, "failed", time.time() - start, f"{type(e).__name__}: {e}")
        suite.write()

    for stage in STAGES:
        step(f"bench_{stage}", lambda stage=stage: suite.run_bench(stage, budget))
    step("data", lambda: suite.load_data(prof))
    if suite.real is None:
        later = ["experts", *(f"distill:{r}" for r in prof.get("runs") or {})]
        later += [f"eval:{n}" for n in [*(prof.get("runs") or {}), *(prof.get("baselines") or {})]]
        for part in later:
            suite.mark(part, "skipped", 0.0, stopped[0] if stopped else "no data")
    else:
        step("experts", lambda: suite.train_experts(prof, budget))
        for run in prof.get("runs") or {}:
            step(f"distill:{run}", lambda run=run: suite.distill_run(prof, run, budget))
        for run in prof.get("runs") or {}:
            step(f"eval:{run}", lambda run=run: suite.evaluate_set(prof, run, budget, False))
        for name in prof.get("baselines") or {}:
            step(f"eval:{name}", lambda name=name: suite.evaluate_set(prof, name, budget, True))
    suite.write()
    problems = suite.check_outputs()
    for p in problems:
        log(f"OUTPUT LIMIT: {p}")
    files = sorted(f for f in suite.out.iterdir() if f.is_file())
    log(
        f"done in {time.time() - t0:.1f} s of {args.budget:.0f}; partial: {suite.results['partial']}; "
        + ", ".join(f"{f.name} {f.stat().st_size:,} B" for f in files)
    )
    suite.log.close()
    return 1 if problems else 0


# --------------------------------------------------------------------- unpack
def unpack(src: str | Path, repo: str | Path = REPO, *, allow_tiny: bool = False) -> list[Path]:
    """Copy a suite output folder into the repository, for the book.

    Complete benchmark records go to ``benchmarks/records/gpu_<stage>.json`` (the
    speed table of the reproduce page reads them); every file to ``records/gpu/``,
    with ``synsets.tar`` unpacked into ``records/gpu/runs/<run>/synset.*`` (readable
    by ``lsslib.synset.load_synset``) and the book's block written to
    ``records/gpu/summary.md`` (shown by the GPU page). Partial benchmark records
    stay in ``records/gpu/`` only.

    Args:
        src: the suite's output folder.
        repo: the repository root to write into.
        allow_tiny: accept the output of a ``--tiny`` run (tests only).

    Returns:
        The paths written.

    Raises:
        ValueError: ``src`` holds no suite output, or a ``--tiny`` one without ``allow_tiny``,
            or an archive member outside ``<run>/synset.{json,safetensors}``.
    """
    src, repo = Path(src), Path(repo)
    res_path = src / "results.json"
    if not res_path.is_file():
        raise ValueError(
            f"invalid parameter --unpack={str(src)!r}: allowed a folder with results.json"
        )
    results = json.loads(res_path.read_text())
    if results.get("suite") != "gpu_suite":
        raise ValueError(
            f"invalid parameter --unpack={str(src)!r}: results.json is no gpu_suite output"
        )
    if results.get("mode") != "gpu" and not allow_tiny:
        raise ValueError(
            f"invalid parameter --unpack={str(src)!r}: a {results.get('mode')!r} run (toy sizes); "
            "allowed only a GPU run (or --allow-tiny for tests)"
        )
    dest = repo / "records" / "gpu"
    dest.mkdir(parents=True, exist_ok=True)
    (repo / "benchmarks" / "records").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    bench: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        f = src / f"bench_{stage}.json"
        if not f.is_file():
            continue
        rec = json.loads(f.read_text())
        bench[stage] = rec
        if not rec.get("partial") and "results" in rec:
            target = repo / "benchmarks" / "records" / f"gpu_{stage}.json"
            shutil.copyfile(f, target)
            written.append(target)
    for name in OUTPUT_FILES:
        f = src / name
        if f.is_file() and name != "synsets.tar":
            shutil.copyfile(f, dest / name)
            written.append(dest / name)
    tar_path = src / "synsets.tar"
    if tar_path.is_file():
        runs = dest / "runs"
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if (
                    not m.isfile()
                    or len(parts) != 2
                    or not re.fullmatch(r"synset(\.[0-9a-f]{12})?\.(json|safetensors)", parts[1])
                    or parts[0] in ("..", ".")
                ):
                    raise ValueError(
                        f"invalid member {m.name!r} of {tar_path}: allowed <run>/synset.json|safetensors"
                    )
            shutil.rmtree(runs, ignore_errors=True)
            tar.extractall(runs, filter="data")
        written += sorted(runs.glob("*/synset.*"))
    summary = dest / "summary.md"
    summary.write_text(gpu_book.render_block(results, bench))
    written.append(summary)
    return written


# ----------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The command line of the suite (``--help`` lists it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument(
        "--tiny", action="store_true", help="toy sizes of the same path (CPU test, < 3 min)"
    )
    p.add_argument(
        "--out",
        default=os.environ.get("OUT"),
        help="output folder (default $OUT, the device's; at most 8 files come back)",
    )
    p.add_argument(
        "--work",
        default=None,
        help="scratch folder (buffers, runs, cache); default a temporary one",
    )
    p.add_argument("--profile", default="gpu", help="profile name or YAML path (default gpu)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"wall-clock budget in s (default {BUDGET_S:.0f}; --tiny {TINY_BUDGET_S:.0f})",
    )
    p.add_argument(
        "--part-seconds",
        action="append",
        default=[],
        metavar="PART=S",
        help="give one part S seconds from its start (e.g. distill:lss_ipc1=0 to test the guard)",
    )
    p.add_argument(
        "--data-root", default=None, help="where the data is (default .gpu_carry on the GPU)"
    )
    p.add_argument(
        "--started-at", type=float, default=None, help="epoch seconds the wrapper started"
    )
    p.add_argument(
        "--plan", action="store_true", help="print the predicted time of every part and exit"
    )
    p.add_argument(
        "--unpack", default=None, metavar="DIR", help="copy a suite output into the repository"
    )
    p.add_argument(
        "--repo", default=str(REPO), help="repository root for --unpack (default this one)"
    )
    p.add_argument(
        "--allow-tiny", action="store_true", help="--unpack: accept a --tiny output (tests)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the suite, ``--plan`` or ``--unpack``; the exit code.

    Raises:
        ValueError: a bad ``--device``, ``--budget``, ``--part-seconds``, a missing
            ``--out``, or an ``--unpack`` folder that holds no suite output.
    """
    args = build_parser().parse_args(argv)
    if args.unpack:
        for path in unpack(args.unpack, args.repo, allow_tiny=args.allow_tiny):
            print(path)
        return 0
    if args.plan:
        from gpu_budget import plan_text

        prof = load_profile(args.profile)
        m = ", ".join(f"{k}* {v}" for k, v in MARGINS.items())
        print(f"budget {BUDGET_S:.0f} s, shares = predicted x ({m}, other parts {MARGIN})")
        print(plan_text(prof))
        return 0
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        raise ValueError(f"invalid parameter --device={args.device!r}: allowed cuda, cuda:N or cpu")
    if not args.out:
        raise ValueError("invalid parameter --out=None: allowed an output folder")
    if args.budget is None:
        args.budget = TINY_BUDGET_S if args.tiny else BUDGET_S
    if args.budget <= 0:
        raise ValueError(f"invalid parameter --budget={args.budget}: allowed a number > 0")
    parse_overrides(args.part_seconds)  # fail before any work
    tmp = None
    if args.work is None:
        tmp = tempfile.mkdtemp(prefix="gpu_suite_")
        args.work = tmp
    try:
        return run_suite(args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Shared plumbing of the three stage benchmarks: CLI, device facts, peaks, memory, timing, JSON.

Not part of lsslib; imported by ``bench_*.py`` from this folder.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import lsslib  # noqa: E402
from lsslib.models import ConvNetSpec, flops_per_image  # noqa: E402
from lsslib.training import enable_tf32, tune_cpu_malloc  # noqa: E402

#: NVIDIA datasheet peaks in TFLOP/s: (fp32 non-tensor, TF32 tensor-core DENSE).
#: The datasheets print TF32 "with sparsity"; dense is half of it.
#: H100 SXM5 67 / 989 sparse; H100 PCIe 51 / 756; H100 NVL 60 / 835;
#: H200 SXM 67 / 989; H200 NVL 60 / 835; A100 19.5 / 156 dense.
GPU_PEAKS: list[tuple[str, float, float]] = [
    ("H200 NVL", 60.0, 417.5),
    ("H200", 67.0, 494.5),
    ("H100 NVL", 60.0, 417.5),
    ("H100 PCIe", 51.0, 378.0),
    ("H100", 67.0, 494.5),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", 19.5, 156.0),
]


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--device",
        default=None,
        help="cuda | cuda:N | cpu (default: cuda when available, else cpu; cpu with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="small CPU config, < 2 minutes")
    p.add_argument("--width", type=int, default=None, help="ConvNet width (default 128)")
    p.add_argument("--depth", type=int, default=3, help="ConvNet depth (default 3)")
    p.add_argument("--classes", type=int, default=10, help="classes K (default 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per variant")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CUDA: TF32 tensor cores via lsslib.training.enable_tf32 (default on)",
    )
    p.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CUDA: let cuDNN time its algorithms per shape (default on)",
    )
    p.add_argument(
        "--malloc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU: lsslib.training.tune_cpu_malloc (reuse freed heap pages; default on)",
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="override the assumed device peak"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the final JSON line to this file")
    p.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the plain PyTorch reference (benchmarks/_reference.py; default on)",
    )
    p.add_argument(
        "--rss-rounds",
        type=int,
        default=None,
        help="CPU: peak RSS of each variant in fresh processes, alternating, this many "
        "rounds (default 2 on CPU, 0 on CUDA; 0 = off)",
    )
    p.add_argument(
        "--op-profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU: one extra run of each variant under torch.profiler, for the share of "
        "its time spent in convolutions and the convolution floor (default on)",
    )
    p.add_argument("--rss-only", default=None, help=argparse.SUPPRESS)  # internal: child mode
    return p


# ------------------------------------------------------ where the time goes (CPU)
def op_profile(fn: Callable[[], Any], dev: torch.device) -> dict[str, Any] | None:
    """Self CPU time of one run of ``fn`` under :mod:`torch.profiler`, split into convolutions
    (every operator whose name contains ``conv``: oneDNN's ``mkldnn_convolution``,
    ``convolution_backward``, the ``_convolution`` dispatch) and the rest.

    Returns ``{"total_ms", "conv_ms", "conv_share", "top": [[op, ms], ...]}`` (the ten
    largest operators), or ``None`` off CPU (a CUDA profile would need the CUDA
    activity). The profiler adds per-operator overhead, so shares, not seconds, are the
    figures to read.
    """
    if dev.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = [(e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()]
    total = sum(ms for _, ms in rows)
    conv = sum(ms for k, ms in rows if "conv" in k)
    top = sorted(rows, key=lambda r: -r[1])[:10]
    return {
        "total_ms": round(total, 1),
        "conv_ms": round(conv, 1),
        "conv_share": round(conv / total, 4) if total else None,
        "top": [[k, round(ms, 1)] for k, ms in top],
    }


def convolution_floor(
    results: dict[str, dict[str, Any]], profiles: dict[str, Any], ref: str = "reference"
) -> dict[str, float]:
    """Per variant: the largest speed-up over ``ref`` it could reach if everything but its
    convolutions took no time: ``ref best_s / (conv_share x variant best_s)``.

    lsslib and the reference call the same oneDNN convolutions on the same shapes, so a
    target above this bound needs faster convolution arithmetic, not less overhead.
    """
    out = {}
    if ref not in results:
        return out
    for name, prof in profiles.items():
        if name == ref or not prof or not prof.get("conv_share"):
            continue
        floor_s = prof["conv_share"] * results[name]["best_s"]
        out[name] = round(results[ref]["best_s"] / floor_s, 3)
    return out


def print_op_profiles(profiles: dict[str, Any], floors: dict[str, float]) -> None:
    for name, prof in profiles.items():
        if not prof:
            continue
        top = ", ".join(f"{k} {ms:.0f}" for k, ms in prof["top"][:5])
        print(
            f"   ops     {name}: convolutions {100 * prof['conv_share']:.1f} % of "
            f"{prof['total_ms']:.0f} ms self CPU time (profiled run); largest: {top} ms"
        )
    for name, f in floors.items():
        print(
            f"   floor   {name}: at most {f}x the reference if everything but its "
            "convolutions were free"
        )


# ------------------------------------------------------ peak RSS in fresh processes
def rss_only(args, variants: dict[str, Callable[[], Any]]) -> None:
    """Child mode (``--rss-only NAME``): run one variant once, print its RSS figures, exit.

    The printed JSON line gives ``peak_rss_mib`` (VmHWM: the process's resident-set
    high-water mark during the run, interpreter, torch and inputs included; the
    mark is reset after building the inputs, so that a larger set-up, e.g.
    bench_distill's stand-in expert steps at batch 256, does not hide the run)
    and ``base_rss_mib`` (VmRSS just before the run).
    """
    if not args.rss_only:
        return
    gc.collect()
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then VmHWM is the whole process's peak
    base = (_status_kb("VmRSS") or 0) * 1024
    variants[args.rss_only]()
    peak = (_status_kb("VmHWM") or 0) * 1024
    print(
        json.dumps(
            {"rss_only": args.rss_only, "peak_rss_mib": mib(peak), "base_rss_mib": mib(base)}
        )
    )
    sys.exit(0)


def _child_argv(name: str) -> list[str]:
    out, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--out", "--rss-rounds", "--rss-only"):
            skip = True
            continue
        if a.startswith(("--out=", "--rss-rounds=", "--rss-only=")):
            continue
        out.append(a)
    return [sys.executable, str(Path(sys.argv[0]).resolve()), *out, "--rss-only", name]


def rss_in_fresh_processes(
    args, dev: torch.device, names: list[str]
) -> dict[str, dict[str, Any]] | None:
    """Peak RSS of each variant, each run alone in a fresh process, alternating ``names``.

    A variant measured in-process after another inherits that one's heap (with the
    tuned malloc nothing is returned to the system), so the RSS comparison runs
    every variant in its own process, ``--rss-rounds`` times, in turn. CPU only.

    Returns:
        Per name: ``peak_rss_mib`` (the largest of the rounds), ``added_mib`` (peak
        minus the RSS before the run, largest of the rounds), ``rounds`` (all values);
        ``None`` when off (CUDA, or ``--rss-rounds 0``).
    """
    rounds = args.rss_rounds if args.rss_rounds is not None else (0 if dev.type == "cuda" else 2)
    if rounds <= 0 or dev.type == "cuda":
        return None
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            out = subprocess.run(_child_argv(name), capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        n: {
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "added_mib": max(r["peak_rss_mib"] - r["base_rss_mib"] for r in rs),
            "rounds": rs,
        }
        for n, rs in runs.items()
    }


def vs_reference(
    results: dict[str, dict[str, Any]], rss: dict | None, ref: str = "reference"
) -> dict[str, dict[str, Any]]:
    """Speed and peak-RSS ratios of every variant against the plain reference.

    ``speed_*``: reference seconds / variant seconds (> 1: the variant is faster)
    for the best round, the median round and the process CPU time; ``peak_rss``:
    variant / reference peak RSS in fresh processes (< 1.25 is the issue-16 bound);
    ``added_rss``: the same for the RSS added by the run.
    """
    if ref not in results:
        return {}
    r0 = results[ref]
    out = {}
    for name, r in results.items():
        if name == ref:
            continue
        row = {
            "speed_best": round(r0["best_s"] / r["best_s"], 3),
            "speed_median": round(r0["median_s"] / r["median_s"], 3),
            "speed_cpu_time": round(r0["best_cpu_s"] / r["best_cpu_s"], 3),
        }
        if rss and name in rss and ref in rss:
            row["peak_rss"] = round(rss[name]["peak_rss_mib"] / rss[ref]["peak_rss_mib"], 3)
            row["added_rss"] = round(rss[name]["added_mib"] / max(rss[ref]["added_mib"], 1e-9), 3)
        out[name] = row
    return out


def print_vs_reference(ratios: dict[str, dict[str, Any]], rss: dict | None) -> None:
    if rss:
        print(
            "   RSS     peak in fresh processes (max of rounds; added by the run): "
            + "; ".join(
                f"{n} {v['peak_rss_mib']:.0f} MiB (+{v['added_mib']:.0f})" for n, v in rss.items()
            )
        )
    for name, r in ratios.items():
        mem = f"; peak RSS {r['peak_rss']}x (added {r['added_rss']}x)" if "peak_rss" in r else ""
        print(
            f"   vs ref  {name} / reference: speed {r['speed_best']}x best, "
            f"{r['speed_median']}x median, {r['speed_cpu_time']}x CPU time{mem}"
        )


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def setup(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> torch.device:
    """Fill unset size flags from the quick/full presets, pick and configure the device."""
    preset = quick if args.quick else full
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.device is None:
        args.device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here; use --device cpu (or --quick)")
        if dev.index is not None:
            torch.cuda.set_device(dev)
        enable_tf32(args.tf32)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    args.malloc_tuned = False
    if dev.type == "cpu" and args.malloc_tuning:
        args.malloc_tuned = tune_cpu_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return dev


def spec_of(args) -> ConvNetSpec:
    return ConvNetSpec(3, 32, args.classes, depth=args.depth, width=args.width)


def first_layer_flops(spec: ConvNetSpec) -> int:
    """Forward FLOPs of the first convolution on one image (its input gradient is never needed)."""
    return 2 * spec.side * spec.side * spec.width * spec.channels * 9


def train_flops_per_image(spec: ConvNetSpec) -> int:
    """One SGD step on one image: forward F, weight gradients F, input gradients F - F1.

    Every layer (convolutions and the linear layer, which are all that
    :func:`lsslib.models.flops_per_image` counts) costs its forward matmul once
    more for dL/dW and once more for dL/dX, except the first layer, whose
    dL/dX is not computed (the images do not require grad): 3F - F1 (~3F).
    Norm, ReLU, pooling and the loss are memory-bound and not counted.
    """
    return 3 * flops_per_image(spec) - first_layer_flops(spec)


# ----------------------------------------------------------------- device facts
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(dev: torch.device, args=None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(dev),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "lsslib": lsslib.__version__,
        "platform": platform.platform(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "malloc_tuned": getattr(args, "malloc_tuned", False),
        "load_average_start": load_average(),
    }
    if dev.type == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(dev),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
        info["device_string"] = f"{info['gpu']} (CUDA {info['cuda']})"
    else:
        info["device_string"] = f"{info['cpu']}, {info['torch_threads']} threads" + (
            ", tuned malloc" if info["malloc_tuned"] else ""
        )
    return info


def _git(*cmd: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def measure_cpu_matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` GFLOP/s of an fp32 n x n matmul on this CPU: the practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def device_peak(dev: torch.device, args) -> tuple[float | None, str]:
    """``(peak TFLOP/s, where it comes from)`` for the fraction-of-peak figures."""
    if args.peak_tflops:
        return args.peak_tflops, "given by --peak-tflops"
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        tf32 = torch.backends.cudnn.allow_tf32
        for key, fp32, tf32_dense in GPU_PEAKS:
            if key in name:
                if tf32:
                    return tf32_dense, f"NVIDIA datasheet {key}: TF32 tensor-core dense peak"
                return fp32, f"NVIDIA datasheet {key}: FP32 (non-tensor) peak"
        return None, f"unknown GPU {name!r}: pass --peak-tflops"
    g = measure_cpu_matmul_gflops()
    return g / 1e3, (
        f"measured fp32 2048x2048 matmul on this CPU, best of 10, "
        f"{torch.get_num_threads()} threads: {g:.1f} GFLOP/s (practical peak)"
    )


def recheck_peak(
    dev: torch.device, args, peak: tuple[float | None, str]
) -> tuple[float | None, str]:
    """CPU: measure the matmul peak again after the timed runs and keep the larger.

    On a shared machine one measurement can be taken while other jobs run; the
    larger of two is closer to what this CPU can do. GPU or ``--peak-tflops``: unchanged.
    """
    if dev.type == "cuda" or args.peak_tflops or peak[0] is None:
        return peak
    again = measure_cpu_matmul_gflops() / 1e3
    if again <= peak[0]:
        print(f"   peak    {peak[0]:.3f} TFLOP/s (kept; a second measurement gave {again:.3f})")
        return peak
    print(f"   peak    {again:.3f} TFLOP/s (a second measurement, after the runs)")
    return again, (
        f"measured fp32 2048x2048 matmul on this CPU, best of 10 before and 10 after the "
        f"runs, {torch.get_num_threads()} threads: {1e3 * again:.1f} GFLOP/s (practical peak)"
    )


# ----------------------------------------------------------------------- memory
_LIBC = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except OSError:
        pass


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


class PeakMemory:
    """Peak memory of the block.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset (exact, tensors only).
    CPU: the process's resident-set high-water mark (VmHWM), reset through
    ``/proc/self/clear_refs`` after ``gc.collect()`` + ``malloc_trim(0)``, minus
    the resident set at the start: the extra RAM the block needed (includes
    allocator slack; noisy at the MB level). Without ``clear_refs`` it falls
    back to ``ru_maxrss``, the whole process's peak (``method`` says which).
    """

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.peak_bytes = 0
        self.base_bytes = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.base_bytes = torch.cuda.memory_allocated(self.dev)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs (RSS high-water mark)"
        except OSError:
            self.method = "ru_maxrss (process peak, not resettable)"
        self.base_bytes = (_status_kb("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.dev)
            return
        if self.method.startswith("VmHWM"):
            self.peak_bytes = (_status_kb("VmHWM") or 0) * 1024
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @property
    def extra_bytes(self) -> int:
        return max(0, self.peak_bytes - self.base_bytes)


# ----------------------------------------------------------------------- timing
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def interleaved_times(
    variants: dict[str, Callable[[], Any]], repeats: int, dev: torch.device
) -> dict[str, list[tuple[float, float]]]:
    """``(wall s, process CPU s)`` of each variant, ``repeats`` rounds, variants interleaved.

    Interleaving spreads the load of other jobs on a shared machine over all
    variants alike; report the best (least disturbed) and the median. The
    process CPU time (all threads) is less sensitive to other jobs than wall
    time on a busy CPU; on a GPU it only measures the host side.
    """
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(dev)
            c, t = time.process_time(), time.perf_counter()
            fn()
            sync(dev)
            out[name].append((time.perf_counter() - t, time.process_time() - c))
    return out


def summarise(times: list[tuple[float, float]]) -> dict[str, Any]:
    wall = [w for w, _ in times]
    cpu = [c for _, c in times]
    return {
        "best_s": min(wall),
        "median_s": statistics.median(wall),
        "all_s": [round(t, 4) for t in wall],
        "best_cpu_s": min(cpu),
        "median_cpu_s": statistics.median(cpu),
    }


def of_peak(result: dict[str, Any]) -> str:
    """`` = 12.34% of peak`` for a printed line, or nothing when no peak is known."""
    f = result["fraction_of_peak"]
    return "" if f is None else f" = {100 * f:.2f}% of peak"


def mib(b: float) -> float:
    return round(b / 2**20, 1)


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print the one-line JSON record (last line of output) and write it to ``out``."""
    result.setdefault("load_average_end", load_average())
    line = json.dumps(result, sort_keys=False, default=_jsonable)
    print(line, flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n")


def _jsonable(o):
    if isinstance(o, torch.device):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def header(title: str, info: dict[str, Any], config: dict[str, Any], peak: tuple) -> None:
    print(f"== {title}")
    print(f"   device  {info['device_string']}; torch {info['torch']}; {info['date_utc']}")
    print(f"   config  {json.dumps(config)}")
    print(f"   peak    {peak[0] if peak[0] is None else f'{peak[0]:.3f}'} TFLOP/s ({peak[1]})")

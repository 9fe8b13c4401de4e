"""Sharded exact matching (``grad_mode='sharded'``): memory per rank and time per iteration.

One iteration of the matching loss (:func:`lsslib.sharded.sharded_loss`) on random tensors
of CIFAR-10 shape (ConvNetD3, ``--width``; ``--ipc`` pixel images per class, every image
in each of the ``--syn-steps`` inner steps, soft labels, DSA), run by 1 process (the
checkpointed mode, which the sharded one is with one rank) and by ``--world`` gloo ranks
on the CPU (one thread each, ``env://`` rendezvous on 127.0.0.1). Each process builds its
inputs, then measures its resident-set high-water mark over ``--iters`` iterations
(:class:`_common.PeakMemory`: VmHWM reset after building the inputs, minus the RSS at that
point) and the seconds of every iteration after the first. The prediction of
:func:`lsslib.sharded.memory_model` is printed beside each measurement.

The workers run with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``;
``--glibc-default`` leaves it dynamic): every tensor is then its own mapping, returned on
free, so the resident set follows the live tensors. With the dynamic threshold a freed
activation raises the threshold and the next ones come from the heap, whose slack the
high-water mark then includes (run to run it moved by tens of MiB at batch 16 and by
hundreds at batch 50 over 3 iterations): a measure of glibc, not of the method.

``--calibrate`` also runs 1 process at batches 4, 16 and 32 (2 inner steps): the slope
of the extra peak per image over the forward activations is ``GRAPH_FACTOR``, the
intercept ``RUNTIME_BYTES`` of :mod:`lsslib.sharded`.

The record goes to ``benchmarks/records/extra/`` (the book's speed table reads only the
stage benchmarks' records in ``benchmarks/records/``).

Usage::

    python benchmarks/bench_sharded.py --calibrate --out benchmarks/records/extra/cpu_sharded_w128_ipc10.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import PeakMemory, device_info, emit, mib

from lsslib import sharded
from lsslib.matching import matching_loss
from lsslib.models import ConvNetSpec, init_flat
from lsslib.plan import make_plan

C, SIDE, K = 3, 32, 10


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One process (a rank when the rendezvous is set): build, measure, report."""
    torch.set_num_threads(args.threads)
    created = sharded.ensure_process_group() if os.environ.get("WORLD_SIZE") else False
    rank, ws = sharded.world()
    g = torch.Generator().manual_seed(0)
    spec = ConvNetSpec(C, SIDE, K, depth=3, width=args.width)
    n = args.ipc * K
    start = init_flat(spec, g)
    target = start + 0.01 * torch.randn(start.shape, generator=g)
    x = torch.randn(n, C, SIDE, SIDE, generator=g).requires_grad_(True)
    logits = torch.randn(n, K, generator=g).requires_grad_(True)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    batch = args.batch or n
    plans = [
        make_plan(n, args.syn_steps, batch, SIDE, "color_crop_cutout_flip_scale_rotate", g)
        for _ in range(args.iters)
    ]
    times = []
    with PeakMemory(torch.device("cpu")) as pm:
        for plan in plans:
            t0 = time.perf_counter()
            matching_loss(spec, start, target, x, logits.softmax(-1), syn_lr, plan, "sharded")
            times.append(time.perf_counter() - t0)
    model = sharded.memory_model(
        spec, images=n, batch_syn=batch, syn_steps=args.syn_steps, world_size=ws
    )
    if created:
        torch.distributed.destroy_process_group()
    return {
        "rank": rank,
        "world_size": ws,
        "threads": args.threads,
        "batch_syn": batch,
        "syn_steps": args.syn_steps,
        "base_rss_mib": round(mib(pm.base_bytes), 1),
        "peak_rss_mib": round(mib(pm.peak_bytes), 1),
        "extra_mib": round(mib(pm.extra_bytes), 1),
        "model_mib": round(mib(model.total), 1),
        "model_terms_mib": {k: round(mib(v), 2) for k, v in vars(model).items()},
        "model_vs_measured": round(model.total / max(pm.extra_bytes, 1), 3),
        "peak_method": pm.method,
        "seconds_first": round(times[0], 3),
        "seconds_per_iteration": [round(t, 3) for t in times[1:]],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace, world: int, threads: int, **over: Any) -> list[dict]:
    """Run ``world`` worker processes (a gloo group when ``world`` > 1); their reports."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads)]
    for k, v in {**vars(args), **over}.items():
        if k in ("width", "ipc", "syn_steps", "iters", "batch") and v is not None:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    port, procs = str(_free_port()), []
    for r in range(world):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if not args.glibc_default:
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        for k in sharded.RENDEZVOUS_ENV:
            env.pop(k, None)
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r))
            env.update(WORLD_SIZE=str(world), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a worker failed: {[p.returncode for p in procs]}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def _summary(reports: list[dict]) -> dict[str, Any]:
    secs = [t for r in reports for t in r["seconds_per_iteration"]]
    return {
        "peak_extra_mib_max_rank": max(r["extra_mib"] for r in reports),
        "model_mib": reports[0]["model_mib"],
        "seconds_per_iteration_median": round(statistics.median(secs), 3) if secs else None,
        "ranks": reports,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--syn-steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="batch_syn (default: all images)")
    p.add_argument("--iters", type=int, default=2, help="iterations per process (1st untimed)")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="threads of the 1 process")
    p.add_argument("--calibrate", action="store_true")
    p.add_argument("--glibc-default", action="store_true", help="dynamic mmap threshold")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    threads = args.threads or args.world  # the same cores as the ranks, one each
    info = device_info(torch.device("cpu"))
    rec: dict[str, Any] = {"bench": "sharded", **info}
    rec["config"] = {
        "model": f"ConvNetD3 width {args.width}",
        "input": f"{C}x{SIDE}x{SIDE} random, {K} classes",
        "images": args.ipc * K,
        "ipc": args.ipc,
        "syn_steps": args.syn_steps,
        "batch_syn": args.batch or args.ipc * K,
        "iters": args.iters,
        "labels": "soft (softmax of a logits leaf)",
        "dsa": "color_crop_cutout_flip_scale_rotate",
        "backend": "gloo",
        "world": args.world,
        "threads_single": threads,
        "threads_per_rank": 1,
        "malloc": "glibc default" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=65536",
    }
    one = _summary(launch(args, 1, threads))
    many = _summary(launch(args, args.world, 1))
    rec["results"] = {"one_process": one, f"{args.world}_ranks": many}
    rec["ratios"] = {
        "memory_per_rank_vs_one_process": round(
            many["peak_extra_mib_max_rank"] / one["peak_extra_mib_max_rank"], 3
        ),
        "speed_vs_one_process": round(
            one["seconds_per_iteration_median"] / many["seconds_per_iteration_median"], 3
        ),
    }
    if args.calibrate:
        rec["calibration"] = [
            launch(args, 1, 1, batch=b, syn_steps=2, iters=1)[0] for b in (4, 16, 32)
        ]
    emit(rec, args.out)


if __name__ == "__main__":
    main()

"""The CPU malloc tuning's trade per stage: time against peak RSS, each run in a fresh process.

``lsslib.training.tune_cpu_malloc`` (glibc ``mallopt``: mmap off, trim threshold
raised, top pad 64 MiB; called by ``lsslib.report.pick_device`` and by the
benchmarks unless ``--no-malloc-tuning``) keeps freed tensor memory in the heap.
This script runs one short piece of each stage, with and without the tuning,
every (stage, tuning) pair in its own fresh process, alternating, and reports
wall and process CPU time, minor page faults and the peak RSS (VmHWM) of each:

* ``experts``: ``train_nets``, E=2 nets, one epoch over ``--images`` images, batch 256, DSA;
* ``evaluate``: ``evaluate_images``, 1 net on 10 images, ``--eval-epochs`` epochs,
  ``--test-images`` test images (memory-sized test batches);
* ``distill``: one ``matching_loss`` iteration (``unrolled``), IPC 1 (10 images),
  syn_steps 10, DSA.

Usage::

    python benchmarks/bench_malloc.py --width 128 --threads 1 --rounds 1 \\
        --out benchmarks/records/extra/cpu_malloc_w128.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import _status_kb, emit, load_average, mib

STAGES = ("experts", "evaluate", "distill")


def child(args) -> None:
    import torch

    from lsslib.training import tune_cpu_malloc

    tuned = tune_cpu_malloc() if args.tuned else False
    torch.set_num_threads(args.threads)
    from lsslib.config import DataConfig, EvalConfig
    from lsslib.data import Normaliser, RealData
    from lsslib.evaluate import evaluate_images
    from lsslib.matching import matching_loss
    from lsslib.models import ConvNetSpec, init_flat
    from lsslib.plan import make_plan
    from lsslib.training import TrainState, train_nets

    spec = ConvNetSpec(3, 32, 10, width=args.width)
    g = torch.Generator().manual_seed(0)
    dsa = "color_crop_cutout_flip_scale_rotate"
    if args.stage == "experts":
        x = torch.randn(args.images, 3, 32, 32, generator=g)
        y = torch.randint(10, (args.images,), generator=g)
        gens = [torch.Generator().manual_seed(s) for s in range(2)]
        flats = torch.stack([init_flat(spec, gg) for gg in gens])

        def run():
            st = TrainState(flats.clone(), torch.zeros_like(flats), gens, 0)
            train_nets(
                spec,
                st,
                x,
                y,
                epochs=1,
                lr=0.01,
                momentum=0.0,
                weight_decay=0.0,
                batch_size=256,
                dsa_strategy=dsa,
            )
    elif args.stage == "evaluate":
        x = torch.randn(10, 3, 32, 32, generator=g)
        y = torch.softmax(torch.randn(10, 10, generator=g), -1)
        data = RealData(
            x,
            torch.arange(10),
            torch.randn(args.test_images, 3, 32, 32, generator=g),
            torch.randint(10, (args.test_images,), generator=g),
            [str(i) for i in range(10)],
            Normaliser(torch.zeros(3), torch.ones(3)),
            DataConfig(normalisation="none"),
        )
        cfg = EvalConfig(num_eval=1, eval_epochs=args.eval_epochs)

        def run():
            evaluate_images(spec, x, y, data, cfg, lr=0.01, progress=False)
    else:
        start = init_flat(spec, g)
        target = start + 0.01 * torch.randn(start.shape, generator=g)
        xs = torch.randn(10, 3, 32, 32, generator=g).requires_grad_(True)
        lr = torch.tensor(0.01, requires_grad=True)
        plan = make_plan(10, 10, 10, 32, dsa, g)

        def run():
            matching_loss(
                spec, start, target, xs, torch.arange(10), lr, plan, "unrolled"
            ).backward()

    base = (_status_kb("VmRSS") or 0) * 1024
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c, t = time.process_time(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    peak = (_status_kb("VmHWM") or 0) * 1024
    print(
        json.dumps(
            {
                "stage": args.stage,
                "tuned": tuned,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "minor_faults": faults,
                "peak_rss_mib": mib(peak),
                "base_rss_mib": mib(base),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="fresh-process rounds per pair")
    p.add_argument("--images", type=int, default=512, help="experts: images (default 512)")
    p.add_argument("--eval-epochs", type=int, default=30, help="evaluate: epochs (default 30)")
    p.add_argument("--test-images", type=int, default=2000, help="evaluate: test images")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--out", default=None)
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--tuned", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        child(args)
        return
    load0 = load_average()
    rows = []
    common = [
        "--width",
        str(args.width),
        "--threads",
        str(args.threads),
        "--images",
        str(args.images),
        "--eval-epochs",
        str(args.eval_epochs),
        "--test-images",
        str(args.test_images),
    ]
    for stage in [s for s in args.stages.split(",") if s]:
        for _ in range(args.rounds):
            for tuned in (1, 0):
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    *common,
                    "--stage",
                    stage,
                    "--tuned",
                    str(tuned),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"   {stage:9s} {'tuned  ' if row['tuned'] else 'untuned'} wall {row['wall_s']:7.2f} s  "
                    f"CPU {row['cpu_s']:7.2f} s  minor faults {row['minor_faults']:9d}  "
                    f"peak RSS {row['peak_rss_mib']:7.0f} MiB (base {row['base_rss_mib']:.0f})",
                    flush=True,
                )
    emit(
        {
            "bench": "malloc",
            "command": " ".join(["python", *sys.argv]),
            "load_average_start": load0,
            "width": args.width,
            "threads": args.threads,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()

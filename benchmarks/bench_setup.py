"""Set-up time of a distillation run: ``Distiller(...)`` construction, before the first iteration.

On the full CIFAR-10 training set (``load_data``, ZCA; needs the dataset or its
decoded cache, ``$LSS_CACHE_DIR``) with a ConvNetD3 expert buffer. The
construction picks the initial real images (``lsslib.synset._pick_real``: the
expert classifies candidates of each class in chunks until it has enough
correct ones), factorises them, initialises the soft labels from every expert's
final parameters and builds the optimisers. ``--repeats`` constructions run in
this process: the first also pays one-time costs (``torch.optim`` imports
``torch._dynamo`` on first use; oneDNN builds its kernels), the later ones show
the warm figure.

The buffer: ``--buffer FOLDER`` is used if it holds one; otherwise a small one
is trained there first (2 experts x 4 epochs on 100 images per class; the
buffer check does not include the subset), whose experts classify about a third
of the training images correctly, fewer than a real buffer's.

Usage::

    python benchmarks/bench_setup.py --buffer /tmp/lss_buffer_w128 --threads 2 --out benchmarks/records/extra/cpu_setup_w128.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import device_info, emit

from lsslib.config import BufferConfig, DataConfig, DistillConfig, ModelConfig
from lsslib.data import load_data
from lsslib.distill import Distiller
from lsslib.experts import train_experts
from lsslib.training import tune_cpu_malloc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--buffer", required=True, help="expert buffer folder (trained if empty)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="constructions per parameterisation")
    p.add_argument("--parameterisations", default="lowrank,pixels")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.malloc_tuned = tune_cpu_malloc()
    info = device_info(torch.device("cpu"), args)  # provenance, as the stage benchmarks
    data_cfg = DataConfig(dataset="cifar10")
    real = load_data(data_cfg, progress=False)
    sub = load_data(
        DataConfig(dataset="cifar10", train_per_class=100, test_per_class=10), progress=False
    )
    buffer = train_experts(
        sub,
        ModelConfig(),
        BufferConfig(num_experts=2, train_epochs=4, experts_per_group=2),
        args.buffer,
        log=lambda _line: None,
    )
    del sub
    rows = []
    for par in [s for s in args.parameterisations.split(",") if s]:
        for rep in range(args.repeats):
            out = Path(tempfile.mkdtemp(prefix="lss_setup_"))
            cfg = DistillConfig(
                parameterisation=par, ipc=args.ipc, syn_steps=10, expert_epochs=2, max_start_epoch=2
            )
            t = time.perf_counter()
            Distiller(cfg, data_cfg, buffer, real.x_train, real.y_train, out)
            s = time.perf_counter() - t
            shutil.rmtree(out)
            rows.append({"parameterisation": par, "construction": rep + 1, "seconds": round(s, 2)})
            print(
                f"   {par:8s} construction {rep + 1}: {s:6.2f} s "
                f"(threads {args.threads}, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    emit(
        {
            "bench": "setup",
            **info,
            "ipc": args.ipc,
            "width": 128,
            "threads": args.threads,
            "buffer_experts": buffer.num_experts,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()

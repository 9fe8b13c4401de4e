"""One distillation run by several processes: the ``torchrun`` launch of the distill stage.

With ``world_size`` N > 1 (the profile key of :data:`lsslib.profiles.LAUNCH_KEYS`, the
``world_size`` parameter of ``notebooks/02_distill``) and no process group,
:func:`lsslib.stages.distill` calls :func:`torchrun`, which starts, from the interpreter
that runs the stage::

    python -m torch.distributed.run --standalone --nproc-per-node N -m lsslib.launch --spec JSON

(``torchrun``, one node, a c10d rendezvous on a free local port), prints the ranks' output
as it comes, waits, and raises if a rank failed. Every rank runs :func:`run_rank` with the
same parameters: it loads the data, opens the expert buffer and builds the same
:class:`lsslib.distill.Distiller` with ``grad_mode='sharded'`` (:mod:`lsslib.sharded`),
so rank 0 alone holds the run folder and writes its checkpoints, log and set, and every
rank resumes from rank 0's checkpoint. The stage then reads what rank 0 wrote and draws
the figures once, as after a single-process run.

Devices: on the CPU the ranks use gloo; on CUDA NCCL with one GPU per rank
(``cuda:LOCAL_RANK``; N must not exceed the visible GPUs). The threads of the stage
(``$OMP_NUM_THREADS``, else torch's) are split evenly over the ranks.

Source: ``torchrun`` (``torch.distributed.run``) is PyTorch's elastic launcher; the
numbers are :mod:`lsslib.sharded`'s (book page ``book/scaling.md``).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .config import RENDEZVOUS_ENV, STAGE_CONFIGS, _fail
from .data import load_data
from .distill import Distiller
from .experts import ExpertBuffer
from .sharded import launch, world

__all__ = [
    "SPEC_KEYS",
    "in_process_group",
    "check_devices",
    "rank_threads",
    "command",
    "torchrun",
    "rank_device",
    "run_rank",
    "main",
]

#: What :func:`run_rank` receives (as one JSON object after ``--spec``).
SPEC_KEYS = ("params", "buffer_dir", "out_dir", "device", "snapshot_every")

#: Lines of the ranks' output kept for the error message of a failed launch.
TAIL_LINES = 40

_REPO = Path(__file__).resolve().parents[1]  # the lsslib the ranks must import

#: A line of a Python traceback that names the exception (``ValueError: invalid ...``).
_ERROR_LINE = re.compile(r"^(\[rank\d+\]: )?[A-Za-z_][\w.]*(Error|Exception|Fault|Busy|Mismatch): ")


def in_process_group() -> int | None:
    """The world size of this process's group or ``torchrun`` rendezvous (``None``: none,
    so a multi-process run has to be started)."""
    ws = world()[1]
    if ws > 1:
        return ws
    if all(os.environ.get(k) for k in RENDEZVOUS_ENV):
        return int(os.environ["WORLD_SIZE"])
    return None


def check_devices(world_size: int, device: str | torch.device) -> None:
    """Check that ``world_size`` processes can run on ``device``, before any work.

    Raises:
        ValueError: ``device`` neither ``cpu`` nor ``cuda`` (names ``device``); more
            ranks than visible CUDA devices (names ``world_size``).
    """
    if world_size <= 1:
        return
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        _fail(
            "device",
            str(device),
            f"cpu (gloo) or cuda (NCCL, one GPU per rank) with world_size={world_size}",
        )
    if dev.type == "cuda" and world_size > torch.cuda.device_count():
        _fail(
            "world_size",
            world_size,
            f"at most the {torch.cuda.device_count()} visible CUDA devices (one GPU per rank)",
        )


def rank_threads(world_size: int) -> int:
    """Threads per rank: the stage's (``$OMP_NUM_THREADS``, else torch's) split evenly, at
    least 1."""
    try:
        total = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        total = torch.get_num_threads()
    return max(1, total // world_size)


def command(spec: Mapping[str, Any], world_size: int) -> list[str]:
    """The ``torchrun`` command line of one launch (``python -m torch.distributed.run``
    of this interpreter, so that the ranks run the stage's environment)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(world_size),
        "-m",
        "lsslib.launch",
        "--spec",
        json.dumps(dict(spec), sort_keys=True),
    ]


def torchrun(
    params: Mapping[str, Any],
    buffer_dir: str | Path,
    out_dir: str | Path,
    device: str | torch.device,
    world_size: int,
    *,
    snapshot_every: int | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Run one distillation over ``world_size`` processes and wait for it.

    Args:
        params: the stage's flat distill parameters (:func:`lsslib.stages.stage_parameters`),
            with ``grad_mode='sharded'``; JSON-serialisable.
        buffer_dir: an existing expert buffer.
        out_dir: the run folder (rank 0 writes it; a checkpoint there is resumed).
        device: ``cpu`` or ``cuda`` (each rank takes ``cuda:LOCAL_RANK``).
        world_size: processes, >= 2 (checked by the caller,
            :func:`lsslib.profiles.check_world_size`, :func:`check_devices`).
        snapshot_every: as :meth:`lsslib.distill.Distiller.run`.
        log: receives every line the ranks print.

    Raises:
        RuntimeError: a rank failed (torchrun's exit status and the ranks' last lines).
    """
    spec = {
        "params": dict(params),
        "buffer_dir": str(buffer_dir),
        "out_dir": str(out_dir),
        "device": torch.device(device).type,
        "snapshot_every": snapshot_every,
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(rank_threads(world_size)))
    env["MKL_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")])
    for k in RENDEZVOUS_ENV:  # torchrun sets its own; a stale one must not leak in
        env.pop(k, None)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    errors: list[str] = []  # the ranks' exception lines, which torchrun's report buries
    proc = subprocess.Popen(
        command(spec, world_size),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    try:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if _ERROR_LINE.match(tail[-1]):
                errors.append(tail[-1])
            log(tail[-1])
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the ranks (every write is atomic)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if code != 0:
        first = f": {errors[0]}" if errors else ""
        raise RuntimeError(
            f"torchrun of {world_size} distillation ranks into {out_dir} exited with "
            f"status {code}{first}; the ranks' last lines:\n" + "\n".join(tail)
        )


def _die_with_parent() -> None:
    """In the launcher's child, before ``exec``: SIGTERM when the stage's process dies,
    however it dies (Linux ``prctl(PR_SET_PDEATHSIG)``), so that no rank outlives it;
    torchrun passes the SIGTERM on to its ranks."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def rank_device(device: str) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for ``cuda``, else ``device``."""
    if torch.device(device).type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


def run_rank(spec: Mapping[str, Any]) -> str:
    """One rank's part of a launch: the same distillation on every rank.

    Args:
        spec: :data:`SPEC_KEYS` (``params``: the flat distill parameters).

    Returns:
        The JSON path of the synthetic set (written by rank 0).

    Raises:
        ValueError: missing or unknown keys of ``spec``; any error of the data, the
            buffer or the :class:`~lsslib.distill.Distiller` (the same as one process's).
    """
    if set(spec) != set(SPEC_KEYS):
        _fail("spec", sorted(spec), "exactly the keys " + ", ".join(SPEC_KEYS))
    params = dict(spec["params"])
    data_cfg, model_cfg, cfg = (cls.from_params(params) for cls in STAGE_CONFIGS["distill"])
    device = rank_device(spec["device"])
    real = load_data(data_cfg, device, progress=False)
    lay = cfg.check_against(channels=real.channels, side=real.side, num_classes=real.num_classes)
    run = Distiller(
        cfg,
        data_cfg,
        ExpertBuffer(spec["buffer_dir"]),
        real.x_train,
        real.y_train,
        spec["out_dir"],
        device,
        model_cfg,
        layout=lay,
        normaliser=real.normaliser,
        class_names=real.classes,
    )
    rank, ws = world()
    every = max(1, cfg.iterations // 20)

    def show(row: dict) -> None:
        i = row["iteration"] + 1
        if rank == 0 and (i % every == 0 or i == cfg.iterations):
            print(
                f"iteration {i}/{cfg.iterations}: loss {row['loss']:.4f}, "
                f"syn_lr {row['syn_lr']:.4g}",
                flush=True,
            )

    if rank == 0:
        start = f"resuming at iteration {run.iteration}" if run.iteration else "from iteration 0"
        print(
            f"{ws} ranks on {device.type}: {run.synset.kind}, {run.layout.images_per_class} "
            f"images/class, {run.batch_syn} per inner step ({-(-run.batch_syn // ws)} at "
            f"most per rank); {start}",
            flush=True,
        )
    return str(run.run(callback=show, snapshot_every=spec["snapshot_every"]))


def main(argv: list[str] | None = None) -> None:
    """``python -m lsslib.launch --spec JSON`` under ``torchrun``: :func:`run_rank` on every
    rank inside :func:`lsslib.sharded.launch` (gloo on the CPU, NCCL on CUDA)."""
    p = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    p.add_argument("--spec", required=True, help="JSON object with " + ", ".join(SPEC_KEYS))
    spec = json.loads(p.parse_args(argv).spec)
    torch.set_num_threads(rank_threads(1))  # $OMP_NUM_THREADS, already split by the stage
    launch(run_rank, spec, device=str(spec.get("device", "cpu")))


if __name__ == "__main__":
    main()

"""Each stage notebook runs alone in a fresh runtime, as in Colab.

Every notebook is copied alone into an empty folder and run by papermill with the
smoke profile's sizes. Its install cell really runs, pointed at a wheel built from
this checkout (``LSS_INSTALL``: installed into a folder of its own, which the kernel
imports first), and ``google.colab`` is faked, so the Colab branch runs too. A stage
that lacks its upstream artifacts makes them (the buffer, the synthetic set, the
ablation runs), and each must leave its table and figures.

Needs the offline CIFAR-10, found as the library finds it (``offline_data`` in
``tests/conftest.py``) and handed to the notebooks explicitly (``LSS_DATA_ROOT``): an
installed wheel cannot see the checkout's surroundings. The decoded cache is shared
between the notebooks (``LSS_CACHE_DIR``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NB = REPO / "notebooks"

# notebook -> (papermill arguments, files it must write, relative to its folder)
CASES = {
    "01_buffers": ([], ["results/smoke/buffers/buffer.json", "results/smoke/buffers/experts.md"]),
    "02_distill": (
        [],
        ["results/smoke/runs/lss/synset.json", "results/smoke/runs/lss/grid.png"],
    ),
    "03_evaluate": (
        ["-p", "baseline", "random_real"],
        [
            "results/smoke/baselines/random_real/metrics.json",
            "results/smoke/baselines/random_real/accuracy.md",
        ],
    ),
    "04_ablation_rank": (
        ["-y", "ranks: [2, 4]"],
        ["results/smoke/ablation_rank/table.md", "results/smoke/ablation_rank/rank_sweep.png"],
    ),
    "05_ablation_schedule": (
        ["-y", "schedules: [fixed, linear]"],
        [
            "results/smoke/ablation_schedule/table.md",
            "results/smoke/ablation_schedule/schedule_bounds.png",
        ],
    ),
}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, offline_data) -> dict[str, str]:
    """The environment of a fresh runtime: a wheel of the checkout, a fake Colab, and
    the offline CIFAR-10 named explicitly."""
    data_root = offline_data("cifar10")
    root = tmp_path_factory.mktemp("runtime")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("lsslib-*.whl")
    fake = root / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text('"""Stand-in for Colab."""\n')
    # imported at interpreter start, as Colab's runtime has it loaded
    (fake / "sitecustomize.py").write_text("import google.colab  # noqa: F401\n")
    site = root / "site"
    env = dict(os.environ)
    env.update(
        LSS_INSTALL=f"--no-deps --target {site} {wheel}",
        PYTHONPATH=os.pathsep.join([str(site), str(fake)]),
        LSS_DATA_ROOT=str(data_root),
        LSS_CACHE_DIR=str(root / "cache"),
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
    )
    return env


@pytest.mark.parametrize("stem", sorted(CASES))
def test_a_notebook_alone_in_an_empty_folder_makes_what_it_needs(stem, runtime, tmp_path):
    args, outputs = CASES[stem]
    shutil.copy(NB / f"{stem}.ipynb", tmp_path / f"{stem}.ipynb")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "papermill"),
            f"{stem}.ipynb",
            "out.ipynb",
            "--kernel",
            "python3",
            "-p",
            "profile",
            "smoke",
            *args,
        ],
        cwd=tmp_path,
        env=runtime,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    missing = [o for o in outputs if not (tmp_path / o).is_file()]
    assert not missing, f"{stem} did not write {missing}"
    # the install cell ran: the wheel, with the profiles it ships, is in its folder
    site = runtime["LSS_INSTALL"].split("--target ")[1].split()[0]
    assert (Path(site) / "lsslib" / "_profiles" / "smoke.yaml").is_file()

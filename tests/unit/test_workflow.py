"""The Snakemake workflow: every profile plans, SLURM plans, edits rerun only what they touch.

The tests run Snakemake in a temporary working directory (``--directory``) with
stub notebooks (``--config notebook_dir=...``) that only write the files their
rule promises, so they check the workflow's wiring, not the science, and never
touch the repository's ``results/`` or ``book/_generated/``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILES = REPO / "lsslib" / "_profiles"
PROFILE_NAMES = sorted(p.stem for p in PROFILES.glob("*.yaml"))  # every bundled profile

# What each stub notebook writes, from the path parameters its rule passes.
STUB_OUTPUTS = {
    "01_buffers": "Path(buffer_dir, 'buffer.json')",
    "02_distill": "Path(out_dir, 'synset.json')",
    "03_evaluate": "Path(out_dir, 'metrics.json')",
    "04_ablation_rank": "Path(out_dir, 'table.csv')",
    "05_ablation_schedule": "Path(out_dir, 'table.csv')",
    "06_summary": "Path(book_dir, 'run_info.md')",
    "07_study": "Path(out_dir, 'effects.csv')",
}


def write_stub_notebooks(folder: Path) -> Path:
    """Papermill-ready stub notebooks that create their rule's output and nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, target in STUB_OUTPUTS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        params = nbformat.v4.new_code_cell(
            "buffer_dir = out_dir = book_dir = results_dir = synset_dir = None\n"
            "device = 'cpu'\nbaseline = 'synset'\nreal_ipc = 1\nprofile = ''\nruns = []"
        )
        params.metadata["tags"] = ["parameters"]
        body = nbformat.v4.new_code_cell(
            "from pathlib import Path\n"
            f"target = {target}\n"
            "target.parent.mkdir(parents=True, exist_ok=True)\n"
            "target.write_text('stub\\n')"
        )
        nb.cells = [params, body]
        nbformat.write(nb, folder / f"{stem}.ipynb")
    return folder


def snakemake(
    workdir: Path,
    configfile: Path | None,
    *args: str,
    config: dict | None = None,
    timeout: int = 120,
):
    """Run Snakemake on the repository's Snakefile inside ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    if config:
        cmd += ["--config", *(f"{k}={v}" for k, v in config.items())]
    cmd += list(args)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def planned_jobs(stdout: str) -> set[str]:
    """``rule`` or ``rule[wildcards]`` for every job of a dry run's listing."""
    jobs: set[str] = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", "\n" + stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        wc = re.search(r"^\s+wildcards: (.+)$", block, flags=re.M)
        jobs.add(f"{head.group(1)}[{wc.group(1).strip()}]" if wc else head.group(1))
    return jobs


def job_counts(stdout: str) -> dict[str, int]:
    """The ``Job stats`` table of a dry run as {rule: count}."""
    table = stdout.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    return write_stub_notebooks(tmp_path_factory.mktemp("notebooks"))


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_dry_run_plans_every_stage(name, stubs, tmp_path):
    from lsslib.profiles import expand_profile, load_profile, read_profile

    profile = read_profile(PROFILES / f"{name}.yaml")  # with its extends chain merged
    proc = snakemake(tmp_path, PROFILES / f"{name}.yaml", "-n", config={"notebook_dir": stubs})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = job_counts(proc.stdout)
    # seeded copies of runs and random-real baselines are ordinary jobs
    seeds = profile.get("seeds") or [0]
    seeded = profile.get("seeded") or [*profile["runs"], *(profile.get("baselines") or {})]
    if not isinstance(seeded, dict):  # a list: those names at every seed
        seeded = {n: seeds for n in seeded}
    n_runs = sum(len(seeded.get(r, [seeds[0]])) for r in profile["runs"])
    n_base = sum(
        len(seeded.get(b, [seeds[0]])) if spec.get("kind") == "random_real" else 1
        for b, spec in (profile.get("baselines") or {}).items()
    )
    tuning = profile.get("tuning") or {}
    combos = math.prod(len(v) for v in (tuning.get("grid") or {}).values())
    n_runs += combos * len(tuning.get("runs") or [])  # one run per grid point, first seed
    expected = {"buffers": 1, "distill": n_runs, "evaluate": n_runs, "summary": 1, "all": 1}
    expected["speed_tables"] = 1  # the benchmark records, tabulated for the book
    if n_base:
        expected["baseline"] = n_base
    for kind in profile.get("ablations") or {}:
        expected[f"ablation_{kind}"] = 1
    n_evals = len(expand_profile(load_profile(PROFILES / f"{name}.yaml"))["evals"])
    if n_evals:
        expected["extra_eval"] = n_evals
    if profile.get("study"):
        expected["study"] = 1
    assert counts == expected
    # Results land under results/<profile name>/, the book's inputs under book/_generated.
    assert f"results/{profile['name']}/runs/" in proc.stdout
    assert "book/_generated/run_info.md" in proc.stdout


def test_profile_by_name_matches_configfile(stubs, tmp_path):
    by_file = snakemake(tmp_path, PROFILES / "smoke.yaml", "-n", config={"notebook_dir": stubs})
    by_name = snakemake(tmp_path, None, "-n", config={"profile": "smoke", "notebook_dir": stubs})
    assert by_name.returncode == 0, by_name.stderr
    assert planned_jobs(by_name.stdout) == planned_jobs(by_file.stdout)


def test_cuda_device_requests_gpus_for_gpu_rules(stubs, tmp_path):
    cuda = {"notebook_dir": stubs, "device": "cuda"}
    proc = snakemake(tmp_path, PROFILES / "smoke.yaml", "-n", config=cuda)
    assert proc.returncode == 0, proc.stderr
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        gpu = "gpu=1" in block
        assert gpu == (head.group(1) in {"buffers", "distill", "evaluate", "baseline"}), block
    shown = snakemake(tmp_path, PROFILES / "smoke.yaml", "-n", "-p", config=cuda).stdout
    assert "-p device cuda" in shown


def test_bad_profile_value_fails_before_any_job(stubs, tmp_path):
    profile = yaml.safe_load((PROFILES / "smoke.yaml").read_text())
    profile["runs"]["lss"]["rank"] = 40  # rank must stay below the image side (32)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    proc = snakemake(tmp_path, path, "-n", config={"notebook_dir": stubs})
    assert proc.returncode != 0
    assert "rank=40" in proc.stdout + proc.stderr


def test_slurm_profile_dry_run(stubs, tmp_path):
    """The SLURM executor plans without sbatch in a dry run, with GPUs and partitions."""
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "slurm_partition" in profile["default-resources"]
    proc = snakemake(
        tmp_path,
        PROFILES / "paper.yaml",
        "-n",
        "--profile",
        str(REPO / "workflow" / "profiles" / "slurm"),
        config={"notebook_dir": stubs, "device": "cuda"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    distill = next(
        b for b in re.split(r"\n(?=rule )", proc.stdout) if b.startswith("rule distill:")
    )
    assert "gpu=1" in distill and "slurm_partition=" in distill and "runtime=2880" in distill


def small_smoke_profile(tmp_path: Path) -> tuple[dict, Path]:
    """The smoke profile cut to three runs (each stub costs a kernel start), same shape:
    lss_r2 only in the rank ablation, lss_stair only in the schedule ablation, lss in both."""
    prof = yaml.safe_load((PROFILES / "smoke.yaml").read_text())
    prof["runs"] = {k: prof["runs"][k] for k in ("lss", "lss_r2", "lss_stair")}
    prof["main"] = {"lss": "lss", "mtt": "lss"}
    prof["ablations"] = {"rank": ["lss_r2", "lss"], "schedule": ["lss", "lss_stair"]}
    del prof["baselines"]
    prof.pop("compare", None)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return prof, path


def test_editing_one_run_reruns_only_that_run(tmp_path):
    """Run the smoke plan with stubs, change one distill parameter of one run, and check
    that the dry run plans that run's distill/evaluate and the tables listing it only."""
    stubs = write_stub_notebooks(tmp_path / "nb")
    original, profile = small_smoke_profile(tmp_path)
    config = {"notebook_dir": stubs, "book_dir": "book_out"}

    done = snakemake(tmp_path, profile, "--cores", "2", config=config, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "book_out" / "run_info.md").is_file()
    assert (tmp_path / "book_out" / "notebooks" / "02_distill.ipynb").is_file()
    for rule in ("buffers", "distill_lss", "evaluate_lss_r2", "ablation_rank", "summary"):
        assert (tmp_path / "results" / "smoke" / "benchmarks" / f"{rule}.tsv").is_file()

    unchanged = snakemake(tmp_path, profile, "-n", config=config)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr

    edited = yaml.safe_load(profile.read_text())
    edited["runs"]["lss_r2"]["lr_img"] = 50  # lss_r2 is in the rank ablation only
    profile.write_text(yaml.safe_dump(edited, sort_keys=False))
    plan = snakemake(tmp_path, profile, "-n", config=config)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert planned_jobs(plan.stdout) == {
        "distill[run=lss_r2]",
        "evaluate[run=lss_r2]",
        "ablation_rank",
        "summary",
        "all",
    }
    # An evaluation-only change reruns the evaluation but not the distillation.
    edited["runs"]["lss_r2"]["lr_img"] = original["runs"]["lss_r2"].get(
        "lr_img", original["distill"]["lr_img"]
    )
    edited["runs"]["lss_stair"]["num_eval"] = 3
    profile.write_text(yaml.safe_dump(edited, sort_keys=False))
    plan = snakemake(tmp_path, profile, "-n", config=config)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert planned_jobs(plan.stdout) == {
        "evaluate[run=lss_stair]",
        "ablation_schedule",
        "summary",
        "all",
    }


def test_timed_records_wall_time_and_memory_and_keeps_old_record_on_noop(tmp_path):
    timed = [sys.executable, str(REPO / "workflow" / "scripts" / "timed.py")]
    out = tmp_path / "pipeline_time.txt"
    work = [sys.executable, "-c", "x = bytearray(64 * 2**20)"]
    proc = subprocess.run([*timed, "--out", str(out), "--keep-if", "Nothing", "--", *work])
    assert proc.returncode == 0
    record = yaml.safe_load(out.read_text())
    assert record["exit_status"] == 0 and record["wall_seconds"] >= 0
    assert record["peak_rss_mb"] >= 64
    noop = [
        sys.executable,
        "-c",
        "import sys; print('Nothing to be done', file=sys.stderr); sys.exit(3)",
    ]
    proc = subprocess.run([*timed, "--out", str(out), "--keep-if", "Nothing", "--", *noop])
    assert proc.returncode == 3  # the command's status passes through
    assert yaml.safe_load(out.read_text()) == record  # the old record is kept


def test_rerun_after_a_crash_keeps_finished_jobs(tmp_path):
    """SIGKILL Snakemake (and its jobs) mid-run; the rerun does only what was left."""
    import os
    import signal
    import time

    stubs = write_stub_notebooks(tmp_path / "nb")
    _, profile = small_smoke_profile(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(profile),
        "--cores",
        "1",
        "--config",
        f"notebook_dir={stubs}",
        "book_dir=book_out",
    ]
    bench = tmp_path / "results" / "smoke" / "benchmarks"
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    t0 = time.monotonic()
    while not (bench / "buffers.tsv").is_file() or not list(bench.glob("distill_*.tsv")):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() - t0 < 240, "the first jobs never finished"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "book_out" / "run_info.md").exists(), "killed too late to test anything"
    finished = {p.name: p.stat().st_mtime_ns for p in bench.glob("*.tsv")}

    # A killed Snakemake leaves its lock: release it (what `make unlock` does), then rerun.
    unlock = subprocess.run(
        [*cmd, "--unlock"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    rerun = subprocess.run(
        [*cmd, "--rerun-incomplete"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (tmp_path / "book_out" / "run_info.md").is_file()
    for name, mtime in finished.items():
        assert (bench / name).stat().st_mtime_ns == mtime, f"{name} was redone after the crash"
    assert "rule buffers:" not in rerun.stdout + rerun.stderr

"""The SLURM profile for real: the smoke pipeline on a single-node SLURM this module starts.

``tests/slurm/slurm_cluster.sh`` installs Debian's slurm-wlm, munge, slurmdbd and
MariaDB when missing and starts a one-node cluster (the machine's CPUs and memory,
plus one fake GPU declared as GRES) with its state in a temporary folder; the
module stops it, by pid, when it is done or has failed. Snakemake then runs the
repository's Snakefile with ``--profile workflow/profiles/slurm`` (executor
``slurm``: every job is one ``sbatch`` submission, polled with ``sacct``, or with
``squeue`` in the run that cancels a job: see ``smoke_run``) in a temporary working
directory, so the repository's ``results/`` are not touched.

What the site would edit in the profile -- the partition and the per-rule sizes,
which are the paper's (8 CPUs, 64 GB) and do not fit here -- is given on the
command line instead; the profile's other settings (executor, retries,
rerun-incomplete, latency-wait, keep-going, the gpu resource pool) are used as
they are. Each SLURM rule gets different CPUs/memory/time so that the assertions
can tell the rules apart.

The tests read the jobs back from the accounting database (``sacct``) and check:

* every buffers/distill/evaluate/baseline job of the smoke profile ran as its own
  SLURM job with the CPUs, memory and time limit requested for its rule, and the
  localrules (ablation tables, summary) did not go to SLURM;
* a distillation cancelled with ``scancel`` after its first checkpoint is
  resubmitted (the profile's ``retries: 1``), resumes from the checkpoint (the
  iterations logged before the cancel come back unchanged, timings included) and
  ends with a synthetic set bitwise equal to that of an identical run that was
  not interrupted;
* with ``--config device=cuda`` a GPU rule's job asks for and is given one GPU
  (``ReqTRES``/``AllocTRES`` ``gres/gpu=1``) -- run with a stub notebook, since
  there is no GPU to compute on.

Needs root (slurmd) and Debian/Ubuntu (apt); skipped otherwise. Takes minutes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from lsslib.artifacts import load_artifact

REPO = Path(__file__).resolve().parents[2]
CLUSTER = Path(__file__).with_name("slurm_cluster.sh")
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILES = REPO / "workflow" / "profiles"  # Snakemake profiles (slurm)
EXPERIMENTS = REPO / "lsslib" / "_profiles"  # experiment profiles (smoke)

# (cpus, mem_mb, runtime minutes) per SLURM rule; all different, all small.
SIZES = {
    "buffers": (2, 3000, 20),
    "distill": (1, 2000, 15),
    "evaluate": (1, 1800, 12),
    "baseline": (1, 1600, 11),
}
LOCAL_RULES = ("ablation_rank", "ablation_schedule", "summary")
# The smoke run the test cancels, and its uninterrupted twin.
CANCELLED, TWIN = "lss", "lss_twin"
# Iterations of those two runs: the smoke profile's 4 take about a second, too
# short to cancel in between; at ~0.2-0.5 s each, 40 leave the test ten seconds
# or more after the first checkpoint (checkpoint_every: 2).
SLOW_ITERATIONS = 40
SACCT_FIELDS = (
    "JobIDRaw,JobName,State,ExitCode,ReqCPUS,AllocCPUS,ReqMem,Timelimit,ReqTRES,AllocTRES,Comment"
)
PIPELINE_TIMEOUT = 40 * 60  # seconds; took 12-14 min on a 2-core machine at load ~10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or os.geteuid() != 0,
        reason="starts slurmctld/slurmd: needs root on Linux",
    ),
    pytest.mark.skipif(
        shutil.which("apt-get") is None and shutil.which("slurmctld") is None,
        reason="SLURM is not installed and there is no apt-get to install it",
    ),
]


# ----------------------------------------------------------------------------- helpers
def sizes_args() -> list[str]:
    """Snakemake options giving each SLURM rule its SIZES, and the partition."""
    threads = [f"{rule}={cpus}" for rule, (cpus, _, _) in SIZES.items()]
    res = [
        f"{rule}:{key}={val}"
        for rule, (_, mem, runtime) in SIZES.items()
        for key, val in (("mem_mb", mem), ("runtime", runtime))
    ]
    return [
        "--default-resources",
        "slurm_partition=debug",
        "mem_mb=1000",
        "runtime=10",
        "--set-resources",
        *res,
        "--set-threads",
        *threads,
    ]


def snakemake_cmd(
    workdir: Path, configfile: Path, config: dict, *targets: str, status: str = "sacct"
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--profile",
        str(PROFILES / "slurm"),
        "--config",
        *(f"{k}={v}" for k, v in config.items()),
        *sizes_args(),
        # Poll sacct from 2 s after submission on (default 40 s): the jobs are short.
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-status-command",
        status,
        *targets,
    ]


def sacct(env: dict, first_job: int = 0) -> list[dict[str, str]]:
    """The allocations (``sacct -X``) of the test cluster with id >= first_job."""
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-a", "--starttime", "now-1days", "--format", SACCT_FIELDS],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = SACCT_FIELDS.split(",")
    rows = [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]
    return [r for r in rows if int(r["JobIDRaw"]) >= first_job]


def show(rows: list[dict[str, str]], title: str) -> str:
    text = "\n".join([SACCT_FIELDS.replace(",", "|")] + ["|".join(r.values()) for r in rows])
    print(f"\n--- {title} ---\n{text}")
    return text


def tres(field: str) -> dict[str, str]:
    """``billing=1,cpu=1,gres/gpu=1,mem=2000M,node=1`` as a dict."""
    return dict(kv.split("=", 1) for kv in field.split(",") if "=" in kv)


def last_job_id(env: dict) -> int:
    rows = sacct(env)
    return max((int(r["JobIDRaw"]) for r in rows), default=0)


def stop(proc: subprocess.Popen) -> None:
    """End a Snakemake started here (SIGINT first: it then scancels its jobs)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory, offline_data) -> dict:
    """A running single-node SLURM; yields the environment that talks to it."""
    data_root = offline_data("cifar10")  # before any daemon starts
    subprocess.run(["bash", str(CLUSTER), "install"], check=True)
    folder = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ)
    try:
        subprocess.run(["bash", str(CLUSTER), "start", str(folder)], check=True, timeout=300)
        env["SLURM_CONF"] = str(folder / "etc" / "slurm.conf")
        # Jobs import this checkout's lsslib, and find the data and the decoded-data
        # cache where a run from the repository root would (their cwd is elsewhere).
        sys.path.insert(0, str(REPO))
        from lsslib.data import cache_dir

        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        env["LSS_DATA_ROOT"] = str(data_root)
        env.setdefault("LSS_CACHE_DIR", str((REPO / cache_dir()).resolve()))
        env.setdefault("MPLBACKEND", "Agg")
        env["PYTHONUNBUFFERED"] = "1"
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], check=False, timeout=300)


def slow_twins_profile(path: Path) -> tuple[dict, Path]:
    """The smoke profile with run CANCELLED slowed down and an identical TWIN added."""
    prof = yaml.safe_load((EXPERIMENTS / "smoke.yaml").read_text())
    runs = prof["runs"]
    runs[CANCELLED] = {**runs[CANCELLED], "iterations": SLOW_ITERATIONS}
    runs[TWIN] = dict(runs[CANCELLED])
    assert prof["distill"]["checkpoint_every"] < SLOW_ITERATIONS // 4
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return prof, path


def checkpoint_state(run_dir: Path) -> dict | None:
    """The checkpoint's JSON (iteration, log, ...) if there is one to read now."""
    try:
        return json.loads((run_dir / "checkpoint.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def job_of(env: dict, comment: str) -> str | None:
    """The id of the pending/running job whose --comment is `comment`."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%k"], env=env, capture_output=True, text=True
    ).stdout
    ids = [i for i, c in (line.split("|", 1) for line in out.splitlines()) if c == comment]
    return ids[0] if ids else None


@pytest.fixture(scope="module")
def smoke_run(cluster, tmp_path_factory) -> dict:
    """Run the (slowed) smoke pipeline through SLURM, scancel one distillation mid-run."""
    env = cluster
    work = tmp_path_factory.mktemp("smoke")
    prof, profile = slow_twins_profile(work / "smoke_slurm.yaml")
    # The summary tabulates the repository's benchmark records (relative path).
    (work / "benchmarks").mkdir()
    (work / "benchmarks" / "records").symlink_to(REPO / "benchmarks" / "records")
    config = {
        "notebook_dir": REPO / "notebooks",
        "book_dir": work / "book",
        "device": "cpu",
    }
    first = last_job_id(env) + 1
    log = (work / "snakemake.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        # squeue, not the plugin's default sacct, tells Snakemake the job states:
        # snakemake-executor-plugin-slurm 2.8.0 compares sacct's State with
        # "CANCELLED" exactly, but sacct says "CANCELLED by <uid>" for a scancel, so
        # with sacct Snakemake takes the cancelled job for a running one and waits
        # forever (squeue says "CANCELLED"). squeue keeps finished jobs for MinJobAge,
        # 600 s on this cluster. The test still reads the jobs back from sacct.
        snakemake_cmd(work, profile, config, status="squeue"),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    run_dir = work / "results" / prof["name"] / "runs" / CANCELLED
    comment = f"rule_distill_wildcards_{CANCELLED}"
    cancel: dict = {}
    try:
        # Wait for the first checkpoint after iteration 0 (the run writes one at 0 on
        # start), then cancel that distillation job through the scheduler.
        while proc.poll() is None and time.monotonic() - t0 < PIPELINE_TIMEOUT:
            state = checkpoint_state(run_dir)
            if state and 0 < state["iteration"] < SLOW_ITERATIONS:
                jobid = job_of(env, comment)
                assert jobid, f"checkpoint at iteration {state['iteration']} but no job {comment}"
                subprocess.run(["scancel", jobid], env=env, check=True)
                cancel = {"job": jobid, "iteration": state["iteration"], "log": state["log"]}
                print(f"\nscancel {jobid} ({comment}) at checkpoint iteration {state['iteration']}")
                break
            time.sleep(0.2)
        proc.wait(max(1.0, PIPELINE_TIMEOUT - (time.monotonic() - t0)))
    finally:
        stop(proc)
        log.close()
    seconds = time.monotonic() - t0
    output = (work / "snakemake.log").read_text()
    assert proc.returncode == 0, output[-6000:]
    rows = sacct(env, first)
    show(rows, f"sacct of the smoke pipeline ({seconds:.0f} s)")
    return {
        "work": work,
        "profile": prof,
        "results": work / "results" / prof["name"],
        "rows": rows,
        "cancel": cancel,
        "output": output,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------- tests
def stub_buffers_notebook(folder: Path, sleep: int = 0) -> Path:
    """A 01_buffers notebook that only writes buffer.json with the job's SLURM id
    (after `sleep` seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell("buffer_dir = None\ndevice = 'cpu'")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        f"import json, os, time\nfrom pathlib import Path\ntime.sleep({sleep})\n"
        "Path(buffer_dir).mkdir(parents=True, exist_ok=True)\n"
        "Path(buffer_dir, 'buffer.json').write_text(json.dumps("
        "{'device': device, 'slurm_job_id': os.environ.get('SLURM_JOB_ID')}))"
    )
    nb.cells = [params, body]
    nbformat.write(nb, folder / "01_buffers.ipynb")
    return folder


def test_gpu_rule_asks_for_and_gets_one_gpu(cluster, tmp_path):
    """device=cuda: the buffers job is submitted with --gpus=1 and holds gres/gpu=1."""
    env = cluster
    notebooks = stub_buffers_notebook(tmp_path / "nb")
    first = last_job_id(env) + 1
    target = "results/smoke/buffers/buffer.json"
    proc = subprocess.run(
        snakemake_cmd(
            tmp_path,
            EXPERIMENTS / "smoke.yaml",
            {"notebook_dir": notebooks, "device": "cuda"},
            target,
        ),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = sacct(env, first)
    show(rows, "sacct of the device=cuda buffers job")
    (job,) = rows
    assert job["Comment"] == "rule_buffers" and job["State"] == "COMPLETED", job
    assert tres(job["ReqTRES"]).get("gres/gpu") == "1", job
    assert tres(job["AllocTRES"]).get("gres/gpu") == "1", job
    cpus, mem, _ = SIZES["buffers"]
    assert tres(job["AllocTRES"])["cpu"] == str(cpus) and job["ReqMem"] == f"{mem}M", job
    written = json.loads((tmp_path / target).read_text())
    assert written == {"device": "cuda", "slurm_job_id": job["JobIDRaw"]}


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="snakemake-executor-plugin-slurm 2.8.0 compares sacct's State with 'CANCELLED' "
    "exactly; sacct reports a scancel as 'CANCELLED by <uid>', which the plugin takes for "
    "a running job. When this passes, the plugin is fixed: drop status='squeue' in smoke_run.",
)
def test_sacct_polling_notices_a_scancel(cluster, tmp_path):
    """With the profile's default (sacct) polling, Snakemake ends a job someone scancels."""
    env = cluster
    notebooks = stub_buffers_notebook(tmp_path / "nb", sleep=600)
    target = "results/smoke/buffers/buffer.json"
    cmd = snakemake_cmd(tmp_path, EXPERIMENTS / "smoke.yaml", {"notebook_dir": notebooks}, target)
    log = (tmp_path / "snakemake.log").open("w")
    proc = subprocess.Popen(
        [*cmd, "--retries", "0"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        end = time.monotonic() + 300
        while (jobid := job_of(env, "rule_buffers")) is None and time.monotonic() < end:
            assert proc.poll() is None, (tmp_path / "snakemake.log").read_text()[-4000:]
            time.sleep(0.5)
        assert jobid, "the buffers job was not submitted"
        subprocess.run(["scancel", jobid], env=env, check=True)
        # The plugin polls every 2 s at first, 10 s more after each poll in which
        # nothing finished: 90 s leave it several polls.
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            pass
        (state,) = [r["State"] for r in sacct(env, int(jobid))]
        assert state.startswith("CANCELLED"), state
        assert proc.returncode not in (None, 0), "Snakemake still waits for the cancelled job"
    finally:
        stop(proc)
        log.close()


def test_each_stage_is_its_own_slurm_job_with_its_resources(smoke_run):
    prof, rows = smoke_run["profile"], smoke_run["rows"]
    expected = {"rule_buffers": "buffers"}
    for run in prof["runs"]:
        expected[f"rule_distill_wildcards_{run}"] = "distill"
        expected[f"rule_evaluate_wildcards_{run}"] = "evaluate"
    for name in prof["baselines"]:
        expected[f"rule_baseline_wildcards_{name}"] = "baseline"

    done = [r for r in rows if r["State"] == "COMPLETED"]
    by_comment: dict[str, list[dict]] = {}
    for r in done:
        by_comment.setdefault(r["Comment"], []).append(r)
    # One completed SLURM job per job of the DAG, nothing else (localrules stay local).
    assert sorted(by_comment) == sorted(expected)
    assert all(len(v) == 1 for v in by_comment.values()), by_comment
    assert len({r["JobIDRaw"] for r in done}) == len(expected)
    for comment, rule in expected.items():
        (r,) = by_comment[comment]
        cpus, mem, runtime = SIZES[rule]
        alloc = tres(r["AllocTRES"])
        assert r["ExitCode"] == "0:0", r
        assert (int(r["ReqCPUS"]), int(r["AllocCPUS"]), alloc["cpu"]) == (cpus, cpus, str(cpus)), r
        assert r["ReqMem"] == f"{mem}M" and alloc["mem"] == f"{mem}M", r
        assert r["Timelimit"] == f"00:{runtime:02d}:00", r
        assert "gres/gpu" not in alloc, r  # device=cpu: no GPU asked for
    # The localrules ran on the submitting side and did their work.
    results = smoke_run["results"]
    for rule in LOCAL_RULES:
        assert not any(rule in r["Comment"] for r in rows)
    assert (results / "ablation_rank" / "table.csv").is_file()
    assert (results / "ablation_schedule" / "table.csv").is_file()
    assert (smoke_run["work"] / "book" / "run_info.md").is_file()


def test_cancelled_distillation_is_resubmitted_resumes_and_matches_its_twin(smoke_run):
    cancel, rows, results = smoke_run["cancel"], smoke_run["rows"], smoke_run["results"]
    assert cancel, "the distillation finished before the test could cancel it"
    comment = f"rule_distill_wildcards_{CANCELLED}"
    jobs = sorted((r for r in rows if r["Comment"] == comment), key=lambda r: int(r["JobIDRaw"]))
    # The cancelled job, then its resubmission, which completed.
    assert [r["JobIDRaw"] for r in jobs][0] == cancel["job"]
    assert [r["State"].split()[0] for r in jobs] == ["CANCELLED", "COMPLETED"], jobs
    # It resumed: the iterations logged before the cancel are in the final log as
    # they were, measured seconds included (a restart would have timed them anew).
    with (results / "runs" / CANCELLED / "log.csv").open() as f:
        final = list(csv.DictReader(f))
    assert len(final) == SLOW_ITERATIONS
    before = cancel["log"]
    assert len(before) == cancel["iteration"] > 0
    for old, new in zip(before, final):
        assert {k: float(v) for k, v in new.items()} == {k: float(v) for k, v in old.items()}
    # The checkpoint is gone once the run finished; the synthetic set is bitwise the
    # uninterrupted twin's.
    assert not (results / "runs" / CANCELLED / "checkpoint.json").exists()
    mine, _ = load_artifact(results / "runs" / CANCELLED / "synset", kind="synset")
    twin, _ = load_artifact(results / "runs" / TWIN / "synset", kind="synset")
    assert mine.keys() == twin.keys()
    for name in mine:
        assert torch.equal(mine[name], twin[name]), name
    assert json.loads((results / "runs" / CANCELLED / "synset.json").read_text())["iterations"] == (
        SLOW_ITERATIONS
    )

"""The 10-minute GPU check (``benchmarks/gpu_suite.sh``/``.py``) on CPU at toy sizes.

One session-scoped run of ``bash benchmarks/gpu_suite.sh --device cpu --tiny``
(the same code path as on the GPU: the three benchmark processes, data, experts,
distillation, evaluation, outputs) with two parts forced past their time share,
then checks of its output folder (file list, the device's 8-file and 16 MB
limits, the partial labels) and of ``--unpack`` into a temporary copy of the
repository layout (benchmark records, records/gpu, the synthetic sets, the
book's GPU block). The other tests check the budget arithmetic, the `gpu`
profile and its derivation without running anything heavy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import gpu_budget  # noqa: E402
import gpu_suite  # noqa: E402

#: Parts given (almost) no time: the distillation stops after its first iteration,
#: the evaluation benchmark's process is killed two seconds after its start.
FORCED = {"distill:lss_ipc1": 0, "bench_evaluate": 2}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, lss_cifar_cache):
    """Run the suite at toy sizes once; yields (output folder, results, seconds, output)."""
    out = tmp_path_factory.mktemp("gpu_suite_out")
    work = tmp_path_factory.mktemp("gpu_suite_work")
    env = dict(os.environ, LSS_CACHE_DIR=str(lss_cifar_cache), OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    cmd = ["bash", str(BENCH / "gpu_suite.sh"), "--device", "cpu", "--tiny"]
    cmd += ["--out", str(out), "--work", str(work)]
    cmd += [arg for part, s in FORCED.items() for arg in ("--part-seconds", f"{part}={s}")]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    return out, results, seconds, proc.stdout


def test_output_folder_fits_the_device_limits(tiny_run):
    out, results, _, _ = tiny_run
    entries = sorted(p.name for p in out.iterdir())
    assert all((out / e).is_file() for e in entries), entries
    assert len(entries) <= 8
    assert set(entries) <= set(gpu_suite.OUTPUT_FILES), entries
    for name in (
        "suite_log.txt",
        "results.json",
        "tables.md",
        *(f"bench_{s}.json" for s in gpu_suite.STAGES),
    ):
        assert name in entries, f"{name} missing from {entries}"
    assert all((out / e).stat().st_size < 16_000_000 for e in entries)
    assert not list(out.glob(".*.tmp")), "a temporary file of an atomic write was left behind"


def test_every_part_is_accounted_for(tiny_run):
    _, results, _, _ = tiny_run
    parts = results["parts"]
    expected = {"startup", "bench_experts", "bench_distill", "bench_evaluate", "data", "experts"}
    expected |= {f"distill:{r}" for r in results["profile"]["runs"]}
    expected |= {f"eval:{r}" for r in results["profile"]["runs"]}
    expected |= {f"eval:{b}" for b in results["profile"]["baselines"]}
    assert expected <= set(parts), sorted(expected - set(parts))
    for name, p in parts.items():
        assert p["status"] in ("done", "partial", "skipped"), (name, p)
        assert p["partial"] == (p["status"] != "done")
        assert p["status"] == "done" or p["reason"], (name, p)
    assert parts["data"]["status"] == "done" and parts["experts"]["status"] == "done"


def test_forced_parts_are_cut_and_labelled_partial(tiny_run):
    out, results, _, _ = tiny_run
    assert results["partial"] is True
    lss = results["parts"]["distill:lss_ipc1"]
    assert lss["status"] == "partial" and "wall-clock guard" in lss["reason"]
    run = results["runs"]["lss_ipc1"]
    assert run["partial"] is True
    assert 1 <= run["iterations_done"] < run["iterations_planned"]
    bench = json.loads((out / "bench_evaluate.json").read_text())
    assert bench["partial"] is True and "wall-clock guard: killed" in bench["reason"]
    assert "results" not in bench and results["parts"]["bench_evaluate"]["status"] == "partial"
    assert any(r.startswith("distill:lss_ipc1") for r in results["partial_reasons"])
    tables = (out / "tables.md").read_text()
    assert "partial: wall-clock guard" in tables


def test_log_names_device_versions_and_parts(tiny_run):
    out, results, _, _ = tiny_run
    log = (out / "suite_log.txt").read_text()
    assert "device:" in log and "versions:" in log and "nvidia-smi" in log
    for part in ("[bench_experts]", "[data]", "[experts]", "[distill:lss_ipc1]"):
        assert part in log
    env = results["environment"]
    assert env["versions"]["torch"] and env["versions"]["kornia"]
    assert results["mode"] == "tiny" and results["wall_s"] <= results["budget_s"] + 30


def test_complete_benchmark_records_keep_their_schema(tiny_run):
    out, results, _, _ = tiny_run
    for stage in ("experts", "distill"):
        rec = json.loads((out / f"bench_{stage}.json").read_text())
        if results["parts"][f"bench_{stage}"]["status"] != "done":
            continue
        assert rec["bench"] == stage and rec["partial"] is False
        assert "--out" not in rec["command"]
        assert rec["results"] and rec["device"] == "cpu"


def test_unpack_into_a_copy_feeds_the_book(tiny_run, tmp_path):
    from speed_table import speed_table

    from lsslib.synset import load_synset

    out, results, _, _ = tiny_run
    with pytest.raises(ValueError, match="tiny"):
        gpu_suite.unpack(out, tmp_path)
    written = gpu_suite.unpack(out, tmp_path, allow_tiny=True)
    records = tmp_path / "benchmarks" / "records"
    done = [s for s in ("experts", "distill") if results["parts"][f"bench_{s}"]["status"] == "done"]
    assert sorted(p.name for p in records.glob("gpu_*.json")) == sorted(
        f"gpu_{s}.json" for s in done
    )
    assert not (records / "gpu_evaluate.json").exists(), "a partial record reached the speed table"
    table = speed_table(records)
    assert sorted(table["stage"]) == sorted(done)
    assert all(t == "n/a (CPU run)" for t in table["GPU targets"])
    gpu = tmp_path / "records" / "gpu"
    summary = (gpu / "summary.md").read_text()
    assert gpu / "summary.md" in written
    assert results["environment"]["versions"]["torch"] in summary
    assert results["started_utc"] in summary and "status: partial" in summary
    assert "not measured (wall-clock guard: killed" in summary
    syn = load_synset(gpu / "runs" / "lss_ipc1" / "synset")
    assert syn.meta["iterations"] == results["runs"]["lss_ipc1"]["iterations_done"]
    spec = importlib.util.spec_from_file_location(
        "gpu_block", REPO / "book" / "_ext" / "gpu_block.py"
    )
    block = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(block)
    assert block.render(tmp_path) == summary
    assert "not measured yet" in block.render(tmp_path / "nothing")


def test_unpack_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(ValueError, match="results.json"):
        gpu_suite.unpack(tmp_path, tmp_path / "repo")


def test_check_outputs_flags_too_many_and_too_large_files(tmp_path):
    class Fake:
        out = tmp_path

    for i in range(9):
        (tmp_path / f"f{i}.txt").write_text("x")
    with open(tmp_path / "f0.txt", "wb") as fh:
        fh.truncate(gpu_suite.MAX_FILE_BYTES + 1)
    problems = gpu_suite.Suite.check_outputs(Fake())
    assert any("9 entries" in p for p in problems)
    assert any(p.startswith("f0.txt has") for p in problems)


def test_budget_deadlines_are_cumulative_and_capped():
    b = gpu_suite.Budget(
        t0=1000.0, total=100.0, shares={"a": 10.0, "b": 20.0, "c": None}, overrides={}, reserve=5.0
    )
    b.start = 1002.0
    assert b.deadline("a", 1002.0) == 1012.0
    assert b.deadline("b", 1030.0) == 1032.0  # a's overrun is not b's extra time
    assert b.deadline("c", 1040.0) == 1095.0  # no share: until the global end less the reserve
    o = gpu_suite.Budget(1000.0, 100.0, {"a": 10.0, "b": 20.0}, {"a": 0.0}, 5.0)
    o.start = 1002.0
    assert o.deadline("a", 1003.0) == 1003.0
    assert o.deadline("b", 1003.0) == 1022.0


def test_part_seconds_are_validated():
    assert gpu_suite.parse_overrides(["distill:x=1.5"]) == {"distill:x": 1.5}
    for bad in ("distill:x", "distill:x=-1", "distill:x=soon"):
        with pytest.raises(ValueError, match="--part-seconds"):
            gpu_suite.parse_overrides([bad])


def test_gpu_profile_is_the_derived_plan():
    prof = gpu_budget.load_profile("gpu")
    assert prof["data"]["train_per_class"] is None and prof["data"]["normalisation"] == "zca"
    assert prof["model"]["net_width"] == 128 and prof["model"]["net_depth"] == 3
    assert prof["eval"]["num_eval"] == 5 and prof["eval"]["eval_epochs"] == 1000
    runs = prof["runs"]
    assert {runs[r]["parameterisation"] for r in runs} == {"lowrank", "pixels"}
    paper = gpu_budget.load_profile("paper")
    for key in (
        "syn_steps",
        "max_start_epoch",
        "lr_img",
        "lr_lr",
        "syn_lr_init",
        "lr_y",
        "schedule",
    ):
        if key in paper["runs"]["lss_ipc1"]:
            assert runs["lss_ipc1"][key] == paper["runs"]["lss_ipc1"][key], key
    assert gpu_budget.derive_iterations(prof) == prof["distill"]["iterations"]
    ratio = paper["runs"]["lss_ipc1"]["schedule_iterations"] / paper["distill"]["iterations"]
    assert runs["lss_ipc1"]["schedule_iterations"] == round(ratio * prof["distill"]["iterations"])
    plan = gpu_budget.plan_suite(prof)
    assert sum(plan.shares().values()) <= gpu_budget.BUDGET_S
    header = (REPO / "lsslib" / "_profiles" / "gpu.yaml").read_text()
    for line in gpu_budget.plan_text(prof).splitlines():
        if not line.startswith("per distillation"):
            assert f"# {line}" in header, f"profile header is stale: {line!r}"


def test_tiny_profile_is_valid_and_small():
    prof = gpu_suite.tiny_profile(gpu_budget.load_profile("gpu"))
    assert prof["model"]["net_width"] == 8 and prof["distill"]["iterations"] == 4
    assert all(r["syn_steps"] == 3 for r in prof["runs"].values())


def test_experts_are_scaled_to_the_time_left():
    spec = gpu_budget._spec(128)
    buf = gpu_budget.load_profile("gpu")["buffers"]
    rates = gpu_budget.Rates()
    full = gpu_budget.experts_seconds(spec, buf, rates)
    assert gpu_budget.experts_that_fit(spec, buf, rates, full) == buf["num_experts"]
    slow = gpu_budget.Rates(train_tflops=rates.train_tflops / 4)
    fit = gpu_budget.experts_that_fit(spec, buf, slow, full)
    assert 1 <= fit < buf["num_experts"]
    assert gpu_budget.experts_seconds(spec, {**buf, "num_experts": fit}, slow) <= full
    assert gpu_budget.experts_seconds(spec, {**buf, "num_experts": fit + 1}, slow) > full
    assert gpu_budget.experts_that_fit(spec, buf, rates, 0.0) == 1


def test_sigterm_cuts_the_running_part_and_skips_the_rest(tmp_path, lss_cifar_cache):
    out = tmp_path / "out"
    env = dict(os.environ, LSS_CACHE_DIR=str(lss_cifar_cache), OMP_NUM_THREADS="1")
    cmd = ["bash", str(BENCH / "gpu_suite.sh"), "--device", "cpu", "--tiny", "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 120
        while not (out / "results.json").is_file() and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # inside the first benchmark now
        proc.send_signal(subprocess.signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    results = json.loads((out / "results.json").read_text())
    parts = results["parts"]
    assert results["partial"] is True
    assert "signal 15" in parts["bench_experts"]["reason"]
    assert parts["experts"]["status"] == "skipped" and "signal 15" in parts["experts"]["reason"]
    assert all(p["status"] == "skipped" for k, p in parts.items() if k.startswith("eval:"))
    assert len(list(out.iterdir())) <= 8

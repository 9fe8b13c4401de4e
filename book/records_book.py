"""The book's inputs (book/_generated/) made from the committed records of the ``cpu``
profile (records/cpu/), for a checkout that has not run the pipeline.

Tables and the run box are the records' own except where the summary's formatting
changed since they were written (the main table, the storage table, which are made
again from the same records); every figure is drawn again from the records' distilled
sets, logs and evaluation records with ``lsslib.plots``, as the stages draw them.
Imported by book/assemble.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from lsslib import plots, profiles, report, summary
from lsslib.config import DistillConfig
from lsslib.results import EvalRecord, Results, read_json, read_log, run_facts
from lsslib.synset import load_synset

PROFILE = "cpu"


def _save(fig, path: Path) -> None:
    report.save_figure(fig, path, close=True)


def _set_figures(res: Results, figs: Path, main: dict, ranks: list[str]) -> None:
    """The image figures: grids, Fig. 1 (components), Fig. 4 (side by side), Fig. 5."""
    sets = {role: load_synset(res.run(run).synset) for role, run in main.items()}
    for role, loaded in sets.items():
        n = loaded.per_class
        title = f"{loaded.kind}, {n} image{'s' if n != 1 else ''} per class"
        _save(
            plots.image_grid(loaded.images01(), loaded.class_names, n, title),
            figs / f"grid_{role}.png",
        )
    lss, mtt = sets["lss"], sets["mtt"]
    comp = lss.synset.components(0)
    px = lss.images01()
    _save(
        plots.parameterisation_figure(comp, px[: lss.per_class], lss.class_names[0]),
        figs / "fig1_parameterisation.png",
    )
    comps = [lss.synset.components(c) for c in range(min(5, lss.synset.num_classes))]
    fig = plots.side_by_side(
        comps,
        px,
        lss.per_class,
        type(lss.synset).title,
        mtt.images01(),
        mtt.per_class,
        type(mtt.synset).title,
        lss.class_names,
    )
    _save(fig, figs / "fig4_lss_vs_mtt.png")
    sweep = []
    for run in sorted(ranks, key=lambda r: run_facts(res.run(r), r)["rank"]):
        f = run_facts(res.run(run), run)
        loaded = load_synset(res.run(run).synset)
        sweep.append(
            (
                int(f["rank"]),
                loaded.images01()[: loaded.per_class],
                f["images_per_class"],
                f["floats"],
            )
        )
    _save(plots.rank_sweep(sweep, lss.class_names[0]), figs / "fig5_rank_sweep.png")


def _curve_figures(res: Results, figs: Path, layout: dict, buffer_json: Path) -> pd.DataFrame:
    """Expert, distillation and evaluation curves, the schedule figures and the rank
    ablation's accuracy figure; returns the main table."""
    main, baselines = layout["main"], layout["baselines"]
    meta = read_json(buffer_json)
    acc = meta["accuracy"]
    curves = {k: [acc[str(i)][k] for i in range(meta["num_experts"])] for k in ("train", "test")}
    _save(plots.expert_curves(curves), figs / "expert_curves.png")
    labelled = {f"LSS ({main['lss']})": main["lss"], f"MTT ({main['mtt']})": main["mtt"]}
    _save(
        plots.distill_curves({k: read_log(res.run(v)) for k, v in labelled.items()}),
        figs / "distill_curves.png",
    )
    ev = {}
    for label, run in labelled.items():
        r = EvalRecord.read(res.run(run).eval.metrics).result
        ev[label] = (r["curve_epochs"], r["curve_mean"])
    for b in baselines:
        m = EvalRecord.read(res.baseline(b).metrics)
        ev[m.label if m.baseline != "full" else "full training set"] = (
            m.result["curve_epochs"],
            m.result["curve_mean"],
        )
    _save(plots.eval_curves(ev), figs / "eval_curves.png")
    sched = layout["ablations"].get("schedule", [])
    facts = pd.DataFrame([run_facts(res.run(r), r) for r in sched])
    logs = {
        f"{r} ({s})": read_log(res.run(r))
        for r, s in zip(facts["run"], facts["schedule"], strict=True)
    }
    _save(
        plots.schedule_ablation(facts.assign(label=facts["schedule"]), logs),
        figs / "schedule_ablation.png",
    )
    cfgs = {
        r: DistillConfig(**read_json(res.run(r).synset_json)["config"]["distill"]) for r in sched
    }
    _save(
        plots.schedule_bounds(cfgs, {r: read_log(res.run(r)) for r in sched}),
        figs / "fig3_schedule.png",
    )
    hardware = EvalRecord.read(res.run(main["lss"]).eval.metrics).hardware
    main_df = summary.main_table(res, main, baselines, hardware, PROFILE, layout["compare"])
    ranks = pd.DataFrame(
        [run_facts(res.run(r), r) for r in layout["ablations"]["rank"]]
    ).sort_values("rank")
    pts = ranks.assign(label=[f"LSS r={r}" for r in ranks["rank"]])[
        ["label", "floats", "acc_mean", "acc_std"]
    ]
    mt = main_df.iloc[[1]].assign(label="pixel MTT", floats=main_df.iloc[1]["stored floats"])
    pts = pd.concat([pts, mt[["label", "floats", "acc_mean", "acc_std"]]])
    _save(plots.accuracy_vs_storage(pts), figs / "rank_accuracy_storage.png")
    return main_df


def _speed_tables(root: Path, tabs: Path) -> None:
    """The speed tables from the benchmark records of record, as the workflow's
    ``speed_tables`` rule makes them (``benchmarks/speed_table.py``)."""
    script, records = root / "benchmarks" / "speed_table.py", root / "benchmarks" / "records"
    if script.is_file() and any(records.glob("*.json")):
        env = dict(os.environ, PYTHONPATH=str(root))
        cmd = [sys.executable, str(script), str(records), str(tabs)]
        subprocess.run(cmd, check=True, cwd=root, env=env, capture_output=True)


def from_records(root: Path, gen: Path) -> None:
    """Fill ``gen`` (book/_generated) from ROOT/records/cpu, as the summary stage would."""
    rec = root / "records" / PROFILE
    res = Results(rec)
    raw = profiles.load_profile(PROFILE)
    layout = {
        "main": dict(raw["main"]),
        "baselines": list(raw["baselines"]),
        "compare": list(raw.get("compare") or []),
        "ablations": {k: list(v) for k, v in (raw.get("ablations") or {}).items()},
    }
    figs, tabs = gen / "figures", gen / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    shutil.copytree(rec / "tables", tabs, dirs_exist_ok=True)
    for name in ("run_info.md", "pipeline_time.txt"):
        shutil.copy2(rec / name, gen / name)
    _speed_tables(root, tabs)
    _set_figures(res, figs, layout["main"], layout["ablations"]["rank"])
    main_df = _curve_figures(res, figs, layout, rec / "buffer.json")
    report.write_table(main_df.drop(columns=["acc_mean", "acc_std"]), tabs / "main")
    lss = load_synset(res.run(layout["main"]["lss"]).synset)
    x0 = lss.synset.images()
    report.write_table(
        summary.storage_table(x0.shape[1], x0.shape[2], lss.synset.num_classes), tabs / "storage"
    )
    num_eval = len(
        EvalRecord.read(res.run(layout["main"]["lss"]).eval.metrics).result["accuracies"]
    )
    summary.comparison_figures(res, main_df, layout["ablations"]["rank"], figs, num_eval)
    nbs = gen / "notebooks"
    nbs.mkdir(parents=True, exist_ok=True)
    for stem in (
        "01_buffers",
        "02_distill",
        "03_evaluate",
        "04_ablation_rank",
        "05_ablation_schedule",
        "06_summary",
    ):
        _unexecuted(root / "notebooks" / f"{stem}.ipynb", nbs / f"{stem}.ipynb")


NOT_EXECUTED = (
    ":::{note}\n"
    "This build of the book was made from the committed records of the `cpu` profile, "
    "not by a pipeline run, so this notebook is shown as committed, without outputs. "
    "`make book` runs the pipeline and shows it as it ran.\n"
    ":::"
)


def _unexecuted(src: Path, dst: Path) -> None:
    """Copy a stage notebook for the appendix with a note, after its title, that it has
    not run in this build."""
    nb = json.loads(src.read_text(encoding="utf-8"))
    note = {"cell_type": "markdown", "metadata": {}, "source": NOT_EXECUTED}
    nb["cells"].insert(1, note)
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

"""The GPU suite's figures as Markdown: speed against the targets, the `gpu` profile's results.

Pure formatting of the suite's JSON (``benchmarks/gpu_suite.py``): no torch, no
lsslib. Used for the suite's ``tables.md`` and, by ``gpu_suite.py --unpack``,
for ``records/gpu/summary.md``, which the book's GPU page shows
(``book/_ext/gpu_block.py``); without that file the page says "not measured yet".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The GPU speed targets (benchmarks/README.md).
TARGETS = {
    "experts_img_s": 50_000,
    "experts_ratio": 5.0,
    "distill_image_steps_s": 40_000,
    "checkpointed_memory": 0.25,
    "evaluate_full_s": 60.0,
}


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """A GitHub/MyST pipe table; ``_no rows_`` when empty."""
    if not rows:
        return "_no rows_\n"
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _verdict(ok: bool | None, device: str) -> str:
    if device == "cpu":
        return "n/a (CPU run)"
    if ok is None:
        return "not checked"
    return "pass" if ok else "FAIL"


def target_rows(bench: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per target: stage, figure, measured (median; best), target, verdict.

    Args:
        bench: ``{"experts"|"distill"|"evaluate": record}``; a record is the JSON line
            of ``benchmarks/bench_*.py`` or the suite's partial stub
            (``{"partial": true, "reason": ...}``).
    """
    rows: list[dict[str, Any]] = []
    for stage in ("experts", "distill", "evaluate"):
        rec = bench.get(stage)
        if rec is None or rec.get("partial") or "results" not in rec:
            why = "not run" if rec is None else rec.get("reason", "partial")
            rows.append(
                {
                    "stage": stage,
                    "figure": "-",
                    "measured": f"not measured ({why})",
                    "target": "-",
                    "verdict": "-",
                }
            )
            continue
        dev, res, rat = rec["device"], rec["results"], rec.get("ratios", {})
        if stage == "experts":
            tog = res[rec["together"]]
            ok = tog["images_per_s"] >= TARGETS["experts_img_s"]
            rows.append(
                {
                    "stage": stage,
                    "figure": f"images/s, {rec['config']['experts']} experts together ({rec['together']})",
                    "measured": f"{tog['images_per_s_median']:,.0f} (best {tog['images_per_s']:,.0f})",
                    "target": f">= {TARGETS['experts_img_s']:,}",
                    "verdict": _verdict(ok, dev),
                }
            )
            r = rat["together_vs_one_at_a_time_best"]
            rows.append(
                {
                    "stage": stage,
                    "figure": "together / one at a time",
                    "measured": f"{rat['together_vs_one_at_a_time_median']}x (best {r}x)",
                    "target": f">= {TARGETS['experts_ratio']:g}x",
                    "verdict": _verdict(r >= TARGETS["experts_ratio"], dev),
                }
            )
        elif stage == "distill":
            for mode, r in res.items():
                rows.append(
                    {
                        "stage": stage,
                        "figure": f"image-steps/s, {mode} (syn_steps {rec['config']['syn_steps']}, "
                        f"batch_syn {rec['config']['batch_syn']})",
                        "measured": f"{r['image_steps_per_s_median']:,.0f} (best {r['image_steps_per_s']:,.0f})",
                        "target": f">= {TARGETS['distill_image_steps_s']:,}",
                        "verdict": _verdict(
                            r["image_steps_per_s"] >= TARGETS["distill_image_steps_s"], dev
                        ),
                    }
                )
            if "checkpointed" in rat:
                m = rat["checkpointed"]["memory_vs_unrolled"]
                rows.append(
                    {
                        "stage": stage,
                        "figure": "checkpointed peak memory / unrolled",
                        "measured": f"{m:.3f} ({res['checkpointed']['peak_mem_mib']:,.0f} / "
                        f"{res['unrolled']['peak_mem_mib']:,.0f} MiB)",
                        "target": f"<= {TARGETS['checkpointed_memory']:g}",
                        "verdict": _verdict(m <= TARGETS["checkpointed_memory"], dev),
                    }
                )
        else:
            tog = res["together"]
            cfg = rec["config"]
            rows.append(
                {
                    "stage": stage,
                    "figure": f"{cfg['nets']} nets x 1000 epochs on {cfg['images']:,} images "
                    f"(projected from {cfg['epochs']} epochs)",
                    "measured": f"{tog['projected_full_s']:,.1f} s",
                    "target": f"<= {TARGETS['evaluate_full_s']:g} s",
                    "verdict": _verdict(tog["projected_full_s"] <= TARGETS["evaluate_full_s"], dev),
                }
            )
    return rows


def _acc(ev: Mapping[str, Any] | None) -> str:
    if not ev or ev.get("mean") is None:
        return "not measured" + (f" ({ev['reason']})" if ev and ev.get("reason") else "")
    return f"{100 * ev['mean']:.1f} ± {100 * ev['std']:.1f}"


def result_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated set of the profile (distilled runs, then baselines)."""
    rows = []
    evals = results.get("evals", {})
    for name, run in (results.get("runs") or {}).items():
        ev = evals.get(name)
        st = run.get("storage") or {}
        rows.append(
            {
                "set": name,
                "method": run.get("label", name),
                "images/class": run.get("images_per_class", "-"),
                "stored floats": st.get("image_floats", "-"),
                "iterations": f"{run.get('iterations_done', 0)} of {run.get('iterations_planned', '-')}",
                "accuracy (%)": _acc(ev),
                "eval": _eval_desc(ev),
                "status": _status(run, ev),
            }
        )
    for name, base in (results.get("baselines") or {}).items():
        ev = evals.get(name)
        rows.append(
            {
                "set": name,
                "method": base.get("label", name),
                "images/class": base.get("images_per_class", "-"),
                "stored floats": (base.get("storage") or {}).get("image_floats", "-"),
                "iterations": "-",
                "accuracy (%)": _acc(ev),
                "eval": _eval_desc(ev),
                "status": _status(base, ev),
            }
        )
    return rows


def _eval_desc(ev: Mapping[str, Any] | None) -> str:
    if not ev or ev.get("mean") is None:
        return "-"
    return f"{len(ev['accuracies'])} nets x {ev['epochs']} epochs, lr {ev['lr']:.3g}"


def _status(part: Mapping[str, Any], ev: Mapping[str, Any] | None) -> str:
    bad = [p.get("reason") for p in (part, ev or {}) if p.get("partial")]
    return "partial: " + "; ".join(str(b) for b in bad if b) if bad else "complete"


def part_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Time of every part: predicted, share of the budget, measured, status."""
    rows = []
    plan = results.get("plan", {})
    for name, p in (results.get("parts") or {}).items():
        pred = plan.get(name, {})
        rows.append(
            {
                "part": name,
                "predicted (s)": _num(pred.get("predicted_s")),
                "share (s)": _num(pred.get("share_s")),
                "measured (s)": _num(p.get("seconds")),
                "status": p["status"] + (f": {p['reason']}" if p.get("reason") else ""),
            }
        )
    return rows


def _num(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f}"


def device_line(results: Mapping[str, Any]) -> str:
    """Device, driver, versions and date of a suite run, as one Markdown line."""
    d = results.get("environment", {})
    v = d.get("versions", {})
    parts = [
        f"device **{d.get('device_name', '?')}**",
        f"driver {d.get('driver') or '-'}",
        f"CUDA {d.get('cuda') or '-'}",
        f"Python {v.get('python', '?')}",
        *(f"{k} {v[k]}" for k in ("torch", "torchvision", "numpy", "kornia", "lsslib") if k in v),
        f"commit {d.get('commit') or '?'}",
        f"date {results.get('started_utc', '?')}",
        f"wall time {results.get('wall_s', 0):.0f} s of a {results.get('budget_s', 0):.0f} s budget",
    ]
    return " · ".join(parts)


def render_tables(results: Mapping[str, Any], bench: Mapping[str, Mapping[str, Any]]) -> str:
    """The three tables of a suite run (speed against targets, results, time per part)."""
    return (
        "### Speed of each stage against the GPU targets\n\n"
        + md_table(target_rows(bench), ["stage", "figure", "measured", "target", "verdict"])
        + f"\n### Profile `{results.get('profile_name', 'gpu')}`: meta-test accuracy\n\n"
        + md_table(
            result_rows(results),
            [
                "set",
                "method",
                "images/class",
                "stored floats",
                "iterations",
                "accuracy (%)",
                "eval",
                "status",
            ],
        )
        + "\n### Time of each part of the suite\n\n"
        + md_table(
            part_rows(results), ["part", "predicted (s)", "share (s)", "measured (s)", "status"]
        )
    )


def render_block(results: Mapping[str, Any], bench: Mapping[str, Mapping[str, Any]]) -> str:
    """The book's GPU block: a labelled admonition with the run's provenance, then the tables."""
    mode = results.get("mode", "gpu")
    status = (
        "partial: " + "; ".join(results.get("partial_reasons", [])[:6])
        if results.get("partial")
        else "complete"
    )
    head = (
        ":::{admonition} The GPU run behind these numbers (*measured here*)\n"
        ":class: note\n"
        f"{device_line(results)} · suite mode **{mode}** · status: {status}.\n"
        ":::\n\n"
    )
    if mode != "gpu":
        head += (
            ":::{admonition} Not a GPU run\n:class: warning\n"
            "These files come from the suite's toy-size CPU mode (`--tiny`), unpacked for a test; "
            "the figures mean nothing.\n:::\n\n"
        )
    return head + render_tables(results, bench)

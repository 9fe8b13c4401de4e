"""Analytic time model of the 10-minute GPU check (``benchmarks/gpu_suite.py``).

A GPU node lent for a short check typically allows one command at most 600 s; the suite must end within
540 s on one H100 or H200. This module predicts the time of every part of the
suite from FLOP counts (``benchmarks/_common.py``, ``lsslib.models.flops_per_image``)
and a few *assumed* device rates, and derives the ``gpu`` profile's sizes
(experts, distillation iterations) from what is left of the budget. Nothing
here has been measured on a GPU yet; the suite's own benchmark records replace
the assumptions once it has run (``python benchmarks/gpu_budget.py --records
benchmarks/records`` re-derives the plan from measured rates).

Model (seconds) of a part = FLOPs / sustained rate + steps x latency floor, the
two added (conservative: on a GPU they overlap in part):

* one SGD step on one image (experts, evaluation): ``3F - F1`` FLOPs
  (``train_flops_per_image``), F = one forward, F1 = its first convolution;
* one distillation image-step, ``unrolled`` (the profile's mode): ``9F - 3F1``
  (``bench_distill.flops_per_image_step``);
* test-set accuracy: F per image and network.

Assumed sustained rates, the same for H100 SXM and H200 (their dense TF32 and
FP32 peaks are equal, 494.5 and 67 TFLOP/s; the H200's faster memory can only
help these small, partly memory-bound kernels); an H100 PCIe has about 3/4 of
those peaks, which the margins (:data:`MARGINS`) and the wall-clock guard absorb:

* SGD training (experts, evaluation; TF32 on): **7.4 TFLOP/s**, half of the
  issue's expert target (50,000 img/s x 297.4 MFLOP = 14.9 TFLOP/s), i.e. 1.5 %
  of the TF32 dense peak. Small 3x3 convolutions on 32x32 images at width 128,
  with instance norm, ReLU, pooling and DSA between them, are launch- and
  memory-bound in eager PyTorch; the CPU records reach 49-77 % of a matmul
  peak, but a GPU needs much larger batches than 256 for that.
* distillation (strict fp32, book/choices.md §6): **17.8 TFLOP/s**, half of the
  target 40,000 image-steps/s x 892 MFLOP (35.7 TFLOP/s), 27 % of the FP32
  non-tensor peak.
* latency floors: 4 ms per SGD step of up to 10 networks trained together
  (DSA, forward, backward, update: about 150 kernel launches at 15-25 us of
  eager dispatch each), 6 ms per unrolled inner step with its share of the
  meta-backward, 20 ms per distillation iteration (trajectory to the device,
  plan, optimiser steps, finiteness checks that synchronise).
* fixed costs: 25 s start-up (wheel install, Python, torch import, CUDA
  context, nvidia-smi), 10 s per benchmark process (its own import and CUDA
  context, cuDNN autotuning), 60 s for the data (xz unpack of the 18.5 MB
  archive, Pillow decoding of 60,000 JPEGs: 7 s on one core here, ZCA fit on
  the CPU in float64: 50,000 x 3,072 covariance = 0.94 TFLOP plus a 3,072^2
  eigendecomposition), 5 s for writing the outputs.

Usage::

    python benchmarks/gpu_budget.py            # the plan and the profile header
    python benchmarks/gpu_budget.py --check    # exit 1 if lsslib/_profiles/gpu.yaml disagrees
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

from _common import first_layer_flops, train_flops_per_image  # noqa: E402

from lsslib.models import ConvNetSpec, flops_per_image  # noqa: E402

# The one import of profile loading in the GPU suite (gpu_suite.py takes these
# names from here): when it moves to lsslib.profiles, change this line only.
from lsslib.profiles import baseline_parameters, load_profile, stage_parameters  # noqa: E402

__all__ = [
    "BUDGET_S",
    "MARGIN",
    "MARGINS",
    "margin_of",
    "BENCH_ARGS",
    "Rates",
    "Plan",
    "plan_suite",
    "plan_text",
    "derive_iterations",
    "experts_seconds",
    "experts_that_fit",
    "rates_from_records",
    "load_profile",
    "stage_parameters",
    "baseline_parameters",
]

#: Wall-clock budget of the whole suite on the device (s): one command may take at most 600 s.
BUDGET_S = 540.0
#: Each part may run this many times its predicted time (its share of the budget):
#: a benchmark killed at its deadline loses everything, so its process gets the most
#: room; a distillation stopped at its deadline keeps every finished iteration.
MARGINS = {"bench_": 1.6, "distill:": 1.1}
MARGIN = 1.25  # every other part


def margin_of(part: str) -> float:
    """The share / prediction ratio of a part (:data:`MARGINS`, else :data:`MARGIN`)."""
    return next((m for prefix, m in MARGINS.items() if part.startswith(prefix)), MARGIN)


#: CIFAR-10 sizes of the paper setting.
TRAIN_IMAGES = 50_000
TEST_IMAGES = 10_000
#: ``lsslib.experts.CURVE_TEST_IMAGES`` and ``evaluate_images``' curve defaults.
EXPERT_CURVE_IMAGES = 2000
EVAL_CURVE_POINTS, EVAL_CURVE_IMAGES = 5, 1000


@dataclass(frozen=True)
class Rates:
    """Assumed device rates (module docstring says how they were chosen).

    Attributes:
        train_tflops: sustained TFLOP/s of SGD training steps (TF32).
        distill_tflops: sustained TFLOP/s of the unrolled inner loop (strict fp32).
        train_step_s: latency floor of one SGD step of up to 10 networks together (s).
        inner_step_s: latency floor of one unrolled inner step with its meta-backward (s).
        iteration_s: fixed cost of one distillation iteration (s).
        startup_s: wrapper, Python, torch and CUDA start-up (s).
        bench_process_s: start-up of one benchmark process (s).
        data_s: unpack, decode and ZCA (s).
        write_s: writing the outputs (s).
        source: where the rates come from.
    """

    train_tflops: float = 7.4
    distill_tflops: float = 17.8
    train_step_s: float = 0.004
    inner_step_s: float = 0.006
    iteration_s: float = 0.02
    startup_s: float = 25.0
    bench_process_s: float = 10.0
    data_s: float = 60.0
    write_s: float = 5.0
    source: str = "assumed (benchmarks/gpu_budget.py docstring)"


#: Reduced benchmark configurations of the suite (flags of benchmarks/bench_*.py).
BENCH_ARGS: dict[str, list[str]] = {
    "experts": ["--width", "128", "--experts", "10", "--images", "5120", "--repeats", "2"],
    "distill": [
        "--width",
        "128",
        "--syn-steps",
        "30",
        "--batch-syn",
        "256",
        "--n-syn",
        "1000",
        "--repeats",
        "2",
    ],
    "evaluate": [
        "--width",
        "128",
        "--nets",
        "5",
        "--images",
        "1000",
        "--epochs",
        "30",
        "--test-images",
        "10000",
        "--repeats",
        "1",
    ],
}


def _arg(args: list[str], flag: str) -> int:
    return int(args[args.index(flag) + 1])


def _spec(width: int = 128, depth: int = 3, classes: int = 10) -> ConvNetSpec:
    return ConvNetSpec(3, 32, classes, depth=depth, width=width)


def distill_flops_per_image_step(spec: ConvNetSpec) -> dict[str, int]:
    """FLOPs of one image-step per gradient mode (as ``bench_distill.flops_per_image_step``)."""
    f, f1 = flops_per_image(spec), first_layer_flops(spec)
    return {"unrolled": 9 * f - 3 * f1, "checkpointed": 12 * f - 4 * f1, "tesla": 10 * f - 3 * f1}


def train_seconds(
    spec: ConvNetSpec,
    nets: int,
    images: int,
    epochs: int,
    batch: int,
    rates: Rates,
    groups: int = 1,
) -> float:
    """SGD training of ``nets`` networks (in ``groups`` groups trained one after another)."""
    flops = nets * images * epochs * train_flops_per_image(spec)
    steps = groups * epochs * math.ceil(images / batch)
    return flops / (rates.train_tflops * 1e12) + steps * rates.train_step_s


def forward_seconds(spec: ConvNetSpec, forwards: int, rates: Rates) -> float:
    """``forwards`` image-forwards (test accuracy)."""
    return forwards * flops_per_image(spec) / (rates.train_tflops * 1e12)


def experts_seconds(
    spec: ConvNetSpec, buffers: Mapping[str, Any], rates: Rates, train_images: int = TRAIN_IMAGES
) -> float:
    """The expert buffer: E experts x T epochs over the training set, plus the accuracy curves."""
    e, t = int(buffers["num_experts"]), int(buffers["train_epochs"])
    groups = math.ceil(e / int(buffers.get("experts_per_group", 10)))
    batch = int(buffers.get("batch_train", 256))
    train = train_seconds(spec, e, train_images, t, batch, rates, groups)
    return train + forward_seconds(spec, e * (t + 1) * EXPERT_CURVE_IMAGES, rates)


def experts_that_fit(
    spec: ConvNetSpec,
    buffers: Mapping[str, Any],
    rates: Rates,
    seconds: float,
    train_images: int = TRAIN_IMAGES,
) -> int:
    """The most experts, at most ``buffers["num_experts"]`` and at least 1, whose
    predicted training (:func:`experts_seconds`) takes at most ``seconds``."""
    planned, group = int(buffers["num_experts"]), int(buffers.get("experts_per_group", 10))
    for e in range(planned, 1, -1):
        b = {**buffers, "num_experts": e, "experts_per_group": min(e, group)}
        if experts_seconds(spec, b, rates, train_images) <= seconds:
            return e
    return 1


def iteration_seconds(spec: ConvNetSpec, syn_steps: int, batch_syn: int, rates: Rates) -> float:
    """One unrolled distillation iteration."""
    flops = syn_steps * batch_syn * distill_flops_per_image_step(spec)["unrolled"]
    return (
        flops / (rates.distill_tflops * 1e12) + syn_steps * rates.inner_step_s + rates.iteration_s
    )


def eval_seconds(spec: ConvNetSpec, images: int, ev: Mapping[str, Any], rates: Rates) -> float:
    """One meta-test evaluation: ``num_eval`` nets x ``eval_epochs`` on ``images`` images."""
    nets, epochs = int(ev["num_eval"]), int(ev["eval_epochs"])
    train = train_seconds(spec, nets, images, epochs, int(ev.get("batch_eval", 256)), rates)
    tests = nets * (TEST_IMAGES + (EVAL_CURVE_POINTS - 1) * EVAL_CURVE_IMAGES)
    return train + forward_seconds(spec, tests, rates)


def bench_seconds(name: str, rates: Rates) -> float:
    """One reduced stage benchmark of the suite (:data:`BENCH_ARGS`), its process start-up included.

    Raises:
        ValueError: ``name`` is not experts, distill or evaluate.
    """
    a = BENCH_ARGS[name]
    spec = _spec(_arg(a, "--width"))
    reps = _arg(a, "--repeats")
    if name == "experts":
        e, n = _arg(a, "--experts"), _arg(a, "--images")
        # vmap (one group), loop and one-at-a-time (E groups each): reps timed + warm-up
        per = train_seconds(spec, e, n, 1, 256, rates) + 2 * train_seconds(
            spec, e, n, 1, 256, rates, e
        )
        warm = 3 * train_seconds(spec, e, 512, 1, 256, rates, e)
        return rates.bench_process_s + reps * per + warm
    if name == "distill":
        steps, b = _arg(a, "--syn-steps"), _arg(a, "--batch-syn")
        fps = distill_flops_per_image_step(spec)
        it = sum(steps * b * f for f in fps.values()) / (rates.distill_tflops * 1e12)
        it += 3 * steps * rates.inner_step_s
        sweep_steps = 1 + 2 + 5 + 10 + 30  # --tesla-steps default, checkpointed + tesla
        sweep = (
            sweep_steps * b * (fps["checkpointed"] + fps["tesla"]) / (rates.distill_tflops * 1e12)
        )
        sweep += 2 * sweep_steps * rates.inner_step_s
        return rates.bench_process_s + (reps + 1) * it + sweep
    if name == "evaluate":
        ev = {"num_eval": _arg(a, "--nets"), "eval_epochs": _arg(a, "--epochs")}
        one = {"num_eval": 1, "eval_epochs": _arg(a, "--epochs")}
        n = _arg(a, "--images")
        together = eval_seconds(spec, n, ev, rates)
        sequential = _arg(a, "--nets") * eval_seconds(spec, n, one, rates)
        return rates.bench_process_s + reps * (together + sequential)
    raise ValueError(f"invalid benchmark name={name!r}: allowed experts, distill, evaluate")


def run_images(run: Mapping[str, Any], classes: int = 10) -> int:
    """Synthetic images of a distillation run (its ``batch_syn`` bound applied)."""
    from lsslib.synset import layout

    lay = layout(
        run["parameterisation"],
        ipc=int(run["ipc"]),
        rank=int(run.get("rank", 4)),
        subspaces=int(run.get("subspaces", 1)),
        channels=3,
        side=32,
        num_classes=classes,
        soft_labels=bool(run.get("soft_labels", True)),
        strict_budget=bool(run.get("strict_budget", False)),
    )
    n = lay.images_per_class * classes
    return min(n, int(run["batch_syn"])) if run.get("batch_syn") else n


@dataclass
class Plan:
    """Predicted seconds of every part in suite order, and the derived profile sizes."""

    parts: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    per_iteration: dict[str, float] = field(default_factory=dict)
    rates: Rates = field(default_factory=Rates)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def shares(self) -> dict[str, float]:
        """Each part's share of the budget: its prediction times :func:`margin_of`."""
        return {k: round(v * margin_of(k), 1) for k, v in self.parts.items()}


def plan_suite(profile: Mapping[str, Any], rates: Rates | None = None) -> Plan:
    """Predict every part of the suite for ``profile`` (its own iteration count).

    Args:
        profile: a profile dict (:func:`lsslib.profiles.load_profile`) with ``model``,
            ``buffers``, ``distill``, ``eval``, ``runs``, ``baselines``.
        rates: device rates (default: the assumed ones).

    Returns:
        A :class:`Plan` whose ``parts`` follow the suite's order.
    """
    rates = rates or Rates()
    model = profile.get("model") or {}
    spec = _spec(int(model.get("net_width", 128)), int(model.get("net_depth", 3)))
    plan = Plan(rates=rates)
    plan.parts["startup"] = rates.startup_s
    for name in BENCH_ARGS:
        plan.parts[f"bench_{name}"] = bench_seconds(name, rates)
    plan.parts["data"] = rates.data_s
    plan.parts["experts"] = experts_seconds(spec, profile["buffers"], rates)
    base = dict(profile.get("distill") or {})
    runs = profile.get("runs") or {}
    plan.iterations = int(base.get("iterations", 0))
    for run, over in runs.items():
        r = {**base, **(over or {})}
        per = iteration_seconds(spec, int(r["syn_steps"]), run_images(r), rates)
        plan.per_iteration[run] = per
        plan.parts[f"distill:{run}"] = int(r["iterations"]) * per
    ev = dict(profile.get("eval") or {})
    for run, over in runs.items():
        plan.parts[f"eval:{run}"] = eval_seconds(
            spec, run_images({**base, **(over or {})}), ev, rates
        )
    for name, spec_b in (profile.get("baselines") or {}).items():
        n = int(spec_b.get("real_ipc", 1)) * 10
        plan.parts[f"eval:{name}"] = eval_seconds(spec, n, {**ev, **spec_b}, rates)
    plan.parts["write"] = rates.write_s
    return plan


def derive_iterations(profile: Mapping[str, Any], rates: Rates | None = None) -> int:
    """The most distillation iterations (a multiple of 10, the same for every run)
    such that the shares of all parts (:meth:`Plan.shares`) fit :data:`BUDGET_S`."""
    rates = rates or Rates()
    prof = json.loads(json.dumps(profile))
    prof.setdefault("distill", {})["iterations"] = 0
    for over in (prof.get("runs") or {}).values():
        over.pop("iterations", None)
    p0 = plan_suite(prof, rates)
    per = sum(p0.per_iteration.values()) * margin_of("distill:")
    free = BUDGET_S - sum(p0.shares().values())
    return max(0, int(free / per) // 10 * 10)


def plan_text(profile: Mapping[str, Any], rates: Rates | None = None) -> str:
    """The plan as comment lines for the profile header (predicted and share per part)."""
    plan = plan_suite(profile, rates)
    shares = plan.shares()
    lines = [
        f"{'part':26s} {'predicted s':>11s} {'share s':>8s}",
        *(f"{k:26s} {v:11.1f} {shares[k]:8.1f}" for k, v in plan.parts.items()),
        f"{'total':26s} {plan.total:11.1f} {sum(shares.values()):8.1f}",
    ]
    lines.append(
        "per distillation iteration: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in plan.per_iteration.items())
    )
    return "\n".join(lines)


def rates_from_records(folder: str | Path, base: Rates | None = None) -> Rates:
    """Rates measured by the suite's GPU benchmark records (``gpu_*.json``) where present.

    Training TFLOP/s from the experts record (together, median), distillation
    TFLOP/s from the distill record (unrolled, median); the latency floors and
    fixed costs stay as assumed.
    """
    base = base or Rates()
    kw = dict(base.__dict__)
    folder = Path(folder)
    found = []
    for stage in ("experts", "distill"):
        path = folder / f"gpu_{stage}.json"
        if not path.is_file():
            continue
        rec = json.loads(path.read_text())
        res = rec.get("results") or {}
        if stage == "experts" and rec.get("together") in res:
            r = res[rec["together"]]
            kw["train_tflops"] = r["images_per_s_median"] * rec["flops_train_per_image"] / 1e12
            found.append("experts")
        if stage == "distill" and "unrolled" in res:
            r = res["unrolled"]
            kw["distill_tflops"] = r["image_steps_per_s_median"] * r["flops_per_image_step"] / 1e12
            found.append("distill")
    if found:
        kw["source"] = f"measured ({', '.join(found)}: {folder}), the rest assumed"
    return Rates(**kw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=str(REPO / "lsslib" / "_profiles" / "gpu.yaml"))
    p.add_argument("--records", default=None, help="take measured rates from gpu_*.json here")
    p.add_argument(
        "--check", action="store_true", help="exit 1 unless the profile's iterations are derived"
    )
    args = p.parse_args()
    prof = load_profile(args.profile)
    rates = rates_from_records(args.records) if args.records else Rates()
    n = derive_iterations(prof, rates)
    print(f"rates: {rates}")
    print(f"derived iterations per run: {n} (profile has {prof['distill']['iterations']})")
    print(plan_text(prof, rates))
    if args.check and n != prof["distill"]["iterations"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

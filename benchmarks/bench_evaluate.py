"""Benchmark of the evaluation stage: the eval nets trained together vs one after another.

What runs: ``lsslib.evaluate.evaluate_images`` itself (MTT's protocol: fresh
ConvNets, SGD momentum 0.9, weight decay 5e-4, lr 0.01 x0.1 at half of the
epochs, batch 256, DSA, soft cross-entropy on soft labels, test accuracy
curve and final test accuracy) on ``--images`` random CIFAR-shaped training
images with soft labels and ``--test-images`` random test images:

* ``together``: one call with ``num_eval = --nets`` (``vectorise=None``: vmap on
  CUDA, a loop over the nets on CPU);
* ``sequential``: the straightforward baseline, ``--nets`` calls with
  ``num_eval=1`` and ``eval_seed=i`` (net i gets the same seed either way, so
  the accuracies must agree; checked here).

Figures: seconds per evaluation, training images/s (nets x images x epochs /
s), achieved TFLOP/s (training (3F - F1) per image plus the test forwards F),
its fraction of the device peak, peak memory, the projection to the full
protocol (nets x 1000 epochs) when fewer epochs were run, and the ratio.

GPU target (to be measured; no GPU in the session that wrote this): 5 nets x
1000 epochs on 1,000 images in <= 60 s.

Usage::

    python benchmarks/bench_evaluate.py --quick               # CPU, < 2 min
    python benchmarks/bench_evaluate.py --device cuda         # 5 nets x 1000 epochs x 1000 images
    python benchmarks/bench_evaluate.py --device cuda --epochs 100   # shorter, projected to 1000
"""

from __future__ import annotations

import functools

import torch
from _common import (
    PeakMemory,
    base_parser,
    convolution_floor,
    device_info,
    device_peak,
    emit,
    header,
    interleaved_times,
    mib,
    of_peak,
    op_profile,
    print_op_profiles,
    print_vs_reference,
    recheck_peak,
    rss_in_fresh_processes,
    rss_only,
    setup,
    spec_of,
    summarise,
    train_flops_per_image,
    vs_reference,
)
from _reference import ref_evaluate

import lsslib.evaluate as lss_eval
from lsslib.config import DataConfig, EvalConfig
from lsslib.data import Normaliser, RealData
from lsslib.models import flops_per_image
from lsslib.training import train_nets

FULL = dict(width=128, nets=5, images=1000, epochs=1000, test_images=10000, repeats=1)
QUICK = dict(width=32, nets=5, images=300, epochs=2, test_images=500, repeats=3)
FULL_EPOCHS = 1000


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--nets", type=int, default=None, help="eval nets (default 5)")
    p.add_argument("--images", type=int, default=None, help="training images (default 1000)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 1000)")
    p.add_argument("--test-images", type=int, default=None, help="test images (default 10000)")
    p.add_argument("--batch", type=int, default=256, help="minibatch size (default 256)")
    p.add_argument("--hard-labels", action="store_true", help="int labels instead of soft ones")
    p.add_argument(
        "--curve-points",
        type=int,
        default=5,
        help="evaluate_images' accuracy-curve points (default 5, as the stage; 0 = off)",
    )
    p.add_argument("--no-dsa", action="store_true", help="turn DSA off")
    p.add_argument(
        "--compile",
        default=None,
        metavar="BACKEND",
        help="optional: torch.compile backend for the together variant (e.g. inductor); off by default",
    )
    args = p.parse_args()
    dev = setup(args, QUICK, FULL)
    spec = spec_of(args)
    g = torch.Generator().manual_seed(args.seed)
    n, k = args.images, args.classes
    x = torch.randn(n, 3, 32, 32, generator=g).to(dev)
    if args.hard_labels:
        y = torch.randint(k, (n,), generator=g).to(dev)
    else:
        y = torch.softmax(2 * torch.randn(n, k, generator=g), -1).to(dev)
    data = RealData(  # random tensors of CIFAR shape, as the stage receives them
        x_train=x,
        y_train=torch.randint(k, (n,), generator=g).to(dev),
        x_test=torch.randn(args.test_images, 3, 32, 32, generator=g).to(dev),
        y_test=torch.randint(k, (args.test_images,), generator=g).to(dev),
        classes=[f"c{i}" for i in range(k)],
        normaliser=Normaliser(torch.zeros(3), torch.ones(3)),
        config=DataConfig(dataset="cifar10", normalisation="none"),
    )
    cfg_kw = dict(eval_epochs=args.epochs, batch_eval=args.batch, dsa=not args.no_dsa)
    config = {
        "stage": "evaluate",
        "model": f"ConvNetD{args.depth} width {args.width}",
        "params": spec.num_params,
        "input": "3x32x32 random",
        "classes": k,
        "nets": args.nets,
        "images": n,
        "epochs": args.epochs,
        "test_images": args.test_images,
        "batch": args.batch,
        "labels": "hard" if args.hard_labels else "soft",
        "dsa": not args.no_dsa,
        "sgd": "lr 0.01 (x0.1 at half), momentum 0.9, wd 5e-4",
        "repeats": args.repeats,
        "together_is": "vmap" if dev.type == "cuda" else "loop",
        "compile": args.compile,
        "quick": args.quick,
    }
    info = device_info(dev, args)
    peak = device_peak(dev, args)
    header("bench_evaluate", info, config, peak)

    def together(cfg_over: dict | None = None):
        cfg = EvalConfig(num_eval=args.nets, eval_seed=0, **{**cfg_kw, **(cfg_over or {})})
        if args.compile:  # benchmark-only: evaluate_images has no compile switch
            lss_eval.train_nets = functools.partial(train_nets, compile_backend=args.compile)
        try:
            return lss_eval.evaluate_images(
                spec, x, y, data, cfg, lr=0.01, curve_points=args.curve_points, progress=False
            ).accuracies
        finally:
            lss_eval.train_nets = train_nets

    def sequential(cfg_over: dict | None = None):
        accs = []
        for i in range(args.nets):
            cfg = EvalConfig(num_eval=1, eval_seed=i, **{**cfg_kw, **(cfg_over or {})})
            accs += lss_eval.evaluate_images(
                spec, x, y, data, cfg, lr=0.01, curve_points=args.curve_points, progress=False
            ).accuracies
        return accs

    def reference(cfg_over: dict | None = None):
        epochs = (cfg_over or {}).get("eval_epochs", args.epochs)
        return ref_evaluate(
            spec,
            x,
            y,
            data.x_test,
            data.y_test,
            nets=args.nets,
            seed=0,
            epochs=epochs,
            lr=0.01,
            batch=args.batch,
            dsa=None if args.no_dsa else cfg_kw_dsa,
        )

    cfg_kw_dsa = EvalConfig().dsa_strategy
    variants = {"together": together}
    if args.nets > 1:  # with one net "sequential" is the same call as "together"
        variants["sequential"] = sequential
    if args.reference:
        variants["reference"] = reference
    rss_only(args, {name: (lambda fn=fn: fn({"eval_epochs": 1})) for name, fn in variants.items()})
    memory = {}
    for name, fn in variants.items():  # warm-up (1 epoch), also the peak-memory run
        with PeakMemory(dev) as pm:
            fn({"eval_epochs": 1})
        memory[name] = pm
    accs: dict[str, list[float]] = {}
    fns = {name: (lambda name=name: accs.__setitem__(name, variants[name]())) for name in variants}
    times = interleaved_times(fns, args.repeats, dev)
    profiles = (
        {name: op_profile(fn, dev) for name, fn in variants.items()} if args.op_profile else {}
    )
    rss = rss_in_fresh_processes(args, dev, list(variants))

    peak = recheck_peak(dev, args, peak)
    f_fwd = flops_per_image(spec)
    marks = {
        max(1, round(args.epochs * (i + 1) / 5)) for i in range(5)
    }  # evaluate_images' curve points
    curve_evals = len([m for m in marks if m != args.epochs]) if args.curve_points > 1 else 0
    n_curve = lss_eval.curve_test_images(spec, n, args.epochs, args.test_images, args.curve_points)
    flops = args.nets * (
        n * args.epochs * train_flops_per_image(spec)
        + (args.test_images + curve_evals * n_curve) * f_fwd
    )
    work = args.nets * n * args.epochs
    results = {}
    for name in variants:
        s = summarise(times[name])
        tf = flops / s["best_s"] / 1e12
        results[name] = {
            **s,
            "train_images_per_s": round(work / s["best_s"], 1),
            "train_images_per_s_median": round(work / s["median_s"], 1),
            "tflops": round(tf, 5),
            "fraction_of_peak": None if peak[0] is None else round(tf / peak[0], 5),
            "projected_full_s": round(s["best_s"] * FULL_EPOCHS / args.epochs, 1),
            "peak_mem_mib": mib(memory[name].peak_bytes),
            "extra_mem_mib": mib(memory[name].extra_bytes),
            "mem_method": memory[name].method,
        }
    other = "sequential" if "sequential" in results else "together"
    if other == "together":  # one net: "sequential" is the same call; keep the record's shape
        results["sequential"] = {**results["together"], "same_call_as": "together (1 net)"}
    max_acc_diff = max(abs(a - b) for a, b in zip(accs["together"], accs[other], strict=True))
    ratios = {
        "together_vs_sequential_best": round(
            results[other]["best_s"] / results["together"]["best_s"], 3
        ),
        "together_vs_sequential_median": round(
            results[other]["median_s"] / results["together"]["median_s"], 3
        ),
        "together_vs_sequential_cpu_time": round(
            results[other]["best_cpu_s"] / results["together"]["best_cpu_s"], 3
        ),
    }
    ref_ratios = vs_reference({k: v for k, v in results.items() if "same_call_as" not in v}, rss)
    ref_acc_diff = None
    if "reference" in accs:
        ref_acc_diff = max(
            abs(a - b) for a, b in zip(accs["together"], accs["reference"], strict=True)
        )
    print(f"   FLOPs   {flops / 1e12:.4f} TFLOP per evaluation ({args.nets} nets)")
    for name, r in results.items():
        frac = of_peak(r)
        print(
            f"   {name:11s} {r['best_s']:8.2f} s (median {r['median_s']:.2f})  "
            f"{r['train_images_per_s']:.1f} train img/s  {r['tflops']:.4f} TFLOP/s{frac}  "
            f"peak mem {r['peak_mem_mib']} MiB (+{r['extra_mem_mib']} MiB)  "
            f"-> {args.nets} nets x {FULL_EPOCHS} epochs: {r['projected_full_s']} s"
        )
    print(
        f"   ratio   together / sequential: {ratios['together_vs_sequential_best']}x best, "
        f"{ratios['together_vs_sequential_median']}x median, "
        f"{ratios['together_vs_sequential_cpu_time']}x process CPU time"
    )
    print(f"   check   max |accuracy together - sequential| = {max_acc_diff:.3g}")
    print_vs_reference(ref_ratios, rss)
    floors = convolution_floor(results, profiles)
    print_op_profiles(profiles, floors)
    if ref_acc_diff is not None:
        print(f"   check   max |accuracy together - reference| = {ref_acc_diff:.3g}")
    targets = None
    if dev.type == "cuda":
        targets = {"5x1000_on_1000_le_60s": results["together"]["projected_full_s"] <= 60}
        print(f"   targets {targets}")
    emit(
        {
            "bench": "evaluate",
            **info,
            "config": config,
            "peak_tflops": peak[0],
            "peak_basis": peak[1],
            "flops_forward_per_image": f_fwd,
            "flops_train_per_image": train_flops_per_image(spec),
            "flops_per_evaluation": flops,
            "results": results,
            "ratios": ratios,
            "max_abs_accuracy_diff": max_acc_diff,
            "vs_reference": ref_ratios,
            "op_profiles": profiles,
            "convolution_floor_vs_reference": floors,
            "rss_fresh_processes": rss,
            "max_abs_accuracy_diff_vs_reference": ref_acc_diff,
            "curve_test_images": n_curve,
            "gpu_targets": targets,
        },
        args.out,
    )


if __name__ == "__main__":
    main()

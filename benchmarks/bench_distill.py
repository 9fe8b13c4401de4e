"""Benchmark of the distillation stage: gradient modes of the trajectory-matching loss.

What runs: ``lsslib.matching.matching_loss`` (one distillation iteration's loss
and gradients) with ``--syn-steps`` inner SGD steps of ``--batch-syn`` synthetic
images each (DSA on every batch), on random CIFAR-shaped synthetic images
(a leaf tensor) with soft labels (softmax of a logits leaf), a learnable
syn_lr, and an expert segment made of a random ConvNet (``start``) and the
same net after a few SGD steps on random CIFAR-shaped images (``target``).
All modes share one plan (batch indices, DSA draws), moved to the device once
(``lsslib.plan.plan_to``).

* ``unrolled`` -- the straightforward baseline: MTT's whole graph of all inner steps;
* ``checkpointed`` -- exact, keeps only the N+1 parameter vectors and
  recomputes one inner step at a time going backwards;
* ``tesla`` -- TESLA's constant-memory approximate gradient
  (``lsslib.tesla``; the released code's factor-2 bug fixed).

FLOPs per image-step (F = forward of one image, F1 = its first convolution;
every matmul-like layer costs its forward once per product it takes part in):

* inner step with ``create_graph``: forward F, weight gradients F, input
  gradients F - F1 (no input gradient at the first layer): 3F - F1;
* meta-backward through that step (reverse of the backward and forward
  graphs, to w_i, x, y): each backward product dX = dY W^T and dW = X^T dY has
  two operands to differentiate (2 + 2), the forward product Y = X W two more:
  6 per layer, 4 at the first layer (no dX there): 6F - 2F1;
* ``unrolled`` = 9F - 3F1; ``checkpointed`` = a graph-free replay (3F - F1) +
  the same 9F - 3F1 = 12F - 4F1; ``tesla`` = graph-free pass (3F - F1) +
  inner step (3F - F1) + a meta-backward to x and y only (the W operands are
  not needed: 4 per layer, 3 at the first) (4F - F1) = 10F - 3F1.

Figures: image-steps/s (syn_steps x batch_syn per iteration / s), achieved
TFLOP/s with each mode's own FLOP count, its fraction of the device peak,
peak memory (CUDA: max_memory_allocated; CPU: RSS high-water mark, plus the
deterministic proxy ``saved_mib``: peak bytes autograd holds for backward,
``lsslib.tesla.SavedTensorMeter``), and ratios against ``unrolled``. Then the
TESLA inexactness: for several syn_steps, cosine similarity, relative error
||g_tesla - g_exact|| / ||g_exact|| and norm ratio of the gradients w.r.t. the
images, the label logits and syn_lr (exact = ``checkpointed``; TF32 off for the
sweep, so the gap is the method's, not TF32 rounding).

GPU targets (to be measured; no GPU in the session that wrote this): >= 40,000
image-steps/s, and ``checkpointed`` peak memory <= 1/4 of ``unrolled`` at
syn_steps 30, batch_syn 256.

Usage::

    python benchmarks/bench_distill.py --quick                  # CPU, < 2 min
    python benchmarks/bench_distill.py --device cuda            # syn_steps 30, batch_syn 256
    python benchmarks/bench_distill.py --device cuda --no-tf32  # strict fp32 inner loop
"""

from __future__ import annotations

import torch
from _common import (
    PeakMemory,
    base_parser,
    convolution_floor,
    device_info,
    device_peak,
    emit,
    first_layer_flops,
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
    vs_reference,
)
from _reference import RefConvNet, ref_unrolled_iteration

from lsslib.matching import matching_loss
from lsslib.models import convnet_forward, flops_per_image, init_flat
from lsslib.plan import make_plan, plan_to
from lsslib.tesla import SavedTensorMeter
from lsslib.training import enable_tf32

DSA = "color_crop_cutout_flip_scale_rotate"
MODES = ("unrolled", "checkpointed", "tesla")
FULL = dict(
    width=128,
    syn_steps=30,
    batch_syn=256,
    n_syn=1000,
    repeats=3,
    tesla_steps="1,2,5,10,30",
    tesla_batch=256,
    expert_steps=10,
)
QUICK = dict(
    width=32,
    syn_steps=8,
    batch_syn=48,
    n_syn=200,
    repeats=3,
    tesla_steps="1,2,5,10",
    tesla_batch=32,
    expert_steps=3,
)


def flops_per_image_step(spec) -> dict[str, int]:
    f, f1 = flops_per_image(spec), first_layer_flops(spec)
    return {
        "unrolled": 9 * f - 3 * f1,
        "checkpointed": 12 * f - 4 * f1,
        "tesla": 10 * f - 3 * f1,
        "reference": 9 * f - 3 * f1,  # MTT's unrolled loop: the same work as unrolled
    }


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--syn-steps", type=int, default=None, help="inner steps N (default 30)")
    p.add_argument("--batch-syn", type=int, default=None, help="images per inner step (256)")
    p.add_argument("--n-syn", type=int, default=None, help="synthetic images (default 1000)")
    p.add_argument("--syn-lr", type=float, default=0.01, help="student step size (0.01)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated gradient modes")
    p.add_argument("--no-dsa", action="store_true", help="turn DSA off")
    p.add_argument("--tesla-steps", default=None, help="syn_steps for the TESLA inexactness sweep")
    p.add_argument("--tesla-batch", type=int, default=None, help="batch_syn of the sweep")
    p.add_argument("--expert-steps", type=int, default=None, help="SGD steps from start to target")
    args = p.parse_args()
    dev = setup(args, QUICK, FULL)
    spec = spec_of(args)
    modes = [m for m in args.modes.split(",") if m]
    strategy = None if args.no_dsa else DSA
    g = torch.Generator().manual_seed(args.seed)
    k = args.classes

    # a stand-in expert segment: start = fresh net, target = a few SGD steps later
    start = init_flat(spec, g).to(dev)
    w = start.clone()
    for _ in range(args.expert_steps):
        xr = torch.randn(256, 3, 32, 32, generator=g).to(dev)
        yr = torch.randint(k, (256,), generator=g).to(dev)
        w.requires_grad_(True)
        (gw,) = torch.autograd.grad(
            torch.nn.functional.cross_entropy(convnet_forward(spec, w, xr), yr), w
        )
        w = (w - 0.01 * gw).detach()
    target = w
    x = torch.randn(args.n_syn, 3, 32, 32, generator=g).to(dev).requires_grad_(True)
    logits = (2 * torch.randn(args.n_syn, k, generator=g)).to(dev).requires_grad_(True)
    syn_lr = torch.tensor(args.syn_lr, device=dev, requires_grad=True)

    ref_net = RefConvNet(spec).to(dev)

    def iteration(mode: str, plan) -> float:
        for t in (x, logits, syn_lr):
            t.grad = None
        if mode == "reference":
            y = torch.softmax(logits, -1)
            return ref_unrolled_iteration(
                spec, ref_net, start, target, x, y, syn_lr, plan.indices, plan.augment
            )
        loss = matching_loss(spec, start, target, x, torch.softmax(logits, -1), syn_lr, plan, mode)
        if mode == "unrolled":
            loss.backward()
        return loss.detach()

    plan = plan_to(make_plan(args.n_syn, args.syn_steps, args.batch_syn, 32, strategy, g), dev)
    names = (["reference"] if args.reference else []) + modes
    rss_only(args, {m: (lambda m=m: iteration(m, plan)) for m in names})
    config = {
        "stage": "distill",
        "model": f"ConvNetD{args.depth} width {args.width}",
        "params": spec.num_params,
        "input": "3x32x32 random",
        "classes": k,
        "syn_steps": args.syn_steps,
        "batch_syn": args.batch_syn,
        "n_syn": args.n_syn,
        "syn_lr": args.syn_lr,
        "labels": "soft (softmax of a logits leaf)",
        "dsa": strategy,
        "expert_steps": args.expert_steps,
        "repeats": args.repeats,
        "modes": modes,
        "quick": args.quick,
    }
    info = device_info(dev, args)
    peak = device_peak(dev, args)
    header("bench_distill", info, config, peak)

    # warm-up + memory run of each mode
    memory, saved, losses = {}, {}, {}
    for mode in names:
        with PeakMemory(dev) as pm, SavedTensorMeter() as meter:
            losses[mode] = float(iteration(mode, plan))
        memory[mode], saved[mode] = pm, meter.peak_bytes
    times = interleaved_times(
        {m: (lambda m=m: iteration(m, plan)) for m in names}, args.repeats, dev
    )
    profiles = (
        {m: op_profile(lambda m=m: iteration(m, plan), dev) for m in names}
        if args.op_profile
        else {}
    )
    rss = rss_in_fresh_processes(args, dev, names)
    peak = recheck_peak(dev, args, peak)
    img_steps = args.syn_steps * args.batch_syn
    fps = flops_per_image_step(spec)
    results = {}
    for mode in names:
        s = summarise(times[mode])
        isps = img_steps / s["best_s"]
        tf = isps * fps[mode] / 1e12
        results[mode] = {
            **s,
            "image_steps_per_s": round(isps, 1),
            "image_steps_per_s_median": round(img_steps / s["median_s"], 1),
            "iterations_per_s": round(1 / s["best_s"], 4),
            "flops_per_image_step": fps[mode],
            "tflops": round(tf, 5),
            "fraction_of_peak": None if peak[0] is None else round(tf / peak[0], 5),
            "peak_mem_mib": mib(memory[mode].peak_bytes),
            "extra_mem_mib": mib(memory[mode].extra_bytes),
            "mem_method": memory[mode].method,
            "saved_mib": mib(saved[mode]),
            "loss": losses[mode],
        }
    ratios = {}
    if "unrolled" in results:
        u = results["unrolled"]
        for mode in modes:
            if mode == "unrolled" or mode not in results:
                continue
            r = results[mode]
            mem_key = "peak_mem_mib" if dev.type == "cuda" else "extra_mem_mib"
            ratios[mode] = {
                "speed_vs_unrolled_best": round(u["best_s"] / r["best_s"], 3),
                "speed_vs_unrolled_median": round(u["median_s"] / r["median_s"], 3),
                "speed_vs_unrolled_cpu_time": round(u["best_cpu_s"] / r["best_cpu_s"], 3),
                "memory_vs_unrolled": round(r[mem_key] / max(u[mem_key], 1e-9), 4),
                "saved_vs_unrolled": round(r["saved_mib"] / max(u["saved_mib"], 1e-9), 4),
            }

    print(
        f"   FLOPs   F = {flops_per_image(spec) / 1e6:.2f} MFLOP/image; per image-step: "
        + ", ".join(
            f"{m} {fps[m] / 1e6:.1f} M ({fps[m] / flops_per_image(spec):.2f}F)" for m in MODES
        )
    )
    for mode, r in results.items():
        frac = of_peak(r)
        print(
            f"   {mode:12s} {r['image_steps_per_s']:10.1f} image-steps/s (median "
            f"{r['image_steps_per_s_median']:.1f})  {r['tflops']:.4f} TFLOP/s{frac}  peak mem "
            f"{r['peak_mem_mib']} MiB (+{r['extra_mem_mib']} MiB)  autograd-saved {r['saved_mib']} MiB"
            f"  loss {r['loss']:.6f}"
        )
    for mode, r in ratios.items():
        print(
            f"   ratio   {mode} / unrolled: speed {r['speed_vs_unrolled_best']}x best, "
            f"{r['speed_vs_unrolled_median']}x median, {r['speed_vs_unrolled_cpu_time']}x CPU time; "
            f"memory {r['memory_vs_unrolled']}x, autograd-saved {r['saved_vs_unrolled']}x"
        )

    ref_ratios = vs_reference(results, rss)
    print_vs_reference(ref_ratios, rss)
    floors = convolution_floor(results, profiles)
    print_op_profiles(profiles, floors)
    if "reference" in losses and "unrolled" in losses:
        print(
            f"   check   |loss unrolled - loss reference| = "
            f"{abs(losses['unrolled'] - losses['reference']):.3g}"
        )

    # TESLA inexactness against the exact gradient, on the same plan per syn_steps
    sweep = []

    def cos(a, b) -> float:
        a, b = a.double(), b.double()
        return float((a * b).sum() / (a.norm() * b.norm()))

    tf32_was = enable_tf32(False)  # the sweep measures the method, not TF32's rounding
    for n_steps in [int(s) for s in args.tesla_steps.split(",") if s]:
        gp = torch.Generator().manual_seed(args.seed + 100 + n_steps)
        pl = plan_to(make_plan(args.n_syn, n_steps, args.tesla_batch, 32, strategy, gp), dev)
        out = {}
        for mode in ("checkpointed", "tesla"):
            loss = iteration(mode, pl)
            out[mode] = (float(loss), x.grad.clone(), logits.grad.clone(), syn_lr.grad.clone())
        (le, xe, ye, lre), (lt, xt, yt, lrt) = out["checkpointed"], out["tesla"]
        row = {
            "syn_steps": n_steps,
            "batch_syn": args.tesla_batch,
            "loss_exact": le,
            "loss_tesla": lt,
            "images_cos": cos(xt, xe),
            "images_rel_err": float((xt - xe).double().norm() / xe.double().norm()),
            "images_norm_ratio": float(xt.double().norm() / xe.double().norm()),
            "labels_cos": cos(yt, ye),
            "labels_rel_err": float((yt - ye).double().norm() / ye.double().norm()),
            "syn_lr_rel_err": float((lrt - lre).abs() / lre.abs()),
            "syn_lr_same_sign": bool(torch.sign(lrt) == torch.sign(lre)),
            "syn_lr_grad_exact": float(lre),
            "syn_lr_grad_tesla": float(lrt),
        }
        sweep.append(row)
    enable_tf32(tf32_was[0])
    torch.backends.cudnn.allow_tf32 = tf32_was[1]
    print("   TESLA vs exact gradient (same plan; exact = checkpointed):")
    print(
        "     steps  images: cos      rel.err  |t|/|e|   labels: cos      rel.err   syn_lr: rel.err sign"
    )
    for r in sweep:
        print(
            f"     {r['syn_steps']:5d}  {r['images_cos']:14.6f} {r['images_rel_err']:8.4f} "
            f"{r['images_norm_ratio']:8.4f}  {r['labels_cos']:14.6f} {r['labels_rel_err']:8.4f}  "
            f"{r['syn_lr_rel_err']:14.4f} {'same' if r['syn_lr_same_sign'] else 'FLIPPED'}"
        )
    targets = None
    if dev.type == "cuda":
        targets = {
            f"{m}_ge_40k_image_steps_s": results[m]["image_steps_per_s"] >= 40_000 for m in results
        }
        if "checkpointed" in ratios:
            targets["checkpointed_mem_le_quarter_unrolled"] = (
                ratios["checkpointed"]["memory_vs_unrolled"] <= 0.25
            )
        print(f"   targets {targets}")
    emit(
        {
            "bench": "distill",
            **info,
            "config": config,
            "peak_tflops": peak[0],
            "peak_basis": peak[1],
            "flops_forward_per_image": flops_per_image(spec),
            "flops_per_image_step": fps,
            "results": results,
            "ratios": ratios,
            "vs_reference": ref_ratios,
            "op_profiles": profiles,
            "convolution_floor_vs_reference": floors,
            "rss_fresh_processes": rss,
            "tesla_inexactness": sweep,
            "gpu_targets": targets,
        },
        args.out,
    )


if __name__ == "__main__":
    main()

"""Benchmark of the expert stage: E ConvNets trained together vs one at a time.

What runs (MTT buffer.py settings: SGD lr 0.01, no momentum, no weight decay,
batch 256, DSA ``color_crop_cutout_flip_scale_rotate``) on random tensors of
CIFAR-10 shape (3x32x32, 10 classes), one epoch over ``--images`` images per
expert, timed ``--repeats`` times with the variants interleaved:

* ``vmap``: ``train_nets`` with E generators and ``vectorise=True`` (one vmapped
  forward, grouped convolutions) -- the default on CUDA;
* ``loop``: ``train_nets`` with E generators and ``vectorise=False`` (a loop over
  the nets inside one call) -- the default on CPU;
* ``one_at_a_time``: the straightforward baseline, E calls of ``train_nets``
  with one network each (``vectorise=False``).

``together`` is whichever of ``vmap``/``loop`` ``vectorise=None`` picks on this
device; the headline ratio is together / one_at_a_time. All variants produce the
same trajectories (checked here: max |difference| of the final parameters).

Figures: aggregate training images/s (E x images x epochs / seconds), achieved
TFLOP/s = images/s x (3F - F1) where F = ``lsslib.models.flops_per_image`` (one
forward) and F1 the first convolution's forward (its input gradient is never
computed), its fraction of the device peak, and the peak memory of one step.

GPU targets (to be measured; no GPU in the session that wrote this):
together >= 50,000 images/s and >= 5x one_at_a_time (TF32 on).

Usage::

    python benchmarks/bench_experts.py --quick                # CPU, < 2 min
    python benchmarks/bench_experts.py --device cuda          # GPU target config
    python benchmarks/bench_experts.py --device cuda --compile inductor   # optional path
"""

from __future__ import annotations

import torch
from _common import (
    PeakMemory,
    base_parser,
    device_info,
    device_peak,
    emit,
    header,
    interleaved_times,
    mib,
    of_peak,
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
from _reference import ref_train

from lsslib.models import flops_per_image, init_flat
from lsslib.training import TrainState, train_nets

DSA = "color_crop_cutout_flip_scale_rotate"
FULL = dict(width=128, experts=10, images=10240, epochs=1, repeats=3)
QUICK = dict(width=64, experts=2, images=512, epochs=1, repeats=5)


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--experts", type=int, default=None, help="E networks (default 10)")
    p.add_argument("--images", type=int, default=None, help="training images (default 10240)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per timed run (default 1)")
    p.add_argument("--batch", type=int, default=256, help="minibatch size (default 256)")
    p.add_argument("--no-dsa", action="store_true", help="turn DSA off")
    p.add_argument(
        "--compile",
        default=None,
        metavar="BACKEND",
        help="optional: torch.compile backend for the together variants (e.g. inductor); off by default",
    )
    args = p.parse_args()
    dev = setup(args, QUICK, FULL)
    spec = spec_of(args)
    e, n = args.experts, args.images
    strategy = None if args.no_dsa else DSA
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(n, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(args.classes, (n,), generator=g).to(dev)
    auto = "vmap" if dev.type == "cuda" else "loop"
    config = {
        "stage": "experts",
        "model": f"ConvNetD{args.depth} width {args.width}",
        "params": spec.num_params,
        "input": "3x32x32 random",
        "classes": args.classes,
        "experts": e,
        "images": n,
        "epochs": args.epochs,
        "batch": args.batch,
        "dsa": strategy,
        "sgd": "lr 0.01, momentum 0, wd 0",
        "repeats": args.repeats,
        "together_is": auto,
        "compile": args.compile,
        "quick": args.quick,
    }
    info = device_info(dev, args)
    peak = device_peak(dev, args)
    header("bench_experts", info, config, peak)

    def run(vectorise: bool, seeds: list[int], xs, ys, epochs: int, compile_backend=None):
        gens = [torch.Generator().manual_seed(1000 + s) for s in seeds]
        flats = torch.stack([init_flat(spec, gg) for gg in gens]).to(dev)
        st = TrainState(flats, torch.zeros_like(flats), gens, 0)
        return train_nets(
            spec,
            st,
            xs,
            ys,
            epochs=epochs,
            lr=0.01,
            momentum=0.0,
            weight_decay=0.0,
            batch_size=args.batch,
            dsa_strategy=strategy,
            vectorise=vectorise,
            compile_backend=compile_backend,
        )

    seeds = list(range(e))
    last: dict[str, torch.Tensor] = {}

    def variant(name: str, xs, ys, epochs: int):
        if name == "reference":  # nn.Module + torch.optim.SGD, one net after another
            nets = [
                ref_train(
                    spec,
                    torch.Generator().manual_seed(1000 + s),
                    xs,
                    ys,
                    epochs=epochs,
                    lr=0.01,
                    momentum=0.0,
                    weight_decay=0.0,
                    batch=args.batch,
                    dsa=strategy,
                    lr_decay_epoch=None,
                )
                for s in seeds
            ]
            return torch.stack(
                [torch.nn.utils.parameters_to_vector(net.parameters()).detach() for net in nets]
            )
        if name == "one_at_a_time":
            sts = [run(False, [s], xs, ys, epochs) for s in seeds]
            return torch.cat([st.flats for st in sts])
        return run(name == "vmap", seeds, xs, ys, epochs, args.compile).flats

    names = ["vmap", "loop", "one_at_a_time"] + (["reference"] if args.reference else [])
    xw, yw = x[: 2 * args.batch], y[: 2 * args.batch]
    rss_only(args, {name: (lambda name=name: variant(name, xw, yw, 1)) for name in names})
    # warm-up on two batches, which is also the peak-memory run (memory is per step).
    # vmap goes last: on CPU the peak is the resident set, and the gigabytes vmap
    # frees stay in the (tuned) heap and would inflate the variants measured after it.
    memory = {}
    for name in [n for n in ["loop", "one_at_a_time", "reference", "vmap"] if n in names]:
        with PeakMemory(dev) as pm:
            variant(name, xw, yw, 1)
        memory[name] = pm
    fns = {
        name: (lambda name=name: last.__setitem__(name, variant(name, x, y, args.epochs)))
        for name in names
    }
    times = interleaved_times(fns, args.repeats, dev)
    rss = rss_in_fresh_processes(args, dev, names)

    peak = recheck_peak(dev, args, peak)
    work = e * n * args.epochs  # training images processed per run (all experts)
    tflop_img = train_flops_per_image(spec)
    results = {}
    for name in names:
        s = summarise(times[name])
        ips = work / s["best_s"]
        tf = ips * tflop_img / 1e12
        results[name] = {
            **s,
            "images_per_s": round(ips, 1),
            "images_per_s_median": round(work / s["median_s"], 1),
            "tflops": round(tf, 5),
            "fraction_of_peak": None if peak[0] is None else round(tf / peak[0], 5),
            "peak_mem_mib": mib(memory[name].peak_bytes),
            "extra_mem_mib": mib(memory[name].extra_bytes),
            "mem_method": memory[name].method,
        }
    diff = (last[auto] - last["one_at_a_time"]).abs().max().item()
    diff_vl = (last["vmap"] - last["loop"]).abs().max().item()
    base = results["one_at_a_time"]
    tog = results[auto]
    ratios = {
        "together_vs_one_at_a_time_best": round(base["best_s"] / tog["best_s"], 3),
        "together_vs_one_at_a_time_median": round(base["median_s"] / tog["median_s"], 3),
        "together_vs_one_at_a_time_cpu_time": round(base["best_cpu_s"] / tog["best_cpu_s"], 3),
        "vmap_vs_loop_best": round(results["loop"]["best_s"] / results["vmap"]["best_s"], 3),
        "vmap_vs_loop_median": round(results["loop"]["median_s"] / results["vmap"]["median_s"], 3),
    }
    print(
        f"   FLOPs   forward F = {flops_per_image(spec) / 1e6:.2f} MFLOP/image; "
        f"training step 3F - F1 = {tflop_img / 1e6:.2f} MFLOP/image"
    )
    for name in names:
        r = results[name]
        frac = of_peak(r)
        print(
            f"   {name:14s} {r['images_per_s']:10.1f} img/s (median {r['images_per_s_median']:.1f})  "
            f"{r['tflops']:.4f} TFLOP/s{frac}  peak mem {r['peak_mem_mib']} MiB "
            f"(+{r['extra_mem_mib']} MiB)"
        )
    print(
        f"   ratio   together ({auto}) / one-at-a-time: {ratios['together_vs_one_at_a_time_best']}x "
        f"best, {ratios['together_vs_one_at_a_time_median']}x median; vmap / loop: "
        f"{ratios['vmap_vs_loop_best']}x best, {ratios['vmap_vs_loop_median']}x median; "
        f"process CPU time together / one-at-a-time {ratios['together_vs_one_at_a_time_cpu_time']}x"
    )
    print(
        f"   check   max |together - one-at-a-time| = {diff:.3g}; max |vmap - loop| = {diff_vl:.3g}"
    )
    ref_ratios = vs_reference(results, rss)
    print_vs_reference(ref_ratios, rss)
    diff_ref = None
    if "reference" in last:
        diff_ref = (last[auto] - last["reference"]).abs().max().item()
        print(f"   check   max |together - reference| = {diff_ref:.3g}")
    targets = None
    if dev.type == "cuda":
        targets = {
            "together_ge_50k_img_s": tog["images_per_s"] >= 50_000,
            "together_ge_5x_one_at_a_time": ratios["together_vs_one_at_a_time_best"] >= 5,
        }
        print(f"   targets {targets}")
    emit(
        {
            "bench": "experts",
            **info,
            "config": config,
            "peak_tflops": peak[0],
            "peak_basis": peak[1],
            "flops_forward_per_image": flops_per_image(spec),
            "flops_train_per_image": tflop_img,
            "results": results,
            "together": auto,
            "ratios": ratios,
            "max_abs_diff_together_vs_one_at_a_time": diff,
            "max_abs_diff_vmap_vs_loop": diff_vl,
            "vs_reference": ref_ratios,
            "rss_fresh_processes": rss,
            "max_abs_diff_vs_reference": diff_ref,
            "gpu_targets": targets,
        },
        args.out,
    )


if __name__ == "__main__":
    main()

import json, sys, torch
from pathlib import Path
sys.path.insert(0, "/work/main")
from lsslib.artifacts import load_artifact
old, new = Path("/work/baseline/results/cpu"), Path("/work/newcpu/results/cpu")
rows = []
for run in sorted(p.name for p in (old / "runs").iterdir()):
    # tensors: old artifacts are NAME.safetensors; new code (01ad138) too (before versioned files)
    to, mo = load_artifact(old / "runs" / run / "synset", kind="synset")
    tn, mn = load_artifact(new / "runs" / run / "synset", kind="synset")
    same_t = all(torch.equal(to[k], tn["synset." + k[7:]] if k.startswith("synset.") else tn[k]) for k in to)
    extra = sorted(set(tn) - set(to))
    ao = json.load(open(old / "runs" / run / "eval" / "metrics.json"))["result"]
    an = json.load(open(new / "runs" / run / "eval" / "metrics.json"))["result"]
    rows.append((run, same_t, extra, ao["accuracies"] == an["accuracies"], ao["curve_mean"] == an["curve_mean"], mo["syn_lr"] == mn["syn_lr"], mo["storage"] == {k: v for k, v in mn["storage"].items()}))
    lo = (old / "runs" / run / "log.csv").read_text().splitlines()
    ln = (new / "runs" / run / "log.csv").read_text().splitlines()
    strip = lambda lines: [",".join(l.split(",")[:-1]) for l in lines]  # drop 'seconds'
    rows[-1] += (strip(lo) == strip(ln),)
for b in ("random_real", "full"):
    ao = json.load(open(old / "baselines" / b / "metrics.json"))["result"]
    an = json.load(open(new / "baselines" / b / "metrics.json"))["result"]
    rows.append((f"baseline {b}", None, None, ao["accuracies"] == an["accuracies"], ao["curve_mean"] == an["curve_mean"], None, None, None))
# buffers: copied from the old run (experts code untouched); expert curves table
print("| run | synset tensors | new tensors | eval accuracies | curve | syn_lr | storage | log (no seconds) |")
for r in rows: print("|", " | ".join(str(x) for x in r), "|")
for t in ("main", "rank_ablation", "schedule_ablation", "buffers", "storage"):
    a = (old.parent.parent / "book/_generated/tables" / f"{t}.csv")

"""The study's machinery: the validation split, label-robust evaluation, snapshots,
profile expansion with seeds and further evaluations, the study's tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lsslib import data as data_mod
from lsslib import evaluate, profiles, stages
from lsslib import study as study_mod
from lsslib.config import DistillConfig, EvalConfig, ModelConfig
from lsslib.data import class_balanced_indices, class_balanced_split, load_data, validation_split
from lsslib.distill import Distiller
from lsslib.results import EvalRecord, RunPaths
from lsslib.stats import minimum_detectable_effect
from lsslib.synset import load_synset

TINY = {"net_depth": 2, "net_width": 4}


# ----------------------------------------------------------------- validation split
def test_class_balanced_split_extends_the_training_draw_and_is_disjoint():
    labels = torch.arange(5).repeat_interleave(30)[torch.randperm(150)]
    first, second = class_balanced_split(labels, 12, 7, seed=3)
    assert torch.equal(first, class_balanced_indices(labels, 12, seed=3))
    assert len(second) == 5 * 7
    assert not set(first.tolist()) & set(second.tolist())
    assert torch.equal(torch.bincount(labels[second]), torch.full((5,), 7))
    with pytest.raises(ValueError, match="val_per_class=19"):
        class_balanced_split(labels, 12, 19, seed=3)


def _fake_splits(monkeypatch, per_class_train=40, per_class_test=10, classes=4):
    """Replace the dataset reader: every image carries its own id in its pixels, test ids
    are negative, so any overlap between splits is visible in the tensors."""

    def split(n_per_class, sign):
        y = torch.arange(classes).repeat_interleave(n_per_class)
        ids = torch.arange(len(y)) + 1
        x = torch.zeros(len(y), 3, 4, 4, dtype=torch.uint8)
        x[:, 0, 0, 0] = (ids % 256).to(torch.uint8)
        x[:, 0, 0, 1] = (ids // 256).to(torch.uint8)
        x[:, 1, 0, 0] = 1 if sign > 0 else 2  # which split
        return x, y, [f"c{i}" for i in range(classes)]

    splits = {"train": split(per_class_train, 1), "test": split(per_class_test, -1)}
    monkeypatch.setattr(data_mod, "load_split_uint8", lambda ds, s, root=None: splits[s])


def _ids(x: torch.Tensor) -> set[tuple[int, int]]:
    px = (x * 255).round().long()
    return {
        (int(a), int(b) + 256 * int(c))
        for a, b, c in zip(px[:, 1, 0, 0], px[:, 0, 0, 0], px[:, 0, 0, 1], strict=True)
    }


def test_validation_split_shares_no_image_with_test_or_any_training_use(monkeypatch):
    """Experts, distillation (its real initial images) and the evaluation baselines all
    draw from ``RealData.x_train``; the validation images are none of them, nor test."""
    from lsslib.config import DataConfig

    _fake_splits(monkeypatch)
    cfg = DataConfig(dataset="cifar10", train_per_class=25, normalisation="none")
    real = load_data(cfg, progress=False)
    xv, yv = validation_split(cfg, 10, real.normaliser)
    train_ids, test_ids, val_ids = _ids(real.x_train), _ids(real.x_test), _ids(xv)
    assert len(val_ids) == 40 and len(train_ids) == 100
    assert not val_ids & train_ids
    assert not val_ids & test_ids
    assert torch.equal(torch.bincount(yv), torch.full((4,), 10))
    rr, _ = evaluate.random_real_subset(real, 3, seed=5)  # a baseline's training images
    assert not _ids(rr) & val_ids
    # holding images out leaves the training subset as it was
    again = load_data(cfg, progress=False)
    assert torch.equal(again.x_train, real.x_train)
    with pytest.raises(ValueError, match="val_per_class=16"):
        validation_split(cfg, 16, real.normaliser)  # 25 + 16 > 40 per class
    with pytest.raises(ValueError, match="train_per_class set"):
        validation_split(DataConfig(dataset="cifar10", normalisation="none"), 5, real.normaliser)


# ------------------------------------------------------------ label-robust evaluation
@pytest.fixture(scope="module")
def soft_run(tmp_path_factory, lss_tiny_data, lss_tiny_buffer):
    """A tiny soft-label low-rank run of 4 iterations with a snapshot after 2."""
    out = tmp_path_factory.mktemp("soft_run")
    cfg = DistillConfig(
        ipc=1, rank=2, syn_steps=2, expert_epochs=2, max_start_epoch=2, iterations=4,
        lr_lr=1e-5, lr_y=50.0, checkpoint_every=2,
    )  # fmt: skip
    run = Distiller(
        cfg, lss_tiny_data.config, lss_tiny_buffer, lss_tiny_data.x_train, lss_tiny_data.y_train,
        out, model_cfg=ModelConfig(**TINY),
    )  # fmt: skip
    run.run(snapshot_every=2)
    return out


def _params(**eval_kw):
    from lsslib.config import DataConfig

    return {
        **DataConfig(dataset="cifar10", normalisation="none").to_dict(),
        **ModelConfig(**TINY).to_dict(),
        **EvalConfig(num_eval=1, eval_epochs=1, batch_eval=16, **eval_kw).to_dict(),
    }


def _capture(monkeypatch) -> dict:
    seen: dict = {}
    real_fn = evaluate.evaluate_images

    def spy(spec, x, y, data, cfg, **kw):
        seen["x"], seen["y"], seen["spec"], seen["val"] = x, y, spec, kw.get("val")
        return real_fn(spec, x, y, data, cfg, **kw)

    monkeypatch.setattr(evaluate, "evaluate_images", spy)
    return seen


def test_hard_label_evaluation_of_a_soft_set_trains_on_the_argmax(
    monkeypatch, tmp_path, soft_run, lss_tiny_data
):
    loaded = load_synset(RunPaths(soft_run).synset)
    x_set, y_soft = loaded.export()
    assert y_soft.ndim == 2
    # learned labels: the argmax is not just the class index of every image
    seen = _capture(monkeypatch)
    rec = stages.evaluate_set(
        _params(), "synset", tmp_path / "hard", "cpu", synset_dir=soft_run,
        real=lss_tiny_data, labels="hard",
    )  # fmt: skip
    assert seen["y"].dtype == torch.int64
    assert torch.equal(seen["y"], y_soft.argmax(1))
    assert torch.equal(seen["x"], x_set)
    assert rec.storage["label_floats"] == 0
    assert rec.storage["total_bytes"] == 4 * (rec.storage["image_floats"] + 1)
    assert rec.extra["variant"]["labels"] == "hard"
    stored = stages.evaluate_set(
        _params(), "synset", tmp_path / "stored", "cpu", synset_dir=soft_run, real=lss_tiny_data
    )
    assert seen["y"].ndim == 2 and torch.allclose(seen["y"], y_soft)
    assert stored.storage["label_floats"] == y_soft.numel()


def test_snapshot_is_the_set_after_that_many_iterations(soft_run, tmp_path, lss_tiny_data):
    snap = load_synset(RunPaths(soft_run).snapshot(2))
    final = load_synset(RunPaths(soft_run).synset)
    assert snap.meta["iterations"] == 2 and final.meta["iterations"] == 4
    assert not torch.equal(snap.export()[0], final.export()[0])
    log = (Path(soft_run) / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 4
    rec = stages.evaluate_set(
        _params(), "synset", tmp_path / "it2", "cpu", synset_dir=soft_run,
        real=lss_tiny_data, iteration=2,
    )  # fmt: skip
    assert rec.extra["iteration"] == 2
    with pytest.raises(FileNotFoundError, match="snapshot_every"):
        stages.evaluate_set(
            _params(), "synset", tmp_path / "it3", "cpu", synset_dir=soft_run,
            real=lss_tiny_data, iteration=3,
        )  # fmt: skip


def test_expert_soft_labels_on_random_real_are_counted(
    monkeypatch, tmp_path, lss_tiny_data, lss_tiny_buffer
):
    seen = _capture(monkeypatch)
    rec = stages.evaluate_set(
        _params(), "random_real", tmp_path / "rr", "cpu", real=lss_tiny_data, real_ipc=2,
        labels="expert", buffer_dir=lss_tiny_buffer.folder, real_seed=3,
    )  # fmt: skip
    y = seen["y"]
    assert y.shape == (8, 4) and torch.allclose(y.sum(1), torch.ones(8))
    x_expected, _ = evaluate.random_real_subset(lss_tiny_data, 2, seed=3)
    assert torch.equal(seen["x"], x_expected)
    assert rec.storage["label_floats"] == 8 * 4
    assert rec.storage["total_bytes"] == 4 * (8 * 3 * 8 * 8 + 8 * 4)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"labels": "soft"}, "labels='soft'"),
        ({"labels": "expert"}, "labels='expert'"),
        ({"arch": "resnet50"}, "arch='resnet50'"),
        ({"arch": "alexnet"}, "cross_arch=False"),
        ({"iteration": -1}, "iteration=-1"),
        ({"val_per_class": 0}, "val_per_class=0"),
    ],
)
def test_bad_evaluation_variants_fail_before_any_work(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        stages.evaluate_set(_params(), "synset", tmp_path / "x", "cpu", synset_dir=tmp_path, **kw)
    assert not (tmp_path / "x").exists()


def test_cross_arch_convnet_variant_trains_the_other_network(
    monkeypatch, tmp_path, soft_run, lss_tiny_data
):
    seen = _capture(monkeypatch)
    params = {**_params(), "net_depth": 1, "net_norm": "batchnorm"}
    with pytest.raises(ValueError, match="distilled for"):
        stages.evaluate_set(params, "synset", tmp_path / "a", "cpu", synset_dir=soft_run,
                            real=lss_tiny_data)  # fmt: skip
    rec = stages.evaluate_set(
        params, "synset", tmp_path / "b", "cpu", synset_dir=soft_run, real=lss_tiny_data,
        cross_arch=True,
    )  # fmt: skip
    assert seen["spec"].depth == 1 and seen["spec"].norm == "batchnorm"
    assert rec.extra["variant"]["cross_arch"] is True


# ---------------------------------------------------------------- profile expansion
def test_study_profile_expands_seeds_snapshots_and_evaluations():
    prof = profiles.expand_profile(profiles.load_profile("study"))
    seeds = prof["seeds"]
    assert len(seeds) >= 3
    for run in ("mtt", "px_hard", "px_soft", "lr_hard", "lss", "lss_strict"):
        for s in seeds:
            name = profiles.seed_name(run, s, seeds[0])
            assert prof["seed_of"][name] == (run, s)
            flat = profiles.stage_parameters(prof, "distill", name)
            assert flat["distill_seed"] == s
            # every cell of a seed differs from the others only in what the cell names
            assert flat["lr_lr"] == prof["distill"]["lr_lr"]
    # the 2 x 2 factorial: one factor at a time
    d = {
        r: profiles.stage_parameters(prof, "distill", r)
        for r in ("px_hard", "px_soft", "lr_hard", "lss")
    }
    assert d["px_hard"]["schedule"] == d["lss"]["schedule"] == "linear"
    assert (d["px_soft"]["soft_labels"], d["lr_hard"]["soft_labels"]) == (True, False)
    # random real per seed, with its own draw
    assert {
        prof["baselines"][profiles.seed_name("random_real", s, seeds[0])].get("real_seed", s)
        for s in seeds
    } == set(seeds)
    ev = prof["evals"]
    assert ev["lss_hard"]["labels"] == "hard" and ev["lss_hard"]["of"] == "lss"
    assert ev[profiles.seed_name("lss_hard", seeds[1], seeds[0])]["of"] == profiles.seed_name(
        "lss", seeds[1], seeds[0]
    )
    assert ev["random_real_expert"]["labels"] == "expert"
    assert ev["lss-it50"]["iteration"] == 50 and ev["lss-it50"]["val_per_class"] == 100
    assert prof["snapshot_every"] == 50 and prof["val_per_class"] == 100
    xa = [n for n, e in ev.items() if e["cross_arch"]]
    assert (
        "xa-lss-convnet_bn" in xa and ev["xa-lss-convnet_bn"]["params"]["net_norm"] == "batchnorm"
    )
    # all seeds share the eval seed: cells compared at one seed share their eval nets
    assert len({e["params"].get("eval_seed", 0) for e in ev.values()}) == 1


def test_paper_profiles_plan_the_study_too():
    for name in ("paper", "paper_cifar100", "paper_svhn"):
        prof = profiles.expand_profile(profiles.load_profile(name))
        assert len(prof.get("seeds") or []) >= 3, name
        assert prof.get("study", {}).get("factorial"), name
        ev = prof["evals"]
        assert any(e["labels"] == "hard" for e in ev.values()), name
        assert any(e["labels"] == "expert" for e in ev.values()), name
        archs = {e["arch"] for e in ev.values() if e["cross_arch"]}
        assert {"resnet18_bn", "vgg11_bn", "alexnet"} <= archs, name
        # the whole training split is in use (the paper's setting): no validation split,
        # so the final iteration is reported, never a test-chosen one
        assert prof["val_per_class"] is None and prof["snapshot_every"] is None, name
        seeded = {b for b, _ in prof["seed_of"].values()}
        assert set(prof["study"]["factorial"].values()) <= seeded, name


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"seeds": [0, 0]}, "seeds"),
        ({"seeds": "three"}, "seeds"),
        ({"evals": {"x": {"of": "nope"}}}, "evals.x.of"),
        ({"evals": {"x": {"of": "lss", "labels": "expert"}}}, "evals.x.labels"),
        ({"evals": {"x": {"of": "lss", "lr": 1}}}, "evals.x.lr"),
        ({"best_iteration": {"eval_every": 0, "val_per_class": 5}}, "best_iteration.eval_every"),
        ({"study": {"factorial": {"pixels_warm": "lss"}}}, "study.factorial role"),
    ],
)
def test_bad_study_entries_name_the_key(tmp_path, patch, match):
    import yaml

    prof = yaml.safe_load(profiles.profile_path("smoke_study").read_text())
    prof.update(patch)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prof))
    with pytest.raises(ValueError, match=match):
        profiles.load_profile(path)


def test_eval_record_keeps_the_variant(tmp_path):
    rec = EvalRecord(
        "synset",
        "x",
        {"mean": 0.5, "std": 0.0},
        {},
        {},
        "cpu",
        extra={"variant": {"labels": "hard"}},
    )
    rec.write(tmp_path / "m.json")
    assert EvalRecord.read(tmp_path / "m.json").extra["variant"]["labels"] == "hard"
    assert json.loads((tmp_path / "m.json").read_text())["extra"]["variant"]["labels"] == "hard"


# ------------------------------------------------------------------ the study tables
def _fake_records(root: Path, acc, profile="smoke_study", val=None) -> None:
    """Records of every run, baseline and evaluation of the profile (smoke_study by
    default), with test accuracy ``acc(base, seed, net)`` (fractions) and validation
    accuracy ``val(base, seed, net)`` (default: equal to it)."""
    val = val or acc
    prof = profiles.expand_profile(profiles.load_profile(profile))
    storage = {
        "budget_floats": 30720, "image_floats": 30720, "label_floats": 0, "lr_floats": 1,
        "strict": False, "images_per_class": 1, "used_floats": 30720, "total_bytes": 122884,
        "fits": True,
    }  # fmt: skip
    model = {"net_depth": 3, "net_width": 8, "net_norm": "instancenorm"}

    def write(path: Path, base: str, seed: int, iteration: int | None = None) -> None:
        accs = [acc(base, seed, i) for i in range(2)]
        vals = [val(base, seed, i) for i in range(2)]
        result = {"accuracies": accs, "mean": sum(accs) / 2, "std": 0.0, "val_accuracies": vals}
        extra = {"variant": {"labels": "stored"}, "iteration": iteration or 4}
        rec = EvalRecord("synset", base, result, storage, {"model": model}, "cpu", extra=extra)
        rec.write(path)

    for name in prof["runs"]:
        base, seed = prof["seed_of"][name]
        folder = root / "runs" / name
        (folder / "eval").mkdir(parents=True)
        cfg = profiles.stage_parameters(prof, "distill", name)
        meta = {
            "config": {"distill": DistillConfig.from_params(cfg).to_dict()},
            "parameterisation": cfg["parameterisation"],
            "layout": {"images_per_class": 1},
        }
        (folder / "synset.json").write_text(json.dumps(meta))
        write(folder / "eval" / "metrics.json", base, seed)
    for name in prof["baselines"]:
        base, seed = prof["seed_of"][name]
        (root / "baselines" / name).mkdir(parents=True)
        write(root / "baselines" / name / "metrics.json", base, seed)
    for name, e in prof["evals"].items():
        base, seed = prof["seed_of"][name]
        (root / "evals" / name).mkdir(parents=True)
        write(root / "evals" / name / "metrics.json", base, seed, e["iteration"])


def test_study_tables_give_the_paired_effects_of_known_records(tmp_path):
    """Low-rank adds 3 pp at hard labels and 5 pp at soft labels, exactly at both seeds;
    soft labels add 1 pp to pixels with a seed-dependent size (0 and 2 pp)."""
    base_acc = {"px_hard": 0.30, "px_soft": 0.31, "lr_hard": 0.33, "lss": 0.36, "mtt": 0.29}

    def acc(base, seed, net):
        a = base_acc.get(base.split("-it")[0], 0.2) + 0.01 * seed  # seeds shift all cells
        if base == "px_soft":
            a += 0.01 * (2 * seed - 1)  # seed 0: 0 pp over px_hard, seed 1: +2 pp
        return a + 0.002 * net  # the eval nets differ by 0.2 pp

    _fake_records(tmp_path / "res", acc)
    tables = __import__("lsslib.study", fromlist=["study_tables"]).study_tables(
        tmp_path / "res", "smoke_study", tmp_path / "out"
    )
    eff = tables["effects"].set_index("effect")
    hard = eff.loc["low-rank vs pixels, hard labels"]
    assert hard["difference (pp)"] == "+3.0" and hard["verdict"] == "holds"
    assert hard["95 % t CI (pp)"] == "[+3.0, +3.0]"
    soft = eff.loc["soft vs hard labels, pixels"]
    assert soft["difference (pp)"] == "+1.0"
    # two pairs, differences 0 and 2: mean 1, t_{0.975,1} = 12.706 * 1 -> [-11.7, +13.7]
    assert soft["95 % t CI (pp)"] == "[-11.7, +13.7]" and soft["verdict"] == "within the noise"
    cells = tables["cells"].set_index("cell")
    assert cells.loc["lss", "accuracy (%), ± over seeds"] == "36.6 ± 0.7"
    assert cells.loc["lss", "± over eval nets"] == "0.1"
    best = tables["best_iteration"].set_index("cell")
    # validation equals test here, and the final set is as good as its snapshot: ties go
    # to the later iteration, so best = final
    assert best.loc["lss", "best on validation − final (pp, 95 % CI)"].startswith("+0.0")
    assert (tmp_path / "out" / "effects.png").is_file()
    findings = (tmp_path / "out" / "findings.md").read_text()
    assert "**low-rank vs pixels, hard labels** (lr_hard − px_hard): +3.0 pp" in findings


def _atan_p(t: float) -> float:
    """Two-sided p of Student's t with 1 degree of freedom (Cauchy): 1 - 2 atan|t| / pi."""
    return 1.0 - 2.0 * math.atan(abs(t)) / math.pi


def test_effects_are_holm_corrected_with_their_mde(tmp_path):
    """Two seeds; every effect is a constant difference (p ~ 0) except three in the
    family, whose paired differences spread by 0.2 pp (se 0.1 pp): soft labels on
    pixels (+2.0, +2.2: t = 21), low-rank vs pixels with soft labels (+4.0, +3.8:
    t = 39) and the interaction (+1.0, +0.8: t = 9). All three hold uncorrected only
    for the first two; Holm multiplies the 6th, 7th and 8th smallest of the 9 family
    p-values by 4, 3 and 2, and none of them holds after it."""
    base = {"px_hard": 0.30, "lr_hard": 0.33, "lss": 0.36, "mtt": 0.29}

    def acc(name, seed, net):
        b = name.split("-it")[0]
        if b == "px_soft":
            return 0.30 + 0.01 * seed + 0.020 + 0.002 * seed
        return base.get(b, 0.2) + 0.01 * seed

    _fake_records(tmp_path / "res", acc)
    tables = study_mod.study_tables(tmp_path / "res", "smoke_study", tmp_path / "out")
    eff = tables["effects"].set_index("effect")
    primary = eff.loc["low-rank vs pixels, hard labels"]
    assert primary["tested as"] == "primary" and primary["Holm-adjusted p"] == "-"
    assert primary["verdict after Holm"] == "holds"
    assert eff.loc["LSS vs pixel MTT as published", "tested as"] == "primary"

    p_soft_lr, p_soft_px, p_inter = _atan_p(39), _atan_p(21), _atan_p(9)
    assert (p_soft_lr, p_soft_px, p_inter) == pytest.approx((0.01632, 0.03029, 0.07045), abs=5e-5)
    lr = eff.loc["low-rank vs pixels, soft labels"]
    assert lr["tested as"] == "Holm family of 9"
    assert lr["verdict"] == "holds" and lr["verdict after Holm"] == "within the noise"
    assert lr["Holm-adjusted p"] == f"{4 * p_soft_lr:.3f}" == "0.065"
    px = eff.loc["soft vs hard labels, pixels"]
    assert px["verdict"] == "holds" and px["verdict after Holm"] == "within the noise"
    assert px["Holm-adjusted p"] == f"{3 * p_soft_px:.3f}" == "0.091"
    inter = eff.loc["interaction: parameterisation effect with soft minus with hard labels"]
    assert inter["Holm-adjusted p"] == f"{2 * p_inter:.3f}" == "0.141"
    assert eff.loc["expert soft labels vs hard, random real", "Holm-adjusted p"] == "1.000"
    assert eff.loc["soft vs hard labels, low-rank", "verdict after Holm"] == "holds"
    # Bonferroni over 9 with one degree of freedom: t = tan(pi (0.5 - 0.05 / 18)) = 114.59,
    # so 2.1 +- 11.46 pp; a primary keeps its 95 % t interval
    t_bonf = math.tan(math.pi * (0.5 - 0.05 / 18))
    assert t_bonf == pytest.approx(114.59, abs=0.01)
    assert (
        px["simultaneous 95 % CI (pp)"] == f"[{2.1 - t_bonf * 0.1:+.1f}, {2.1 + t_bonf * 0.1:+.1f}]"
    )
    assert px["simultaneous 95 % CI (pp)"] == "[-9.4, +13.6]"
    assert primary["simultaneous 95 % CI (pp)"] == primary["95 % t CI (pp)"]

    # MDE: two pairs with sd 0.2 / sqrt 2 pp; at alpha 0.05 the noncentrality needed is
    # 16.33 (checked in test_stats), so 16.33 * sd / sqrt(2) = 1.63 pp
    sd = 0.2 / math.sqrt(2)
    assert px["MDE at α 0.05 (pp)"] == "1.6"
    want = minimum_detectable_effect(sd, 2, alpha=0.05 / 9)
    assert px["MDE at the α tested (pp)"] == f"{want:.1f}"
    assert float(px["MDE at the α tested (pp)"]) > 5 * 1.6  # alpha / 9 with df 1 costs a lot
    assert primary["MDE at α 0.05 (pp)"] == primary["MDE at the α tested (pp)"] == "0.0"

    findings = (tmp_path / "out" / "findings.md").read_text()
    assert "the other 9 effects form one family" in findings
    assert (
        "**soft vs hard labels, pixels** (px_soft − px_hard): +2.1 pp, 95 % CI [+0.8, +3.4], "
        "p 0.030, Holm-adjusted p 0.091: within the noise after the correction (holds "
        f"uncorrected); MDE {want:.1f} pp (1.6 pp uncorrected)."
    ) in findings
    assert "**low-rank vs pixels, hard labels** (lr_hard − px_hard): +3.0 pp" in findings
    assert "(primary): holds." in findings
    csv = (tmp_path / "out" / "effects.csv").read_text()
    assert "verdict after Holm" in csv and "_p" not in csv.splitlines()[0].split(",")


def test_ddranking_metrics_of_known_records(tmp_path):
    """Real-hard accuracy 0.42 (two experts, 0.40 and 0.44 at the end); every cell gains
    1 pp per seed, so HLR falls by 1 pp per seed while IOR stays constant."""
    base = {"px_hard": 0.30, "lr_hard": 0.33, "lss": 0.36, "mtt": 0.29}

    def acc(name, seed, net):
        return base.get(name.split("-it")[0], 0.2) + 0.01 * seed

    _fake_records(tmp_path / "res", acc)
    rec = study_mod.StudyRecords(tmp_path / "res", "smoke_study")
    no_buffer = study_mod.ddranking_table(rec).set_index("cell")
    assert no_buffer.loc["lss", "IOR (pp), ± over seeds"] == "16.0 ± 0.0"
    assert no_buffer.loc["lss", "LRS (%), ± over seeds"] == "n/a"

    (tmp_path / "res" / "buffers").mkdir()
    experts = {"0": {"test": [0.1, 0.40]}, "1": {"test": [0.1, 0.44]}}
    (tmp_path / "res" / "buffers" / "buffer.json").write_text(json.dumps({"accuracy": experts}))
    dd = study_mod.ddranking_table(rec).set_index("cell")
    # smoke_study evaluates only lss on its argmax: px_soft and lss_strict have no syn-hard
    assert set(dd.index) == {"px_hard", "lr_hard", "lss", "mtt"}
    lss = dd.loc["lss"]
    assert (lss["syn-hard"], lss["random real, same labels"]) == ("lss_hard", "random_real_expert")
    assert lss["real-hard (%)"] == "42.0"
    # HLR per seed: 0.42 - 0.20 = 0.22, 0.42 - 0.21 = 0.21 -> 21.5 ± 0.7 pp
    assert lss["HLR (pp), ± over seeds"] == "21.5 ± 0.7"
    # alpha = 0.5 * 0.16 - 0.5 * HLR = -0.03, -0.025
    lrs = [(math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)) for a in (-0.03, -0.025)]
    assert lrs == pytest.approx([0.256368, 0.258437], abs=1e-6)
    assert lss["LRS per seed (%)"] == "25.6, 25.8"
    assert lss["LRS (%), ± over seeds"] == "25.7 ± 0.1"
    px = dd.loc["px_hard"]
    assert (px["syn-hard"], px["random real, same labels"]) == ("px_hard", "random_real")
    assert px["IOR (pp), ± over seeds"] == "10.0 ± 0.0"
    assert px["HLR (pp), ± over seeds"] == "11.5 ± 0.7"


def test_starting_set_and_common_rate_tables_of_known_records(tmp_path):
    """Initialised sets 10 (pixels) and 8 (low-rank) pp below their distilled ones; at
    the common rates, test prefers 0.003 but validation 0.01: the rate is chosen on
    validation, never on test."""
    prof = yaml.safe_load(profiles.profile_path("smoke_study").read_text())
    path = tmp_path / "controls.yaml"
    prof.update(init_controls=True, common_lr={"grid": [0.003, 0.01]})
    path.write_text(yaml.safe_dump(prof))
    final = {"px_hard": 0.30, "px_soft": 0.31, "lr_hard": 0.33, "lss": 0.36, "mtt": 0.29}
    init = {"px_hard": 0.20, "lr_hard": 0.25}

    def cell(base):
        return base.split("-it")[0].split("-lr")[0]

    def acc(base, seed, net):
        if base.endswith("-it0"):
            return init.get(cell(base), 0.15) + 0.01 * seed
        if base.endswith("-lr0.003"):
            return 0.50 + 0.01 * seed  # the best on test ...
        return final.get(cell(base), 0.2) + 0.01 * seed

    def val(base, seed, net):
        return 0.10 if base.endswith("-lr0.003") else acc(base, seed, net)  # ... not on val

    _fake_records(tmp_path / "res", acc, profile=path, val=val)
    tables = study_mod.study_tables(tmp_path / "res", path, tmp_path / "out")
    init_t = tables["starting_set"].set_index("cell")
    assert init_t.loc["px_hard", "distillation gain (pp, 95 % CI)"].startswith("+10.0")
    assert init_t.loc["lr_hard", "distillation gain (pp, 95 % CI)"].startswith("+8.0")
    at_init = tables["starting_set_contrasts"].set_index("cells")
    assert at_init.loc["lr_hard-it0 − px_hard-it0", "difference (pp, 95 % CI)"].startswith("+5.0")
    common = tables["common_lr"].set_index("cell")
    assert "at the common rate 0.01 (%)" in common.columns
    assert common.loc["lr_hard", "common − learned (pp, 95 % CI)"].startswith("+0.0")
    assert (tmp_path / "out" / "common_lr_contrasts.md").is_file()
    # the best-iteration table does not take the starting set for a candidate
    assert "0" not in set(tables["best_iteration_seeds"]["chosen on validation"].astype(str))


def test_the_choice_reads_only_validation_accuracies():
    assert study_mod.choose_on_validation({"a": [0.2, 0.4], "b": [0.35, 0.35], "c": [0.3]}) == "b"
    assert study_mod.choose_on_validation({"x": [0.3], "y": [0.3]}) == "x"  # ties: first
    with pytest.raises(ValueError, match=r"val_accuracies\['y'\]=\[nan\]"):
        study_mod.choose_on_validation({"x": [0.3], "y": [math.nan]})


def test_tuning_is_chosen_on_validation_and_primary_contrasts_come_from_the_profile(tmp_path):
    """The grid's best on test (lr_img 30) is not its best on validation (lr_img 100)."""
    prof = yaml.safe_load(profiles.profile_path("smoke_study").read_text())
    grid = {"lr_img": [30, 100]}
    prof.update(tuning={"grid": grid, "runs": ["px_hard"], "val_per_class": 5})
    prof["study"]["primary"] = ["low-rank vs pixels, hard labels"]
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(prof))

    def acc(base, seed, net):
        return 0.40 if base == "px_hard-tune0" else 0.30

    def val(base, seed, net):
        return 0.20 if base == "px_hard-tune0" else 0.30

    _fake_records(tmp_path / "res", acc, profile=path, val=val)
    tables = study_mod.study_tables(tmp_path / "res", path, tmp_path / "out")
    t = tables["tuning"].set_index("lr_img")
    assert t.loc[100, "chosen on validation"] == "yes" and t.loc[30, "chosen on validation"] == ""
    assert t.loc[30, "test (%), not used"] == "40.0"
    eff = tables["effects"].set_index("effect")
    assert eff.loc["LSS vs pixel MTT as published", "tested as"] != "primary"
    prof["study"]["primary"] = ["no such effect"]
    path.write_text(yaml.safe_dump(prof))
    with pytest.raises(ValueError, match=r"study.primary entry 'no such effect'"):
        study_mod.study_tables(tmp_path / "res", path, tmp_path / "out2")

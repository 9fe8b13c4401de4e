"""Synthetic sets: storage accounting (book/choices.md §2), SVD initialisation (2.3), export."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lsslib import parameterisations
from lsslib.config import DATASETS
from lsslib.parameterisations import Budget
from lsslib.parameterisations.lowrank import LowRankSynSet, svd_factors
from lsslib.synset import Labels, build_synset, layout, synset_from_tensors

# The contract rows: one per parameterisation, the shapes of its stored tensors
# (book/choices.md §1; H = W) recomputed here independently of the unit, and whether it
# has a single subspace whatever ``subspaces`` says. A new parameterisation adds
# its row; test_every_parameterisation_has_a_contract_row fails until it does.
ROWS: dict[str, dict] = {
    "pixels": dict(shapes=lambda k, s, j, c, h, r: [(k * j, c, h, h)], single_subspace=True),
    "lowrank": dict(
        shapes=lambda k, s, j, c, h, r: [(k, s, c, h, r), (k, s, j, c, r, h)],
        single_subspace=False,
    ),
    "lowrank_global": dict(
        shapes=lambda k, s, j, c, h, r: [(1, s, c, h, r), (k, s, j, c, r, h)],
        single_subspace=False,
    ),
    "two_sided": dict(
        shapes=lambda k, s, j, c, h, r: [(k, s, c, h, r), (k, s, j, c, r, r), (k, s, c, r, h)],
        single_subspace=False,
    ),
    # FReD (Shin et al. 2023): j images of C x m DCT coefficients, m = H*W/16 by default
    "fred": dict(shapes=lambda k, s, j, c, h, r: [(k, j, c, h * h // 16)], single_subspace=True),
}
PARAMS = parameterisations.names()


def test_every_parameterisation_has_a_contract_row():
    assert set(ROWS) == set(PARAMS), "add a row to ROWS for each registered parameterisation"


def factor_shapes(kind: str, *, k: int, s: int, j: int, c: int, h: int, r: int) -> list[tuple]:
    """Shapes of the stored tensors of each parameterisation (book/choices.md §1), H = W."""
    return ROWS[kind]["shapes"](k, s, j, c, h, r)


def build(kind, lay, *, rank, x_real, y_real, num_classes, **kw):
    """build_synset with the budget of the layout's shape."""
    c, h = x_real.shape[1], x_real.shape[2]
    budget = Budget(1, rank, lay.subspaces, c, h, num_classes, False, False)
    return build_synset(kind, lay, budget, x_real=x_real, y_real=y_real, **kw)


def floats_of(kind: str, *, k: int, s: int, j: int, c: int, h: int, r: int) -> int:
    return sum(math.prod(sh) for sh in factor_shapes(kind, k=k, s=s, j=j, c=c, h=h, r=r))


def test_layout_arithmetic_on_the_full_grid():
    """Every (dataset, ipc, r, S, parameterisation, soft, strict): floats recomputed from the
    tensor shapes fit the budget, and J is the largest count that does."""
    checked = 0
    grid = itertools.product(
        DATASETS, (1, 10, 50), range(1, 17), (1, 2, 3), PARAMS, (False, True), (False, True)
    )
    for ds, ipc, r, s_req, kind, soft, strict in grid:
        c, h, k = DATASETS[ds]
        lay = layout(
            kind,
            ipc=ipc,
            rank=r,
            subspaces=s_req,
            channels=c,
            side=h,
            num_classes=k,
            soft_labels=soft,
            strict_budget=strict,
        )
        s = 1 if ROWS[kind]["single_subspace"] else s_req
        budget = ipc * k * c * h * h
        assert lay.budget_floats == budget
        assert lay.subspaces == s
        assert lay.images_per_class == s * lay.bases
        if lay.bases < 1:
            continue
        img = floats_of(kind, k=k, s=s, j=lay.bases, c=c, h=h, r=r)
        labels = k * (lay.images_per_class * k) if soft else 0
        assert lay.image_floats == img
        assert lay.label_floats == labels
        counted = img + (labels if strict else 0)
        assert counted <= budget, (ds, ipc, r, s, kind, soft, strict)
        # maximality: one more basis tensor (per class and subspace) breaks the budget
        more = floats_of(kind, k=k, s=s, j=lay.bases + 1, c=c, h=h, r=r)
        more_labels = k * (s * (lay.bases + 1) * k) if (soft and strict) else 0
        assert more + more_labels > budget, (ds, ipc, r, s, kind, soft, strict)
        checked += 1
    assert checked > 5000


@pytest.mark.parametrize(
    ("rank", "expected"),
    [(2, (15, 159, 799)), (4, (7, 79, 399)), (8, (3, 39, 199)), (16, (1, 19, 99))],
)
@pytest.mark.parametrize("soft", [False, True])
def test_images_per_class_match_paper_table(rank, expected, soft):
    for ipc, n in zip((1, 10, 50), expected, strict=True):
        lay = layout(
            "lowrank",
            ipc=ipc,
            rank=rank,
            subspaces=1,
            channels=3,
            side=32,
            num_classes=10,
            soft_labels=soft,
            strict_budget=False,
        )
        assert lay.images_per_class == n, (rank, ipc)


def test_two_sided_48_per_class_at_ipc1_rank4():
    lay = layout(
        "two_sided",
        ipc=1,
        rank=4,
        subspaces=1,
        channels=3,
        side=32,
        num_classes=10,
        soft_labels=False,
        strict_budget=False,
    )
    assert lay.images_per_class == 48


@pytest.mark.parametrize(("dataset", "share"), [("cifar10", 0.023), ("cifar100", 0.23)])
def test_soft_label_share_of_budget_and_strict_mode(dataset, share):
    """book/choices.md §2: soft labels cost 2.3 % (CIFAR-10) / 23 % (CIFAR-100) at IPC 1, r = 4;
    strict mode counts them and therefore stores fewer images."""
    c, h, k = DATASETS[dataset]
    kw = dict(ipc=1, rank=4, subspaces=1, channels=c, side=h, num_classes=k, soft_labels=True)
    loose = layout("lowrank", strict_budget=False, **kw)
    strict = layout("lowrank", strict_budget=True, **kw)
    # the paper rounds to two significant digits
    assert loose.label_floats / loose.budget_floats == pytest.approx(share, rel=0.03)
    assert strict.images_per_class < loose.images_per_class
    assert loose.image_floats + loose.label_floats > loose.budget_floats  # would not fit
    assert strict.image_floats + strict.label_floats <= strict.budget_floats


def _random_labels(n: int, k: int, soft: bool) -> Labels:
    idx = torch.arange(k).repeat_interleave(n // k)
    logits = torch.randn(n, k) if soft else None
    return Labels(idx, k, logits)


@pytest.mark.parametrize("kind", PARAMS)
@pytest.mark.parametrize(
    ("dataset", "ipc", "rank", "subspaces"),
    [("cifar10", 1, 4, 1), ("cifar10", 1, 8, 2), ("svhn", 10, 16, 3), ("cifar100", 1, 16, 1)],
)
@pytest.mark.parametrize("strict", [False, True])
def test_built_synset_storage_fits_budget(kind, dataset, ipc, rank, subspaces, strict):
    """Floats actually held by a built set (and its soft labels when strict) <= budget."""
    c, h, k = DATASETS[dataset]
    s = 1 if ROWS[kind]["single_subspace"] else subspaces
    lay = layout(
        kind,
        ipc=ipc,
        rank=rank,
        subspaces=s,
        channels=c,
        side=h,
        num_classes=k,
        soft_labels=True,
        strict_budget=strict,
    )
    if lay.images_per_class < 1:
        with pytest.raises(ValueError, match="no image per class"):
            build(
                kind,
                lay,
                rank=rank,
                x_real=torch.randn(k, c, h, h),
                y_real=torch.arange(k),
                num_classes=k,
            )
        return
    g = torch.Generator().manual_seed(0)
    x_real = torch.randn(k * 2, c, h, h, generator=g)
    y_real = torch.arange(k).repeat(2)
    syn = build(kind, lay, rank=rank, x_real=x_real, y_real=y_real, num_classes=k, generator=g)
    n = k * lay.images_per_class
    held = sum(p.numel() for p in syn.parameters())
    assert held == lay.image_floats
    assert syn.images().shape == (n, c, h, h)
    assert torch.equal(syn.class_index(), torch.arange(k).repeat_interleave(lay.images_per_class))
    # soft labels (K floats per image) always; hard labels (free) on the non-strict layout
    for soft in (True,) if strict else (True, False):
        labels = _random_labels(n, k, soft)
        st = syn.storage(labels, strict)
        assert st.image_floats == held
        assert st.label_floats == (n * k if soft else 0)
        assert st.used_floats == held + (st.label_floats if strict else 0)
        assert st.used_floats <= st.budget_floats == ipc * k * c * h * h
        assert st.fits
        assert st.total_bytes == 4 * (held + st.label_floats + 1)


def smooth_images(j: int, c: int, h: int, seed: int = 0) -> torch.Tensor:
    """Natural-image-like tensors: integrated noise (strongly correlated neighbours)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(j, c, h, h, generator=g).cumsum(-1).cumsum(-2) / h
    return x + 0.05 * torch.randn(j, c, h, h, generator=g)


def test_svd_factors_error_decreases_with_rank_and_is_eckart_young_optimal():
    j, c, h = 3, 2, 12
    x = smooth_images(j, c, h)
    # X = [x_1 ... x_J] per channel, an H x (J*W) matrix
    wide = torch.cat(list(x.double().unbind(0)), dim=-1)  # [C, H, J*W]
    assert wide.shape == (c, h, j * h)
    sv = torch.linalg.svdvals(wide)  # [C, H]
    errors = []
    for r in range(1, h + 1):
        u, v, recon = svd_factors(x, r)
        assert u.shape == (c, h, r) and v.shape == (j, c, r, h) and recon.shape == x.shape
        torch.testing.assert_close(recon, u.unsqueeze(0) @ v)
        err = float((recon.double() - x.double()).pow(2).sum())
        optimum = float(sv[:, r:].pow(2).sum())
        assert err == pytest.approx(optimum, rel=1e-3, abs=1e-6 * float(sv.pow(2).sum()))
        # U = U_r sqrt(S_r): columns orthogonal with squared norms S_r
        gram = u.double().transpose(-1, -2) @ u.double()
        torch.testing.assert_close(gram, torch.diag_embed(sv[:, :r]), rtol=1e-4, atol=1e-4)
        errors.append(err)
    tol = 1e-6 * errors[0]
    assert all(b <= a + tol for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 1e-3 * errors[0]  # full rank reconstructs
    assert errors[3] < errors[0]


def test_lowrank_images_are_mapper_times_basis():
    g = torch.Generator().manual_seed(1)
    k, s, j, c, h, r = 2, 2, 3, 3, 8, 2
    lay = layout(
        "lowrank",
        ipc=4,
        rank=r,
        subspaces=s,
        channels=c,
        side=h,
        num_classes=k,
        soft_labels=False,
        strict_budget=False,
    )
    u = torch.randn(k, s, c, h, r, generator=g)
    v = torch.randn(k, s, j, c, r, h, generator=g)
    syn = LowRankSynSet(lay, u, v, k)
    x = syn.images().view(k, s, j, c, h, h)
    for kk, ss, jj, cc in itertools.product(range(k), range(s), range(j), range(c)):
        torch.testing.assert_close(x[kk, ss, jj, cc], u[kk, ss, cc] @ v[kk, ss, jj, cc])
    # sampling: with a generator, each class pairs its bases with a permutation of mappers
    xs = syn.images(torch.Generator().manual_seed(5)).view(k, s, j, c, h, h)
    for kk, ss in itertools.product(range(k), range(s)):
        candidates = [u[kk, m].unsqueeze(0) @ v[kk, ss] for m in range(s)]
        assert any(torch.allclose(xs[kk, ss], cand) for cand in candidates)


def test_export_of_sampled_subspaces_holds_every_pairing():
    """S > 1: export gives S*S*J images per class, every (mapper, basis) pairing once,
    each pointing at its basis' stored label."""
    g = torch.Generator().manual_seed(2)
    k, s, j, c, h, r = 2, 2, 2, 1, 8, 2
    lay = layout(
        "lowrank",
        ipc=2,
        rank=r,
        subspaces=s,
        channels=c,
        side=h,
        num_classes=k,
        soft_labels=False,
        strict_budget=False,
    )
    u = torch.randn(k, s, c, h, r, generator=g)
    v = torch.randn(k, s, lay.bases, c, r, h, generator=g)
    j = lay.bases
    syn = LowRankSynSet(lay, u, v, k)
    x, idx = syn.export()
    assert x.shape == (k * s * s * j, c, h, h)
    assert idx.shape == (k * s * s * j,)
    expected = {}
    for kk, sb, sm, jj in itertools.product(range(k), range(s), range(s), range(j)):
        expected[(kk, sb, sm, jj)] = u[kk, sm] @ v[kk, sb, jj]
    # every pairing appears exactly once, with the label of its basis (k, sb, jj)
    found = set()
    for i in range(x.shape[0]):
        hits = [key for key, img in expected.items() if torch.allclose(x[i], img)]
        assert len(hits) == 1, i
        kk, sb, _sm, jj = hits[0]
        assert int(idx[i]) == (kk * s + sb) * j + jj
        found.add(hits[0])
    assert found == set(expected)


@pytest.mark.parametrize("kind", PARAMS)
def test_synset_from_tensors_round_trip(kind):
    k, c, h = 3, 3, 8
    lay = layout(
        kind,
        ipc=2,
        rank=2,
        subspaces=1,
        channels=c,
        side=h,
        num_classes=k,
        soft_labels=False,
        strict_budget=False,
    )
    x_real = torch.randn(12, c, h, h, generator=torch.Generator().manual_seed(0))
    syn = build(kind, lay, rank=2, x_real=x_real, y_real=torch.arange(3).repeat(4), num_classes=k)
    back = synset_from_tensors(syn.kind, lay, syn.tensors(), k)
    assert back.kind == syn.kind
    assert torch.equal(back.images(), syn.images())
    with pytest.raises(ValueError, match="lack"):
        synset_from_tensors(kind, lay, {}, k)


def test_real_init_prefers_images_the_expert_classifies_correctly():
    """DATM's rule: pick real images the last expert gets right before the others."""
    from lsslib.models import ConvNetSpec, convnet_forward, init_flat

    spec = ConvNetSpec(3, 8, 2, depth=1, width=4)
    expert = init_flat(spec, torch.Generator().manual_seed(0))
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    # shift the last bias so that the expert predicts each class for half of the images
    logits = convnet_forward(spec, expert, x)
    expert[-1] -= (logits[:, 1] - logits[:, 0]).median() - 1e-4
    pred = convnet_forward(spec, expert, x).argmax(1)
    y = torch.arange(2).repeat(20)
    n_ok = [int(((pred == k) & (y == k)).sum()) for k in range(2)]
    assert all(n >= 2 for n in n_ok)  # the draw must leave correct images in both classes
    lay = layout(
        "pixels",
        ipc=2,
        rank=1,
        subspaces=1,
        channels=3,
        side=8,
        num_classes=2,
        soft_labels=False,
        strict_budget=False,
    )
    syn = build("pixels", lay, rank=1, x_real=x, y_real=y, num_classes=2, expert=expert, spec=spec)
    imgs = syn.images().detach()
    assert torch.equal(convnet_forward(spec, expert, imgs).argmax(1), syn.class_index())


def _pick_real_classify_all(x, y, expert, spec, k, n, gen):
    """The rule classified over every image of the class (the code before the early stop)."""
    from lsslib.models import convnet_forward

    xs = x[y == k]
    xs = xs[torch.randperm(len(xs), generator=gen)]
    ok = convnet_forward(spec, expert, xs).argmax(1) == k
    xs = torch.cat([xs[ok], xs[~ok]])
    if len(xs) < n:
        xs = xs.repeat(math.ceil(n / max(len(xs), 1)), 1, 1, 1)
    return xs[:n]


@pytest.mark.parametrize("n", [1, 3, 150, 400])
def test_pick_real_stops_early_and_equals_classifying_everything(monkeypatch, n):
    """Cheap initialisation: same picks (and generator state) as classifying every
    image of the class, but the expert sees only the chunks it needs."""
    import lsslib.synset as synset_mod
    from lsslib.models import ConvNetSpec, convnet_forward, init_flat

    spec = ConvNetSpec(3, 8, 2, depth=1, width=4)
    expert = init_flat(spec, torch.Generator().manual_seed(0))
    x = torch.randn(600, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    logits = convnet_forward(spec, expert, x)
    expert[-1] -= (logits[:, 1] - logits[:, 0]).median() - 1e-4  # both classes ~half right
    y = torch.arange(2).repeat(300)
    seen = []

    def counting_forward(s, w, xb):
        seen.append(len(xb))
        return convnet_forward(s, w, xb)

    monkeypatch.setattr(synset_mod, "convnet_forward", counting_forward)
    for k in range(2):
        g_new, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        seen.clear()
        got = synset_mod._pick_real(x, y, expert, spec, k, n, g_new)
        ref = _pick_real_classify_all(x, y, expert, spec, k, n, g_ref)
        assert torch.equal(got, ref)
        assert torch.equal(g_new.get_state(), g_ref.get_state())  # same draws consumed
        n_ok = int((convnet_forward(spec, expert, x[y == k]).argmax(1) == k).sum())
        assert seen[0] == min(max(8, 2 * n), 300)  # chunks: max(8, 2n), then doubling
        assert all(b == min(2 * a, 4096) for a, b in zip(seen, seen[1:-1], strict=False))
        if n == 1:  # one correct image is found in the first chunk of 8
            assert seen == [8]
        if n > n_ok:  # not enough correct images: every image was classified
            assert sum(seen) == 300
    # deterministic from the generator, and another seed picks other images
    a = synset_mod._pick_real(x, y, expert, spec, 0, 3, torch.Generator().manual_seed(7))
    b = synset_mod._pick_real(x, y, expert, spec, 0, 3, torch.Generator().manual_seed(7))
    c = synset_mod._pick_real(x, y, expert, spec, 0, 3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)

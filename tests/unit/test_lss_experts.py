"""Expert buffers: layout, seeding, grouping independence, reuse, lazy loading."""

from __future__ import annotations

import pytest
import torch

from lsslib.config import BufferConfig, ModelConfig
from lsslib.experts import ExpertBuffer, buffer_bytes, train_experts
from lsslib.models import init_flat

MODEL = ModelConfig(net_depth=2, net_width=4)


def test_buffer_contents(lss_tiny_buffer):
    buf: ExpertBuffer = lss_tiny_buffer
    cfg = BufferConfig(**buf.meta["config"]["buffers"])
    assert (buf.num_experts, buf.epochs) == (2, 4)
    assert buf.spec.num_params == buf.meta["num_params"]
    for i in range(2):
        traj = buf.trajectory(i)
        assert traj.shape == (5, buf.spec.num_params) and traj.dtype == torch.float32
        # epoch 0 is the initialisation drawn from generator expert_seed + i
        init = init_flat(buf.spec, torch.Generator().manual_seed(cfg.expert_seed + i))
        assert torch.equal(traj[0], init)
        assert all(not torch.equal(traj[t], traj[t + 1]) for t in range(4))
    assert not torch.equal(buf.trajectory(0)[-1], buf.trajectory(1)[-1])
    assert torch.equal(buf.final_params(), torch.stack([buf.trajectory(i)[-1] for i in range(2)]))
    curves = buf.accuracy_curves()
    assert len(curves["test"]) == 2 and all(len(c) == 5 for c in curves["test"])
    assert buf.disk_bytes() >= buffer_bytes(buf.spec, cfg) == 2 * 5 * buf.spec.num_params * 4
    with pytest.raises(ValueError, match=r"expert index 2.*0\.\.1"):
        buf.trajectory(2)


def test_trajectories_do_not_depend_on_grouping(lss_tiny_data, lss_tiny_buffer, tmp_path):
    """Expert i draws everything from its own generator: one per group gives the same
    trajectories as two per group."""
    built = lss_tiny_buffer.meta["config"]["buffers"]
    alone = train_experts(
        lss_tiny_data,
        MODEL,
        BufferConfig(**{**built, "experts_per_group": 1}),
        tmp_path / "alone",
        log=lambda _l: None,
    )
    for i in range(2):
        torch.testing.assert_close(
            alone.trajectory(i), lss_tiny_buffer.trajectory(i), rtol=1e-5, atol=1e-6
        )


def test_complete_buffer_is_reused_not_retrained(lss_tiny_data, tmp_path, monkeypatch):
    cfg = BufferConfig(num_experts=1, train_epochs=1, batch_train=24)
    lines: list[str] = []
    first = train_experts(lss_tiny_data, MODEL, cfg, tmp_path, log=lines.append)
    assert any("buffer estimate" in line for line in lines)

    import lsslib.experts as ex

    def boom(*_a, **_k):
        raise AssertionError("trained again")

    monkeypatch.setattr(ex, "train_nets", boom)
    lines.clear()
    again = train_experts(lss_tiny_data, MODEL, cfg, tmp_path, log=lines.append)
    assert any("reusing" in line for line in lines)
    assert torch.equal(again.trajectory(0), first.trajectory(0))


def test_missing_index_raises_artifact_error(tmp_path):
    from lsslib.artifacts import ArtifactError

    with pytest.raises(ArtifactError, match=r"buffer\.json.*Rebuild it"):
        ExpertBuffer(tmp_path)

"""A profile may extend another and state only what differs."""

from __future__ import annotations

import pytest
import yaml

from lsslib import profiles


def test_merge_is_key_by_key_and_null_removes():
    parent = {"distill": {"ipc": 1, "lr_lr": 1e-5}, "runs": {"a": {"rank": 2}, "b": {}}, "x": [1]}
    child = {"distill": {"ipc": 10}, "runs": {"b": None, "c": {"rank": 4}}, "x": [2, 3]}
    out = profiles.merge_profiles(parent, child)
    assert out == {
        "distill": {"ipc": 10, "lr_lr": 1e-5},
        "runs": {"a": {"rank": 2}, "c": {"rank": 4}},
        "x": [2, 3],
    }
    assert parent["runs"] == {"a": {"rank": 2}, "b": {}}  # inputs unchanged


def test_a_child_profile_is_validated_as_merged(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text(yaml.safe_dump({"extends": "smoke", "distill": {"iterations": 6}}))
    prof = profiles.load_profile(child)
    smoke = profiles.load_profile("smoke")
    assert prof["name"] == "mine" and prof["distill"]["iterations"] == 6
    assert prof["runs"] == smoke["runs"] and prof["model"] == smoke["model"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extends": "smoke", "distill": {"ipc": 0}}))
    with pytest.raises(ValueError, match=r"ipc"):
        profiles.load_profile(bad)


def test_an_extends_cycle_and_a_missing_parent_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match=r"extends=.*a chain of profiles without a cycle"):
        profiles.load_profile(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nosuch\n")
    with pytest.raises(ValueError, match=r"profile='nosuch'"):
        profiles.load_profile(tmp_path / "c.yaml")


def test_the_study_profiles_state_only_their_differences():
    for child, parent in (("study", "cpu"), ("smoke_study", "smoke")):
        text = profiles.profile_path(child).read_text()
        assert yaml.safe_load(text)["extends"] == parent
        merged, base = profiles.load_profile(child), profiles.load_profile(parent)
        assert merged["data"] == base["data"] and merged["buffers"] == base["buffers"]
        assert "ablations" not in merged and "lss_strict" in merged["runs"]

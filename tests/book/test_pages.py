"""Static checks of the book's sources (no build needed).

* Every stage page links to its notebook in Colab, and the link uses the
  repository address written once in _config.yml.
* Every path under _generated/ that a page uses is one the placeholder writer
  knows, so the contract with the summary stage has one list.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from make_placeholder_generated import (
    FIGURES,
    NOTEBOOKS,
    STUDY_FIGURES,
    STUDY_SHORT,
    STUDY_TABLES,
    TABLES,
)

REPO = Path(__file__).resolve().parents[2]
BOOK = REPO / "book"
STAGES = {
    "buffers.md": "01_buffers",
    "distill.md": "02_distill",
    "evaluate.md": "03_evaluate",
    "ablation_rank.md": "04_ablation_rank",
    "ablation_schedule.md": "05_ablation_schedule",
}
COLAB = re.compile(
    r"https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/([^/]+)/notebooks/([\w.]+)"
)


def _config() -> dict:
    return yaml.safe_load((REPO / "_config.yml").read_text())


def test_colab_links_follow_the_repository_url():
    cfg = _config()
    repo = cfg["repository"]["url"].removeprefix("https://github.com/").rstrip("/")
    branch = cfg["repository"]["branch"]
    for page, stem in STAGES.items():
        links = COLAB.findall((BOOK / page).read_text())
        assert (repo, branch, f"{stem}.ipynb") in links, f"{page}: no Colab link to {stem}.ipynb"
    for page in BOOK.glob("*.md"):
        for link_repo, link_branch, name in COLAB.findall(page.read_text()):
            assert (link_repo, link_branch) == (repo, branch), (
                f"{page.name}: {link_repo}@{link_branch}"
            )
            assert name.removesuffix(".ipynb") in NOTEBOOKS, f"{page.name}: unknown notebook {name}"
            if (REPO / "notebooks").is_dir() and any((REPO / "notebooks").glob("*.ipynb")):
                assert (REPO / "notebooks" / name).is_file(), (
                    f"{page.name}: notebooks/{name} missing"
                )


def test_generated_paths_are_in_the_contract():
    known = {"_generated/run_info.md", "_generated/pipeline_time.txt"}
    known |= {f"_generated/figures/{f}.png" for f in FIGURES}
    known |= {f"_generated/tables/{t}.{ext}" for t in TABLES for ext in ("md", "csv")}
    # the study page's inputs, made from records/study/ by book/assemble.py
    known |= {f"_generated/study/{t}.{ext}" for t in STUDY_TABLES for ext in ("md", "csv")}
    known |= {f"_generated/study/{f}.png" for f in STUDY_FIGURES}
    known |= {f"_generated/study/{t}.md" for t in STUDY_SHORT}
    known |= {f"_generated/study/{f}" for f in ("findings.md", "study_info.md")}
    used = set()
    for page in BOOK.glob("*.md"):
        used |= set(re.findall(r"_generated/[\w/]+\.\w+", page.read_text()))
    assert used, "no page uses _generated/"
    assert used <= known, f"pages use files the contract does not list: {sorted(used - known)}"
    toc = (BOOK / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        assert f"_generated/notebooks/{nb}" in toc, f"_toc.yml lacks the appendix notebook {nb}"

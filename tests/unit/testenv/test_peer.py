"""The peer's build recipe: where its source is, and a cache key that follows its sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflowplane.testenv import peer
from workflowplane.testenv.gobuild import BuildError


def _tree(root: Path) -> Path:
    (root / "cmd" / "cluster-agent").mkdir(parents=True)
    (root / "go.mod").write_text("module github.com/openchoreo/openchoreo\n")
    (root / "go.sum").write_text("")
    (root / "cmd" / "cluster-agent" / "main.go").write_text("package main\n")
    (root / "README.md").write_text("docs do not change the binaries\n")
    return root


def test_source_dir_is_beside_the_repository_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(peer.PEER_SRC_ENV, raising=False)
    repo = Path(__file__).resolve().parents[3]
    assert peer.source_dir() == repo.parent / "shared" / "peers" / "openchoreo"
    monkeypatch.setenv(peer.PEER_SRC_ENV, str(tmp_path))
    assert peer.source_dir() == tmp_path


def test_hash_follows_go_sources_not_docs(tmp_path: Path) -> None:
    source = _tree(tmp_path)
    first = peer.source_hash(source)
    (source / "README.md").write_text("edited\n")
    assert peer.source_hash(source) == first
    (source / "cmd" / "cluster-agent" / "main.go").write_text("package main // edited\n")
    assert peer.source_hash(source) != first


def test_recipe_is_cached_by_hash_and_builds_both_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOWPLANE_CACHE", str(tmp_path / "cache"))
    source = _tree(tmp_path / "src")
    recipe = peer.recipe(source)
    assert recipe.target == tmp_path / "cache" / "peers" / f"openchoreo-{peer.source_hash(source)}"
    assert recipe.outputs == ("cluster-agent", "cluster-gateway")
    titles = [step.title for step in recipe.steps("go")]
    assert titles == ["build cluster-agent", "build cluster-gateway"]


def test_prepare_copies_the_source_writable(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    (source / "go.mod").chmod(0o444)
    work = tmp_path / "work"
    work.mkdir()
    peer.recipe(source).prepare(work)
    copied = work / "src" / "go.mod"
    assert copied.read_text().startswith("module github.com/openchoreo/openchoreo")
    copied.write_text("writable\n")  # Go may add go.sum entries here, never in the source
    assert (source / "go.mod").read_text().startswith("module")


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="WORKFLOWPLANE_PEER_SRC"):
        peer.recipe(tmp_path)

"""The build recipe for the API server binaries, without building anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflowplane.testenv import assets


def test_go_mod_replaces_every_staging_module_with_its_release() -> None:
    go_mod = assets._kube_go_mod()
    assert f"require k8s.io/kubernetes v{assets.KUBERNETES_VERSION}" in go_mod
    for name in assets.STAGING_MODULES:
        assert f"k8s.io/{name} => k8s.io/{name} v0.36.3" in go_mod


def test_kubebuilder_assets_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("kube-apiserver", "etcd"):
        (tmp_path / name).write_text("")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    found = assets.locate()
    assert found is not None and found.etcd == tmp_path / "etcd"


def test_empty_kubebuilder_assets_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(assets.AssetsError, match="no kube-apiserver and etcd"):
        assets.locate()


def test_missing_go_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("WORKFLOWPLANE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(assets.AssetsError, match="Go is not installed"):
        assets.ensure(log=False)


def test_cache_is_keyed_by_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKFLOWPLANE_CACHE", str(tmp_path))
    assert assets.versioned_dir() == tmp_path / "envtest" / "k8s-1.36.3-etcd-3.6.8"

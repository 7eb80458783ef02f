"""A real `helm` v3 (built once from its Go module by scripts/ensure-helm) and chart helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ENSURE_HELM = REPO / "scripts" / "ensure-helm"
CHARTS = REPO / "deploy" / "helm"
CONTROL_PLANE_CHART = CHARTS / "workflowplane-control-plane"
WORKFLOW_PLANE_CHART = CHARTS / "workflowplane-workflow-plane"


@dataclass(frozen=True)
class Helm:
    binary: str
    env: dict[str, str] = field(repr=False)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def render(self, chart: Path, *args: str, release: str = "t") -> str:
        """`helm template` output (manifests only; CRDs live in the chart's crds/)."""
        return self.run("template", release, str(chart), *args).stdout

    def template(self, chart: Path, *args: str, release: str = "t") -> list[dict[str, Any]]:
        docs = yaml.safe_load_all(self.render(chart, *args, release=release))
        return [doc for doc in docs if doc]

    def template_error(self, chart: Path, *args: str) -> str:
        """Render expecting failure; return helm's error output."""
        result = self.run("template", "t", str(chart), *args, check=False)
        assert result.returncode != 0, f"expected helm template to fail, got:\n{result.stdout}"
        return result.stderr


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    """scripts/ensure-helm's binary (built on first use, minutes; then cached by version)."""
    result = subprocess.run(
        [str(ENSURE_HELM)], capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode != 0:
        if shutil.which("go") is None:
            pytest.skip(
                "helm is not cached and Go is not installed, so scripts/ensure-helm cannot build "
                f"it (or set HELM=/path/to/helm): {result.stderr.strip()}"
            )
        pytest.fail(f"scripts/ensure-helm failed:\n{result.stderr}")
    binary = result.stdout.strip().splitlines()[-1]
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        # Keep helm's caches/config of the test away from the user's.
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    yield Helm(binary, env)

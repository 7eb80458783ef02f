"""``wpctl run``'s flags are checked before anything is created or any server is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.cli.wpctl import wpctl
from workflowplane.cli.errors import CliError
from workflowplane.cli.runs import parse_params


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["a..b=1"], "'a..b' has an empty name part"),
        (["a.=1"], "'a.' has an empty name part"),
        ([".a=1"], "'.a' has an empty name part"),
        (["image.name=x", "image.name=y"], "'image.name' is given twice"),
        (["n=1", "n=1"], "'n' is given twice"),
    ],
)
def test_parameters_that_would_lose_or_misname_a_value_are_refused(
    pairs: list[str], message: str
) -> None:
    with pytest.raises(CliError) as refused:
        parse_params(pairs)
    assert message in refused.value.message


@pytest.mark.parametrize("timeout", ["-5", "0", "nan", "-inf", "abc"])
def test_a_timeout_that_cannot_be_waited_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, timeout: str
) -> None:
    code, err = wpctl(
        capsys, "run", "build", "--wait", f"--timeout={timeout}", "--kubeconfig", str(tmp_path)
    )
    assert code == 2
    assert "argument --timeout" in err


def test_a_bad_parameter_is_named_before_any_server_is_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-kubeconfig"
    code, err = wpctl(capsys, "run", "build", "-p", "novalue", "--kubeconfig", str(missing))
    assert code == 2
    assert err.startswith("error: parameter 'novalue' is not KEY=VALUE")


def test_a_run_name_that_cannot_be_a_label_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It was created, then failed on its plane."""
    code, err = wpctl(capsys, "run", "build", "--name", "r" * 64, "--kubeconfig", str(tmp_path))
    assert code == 2
    assert "is 64 characters: a run's name is at most 63" in err


def test_a_generated_name_fits_a_label_value_whatever_the_workflows_name() -> None:
    import argparse  # noqa: PLC0415

    from workflowplane.cli.runs import run_manifest  # noqa: PLC0415

    args = argparse.Namespace(
        kind="ClusterWorkflow", workflow="w" * 70, param=[], ttl=None, namespace="n", name=None
    )
    prefix = run_manifest(args)["metadata"]["generateName"]
    assert len(prefix) + 5 <= 63 and prefix.endswith("-")

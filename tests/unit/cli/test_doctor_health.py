"""wpctl doctor reads each component's health listener and says which is unhealthy and why."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from workflowplane.cli.doctor import Report, _health_urls, check_components
from workflowplane.cli.errors import CliError
from workflowplane.kits.health import Health, ProgressWatch, Verdict, health_app


async def test_each_component_is_named_with_its_failing_checks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stuck = Health()
    stuck.watch(ProgressWatch("planes", lambda: 2, limit=-1))
    waiting = Health(ready_checks={"gateway": lambda: Verdict(False, "connection refused")})
    async with (
        TestServer(health_app(Health())) as fine,
        TestServer(health_app(stuck)) as wedged,
        TestServer(health_app(waiting)) as unready,
    ):
        urls = {
            "gateway": str(fine.make_url("")).rstrip("/"),
            "controller": str(wedged.make_url("")).rstrip("/"),
            "agent": str(unready.make_url("")).rstrip("/"),
        }
        report = Report()
        await check_components(urls, report)
    gone = Report()
    await check_components({"controller": urls["controller"]}, gone)
    out = capsys.readouterr().out
    assert report.failed and gone.failed
    assert f"ok    gateway ({urls['gateway']}) is live and ready" in out
    assert f"FAIL  controller ({urls['controller']}) is not live: planes: 2 pending, no" in out
    assert f"FAIL  agent ({urls['agent']}) is not ready: gateway: connection refused" in out
    assert "is not live: no answer" in out


def test_health_flags_are_name_equals_url() -> None:
    given = ["controller=http://localhost:8081/", "gateway=http://localhost:8080"]
    assert _health_urls(given) == {
        "controller": "http://localhost:8081",
        "gateway": "http://localhost:8080",
    }
    with pytest.raises(CliError):
        _health_urls(["localhost:8081"])


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:99999",  # a port that cannot be
        "http://localhost:80x",
        "http://",  # no host
        "http://user:secret@localhost:8081",  # credentials would be sent along
        "http://localhost:8081?x=1",  # /healthz would land in the query
        "http://localhost:8081#frag",
        "ftp://localhost:8081",
        "http://local host:8081",
    ],
)
def test_a_health_url_no_probe_could_use_is_refused_naming_it(url: str) -> None:
    with pytest.raises(CliError) as refused:
        _health_urls([f"controller={url}"])
    assert repr(f"controller={url}") in str(refused.value)
    assert "a port that can be" in str(refused.value)

"""The agent's gateway replicas (agent/replicas.py): the settings and their errors, the fleet
following the discovery (addresses added and removed: tunnels started and stopped, a failed
or empty answer changing nothing), one tunnel's crash ending the agent; and over real
WebSockets: the instance and Host headers, readiness with one replica of two, every replica
redialling on a reconnect request, a 1001 close redialled after the first short backoff."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.unit.agent.stand_ins import Gateway, plain, plain_fleet, plain_tunnel, serving, until
from tests.unit.agent.test_consent import KUBECONFIG
from workflowplane.agent import tunnel as tunnel_module
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.metrics import AgentMetrics
from workflowplane.agent.replicas import (
    MAX_REPLICAS,
    REPLICA_RECONNECT_MAX_SECONDS,
    DnsName,
    ListedReplicas,
    ReplicaAddress,
    ReplicaConfigError,
    ResolvedReplicas,
    TunnelFleet,
    discovery_from,
    parse_server_urls,
    redial_cap,
)
from workflowplane.agent.runner import Agent
from workflowplane.kits.tasks import cancel_and_wait
from workflowplane.protocol.http import AGENT_INSTANCE_HEADER

# ---- settings ---------------------------------------------------------------------------------


def test_a_list_of_urls_comma_separated_and_repeated() -> None:
    urls = parse_server_urls(["wss://a:8443/ws, wss://b:8443/ws", "https://[fd00::1]:8443"])
    assert urls == ("wss://a:8443/ws", "wss://b:8443/ws", "https://[fd00::1]:8443")


def test_a_dns_name_dials_each_address_under_the_name() -> None:
    name = DnsName.parse("cluster-gateway-headless.openchoreo-control-plane.svc:8443")
    assert (name.host, name.port, str(name)) == (
        "cluster-gateway-headless.openchoreo-control-plane.svc",
        8443,
        "cluster-gateway-headless.openchoreo-control-plane.svc:8443",
    )
    v4, v6 = name.address("10.0.0.5"), name.address("fd00::5")
    assert (v4.url, v6.url) == ("wss://10.0.0.5:8443", "wss://[fd00::5]:8443")
    assert v4.server_name == name.host
    assert v4.headers() == {"Host": f"{name.host}:8443"}
    assert ReplicaAddress("wss://gw:8443/ws").headers() == {}  # a URL: its own name
    as_url = DnsName.parse("ws://gw.example:9000/tunnel/ws")
    assert as_url.address("10.1.2.3").url == "ws://10.1.2.3:9000/tunnel/ws"


def _parse_list(value: str) -> object:
    return parse_server_urls([value])


@pytest.mark.parametrize(
    ("parse", "setting", "value", "message"),
    [
        (_parse_list, "--server-urls", "ftp://gw:8443", "must start with wss://, ws://, https://"),
        (_parse_list, "--server-urls", "gw:8443", "'gw:8443' must start with wss://"),
        (_parse_list, "--server-urls", "wss://", "'wss://' names no host"),
        (_parse_list, "--server-urls", "wss://gw:99999/ws", "'wss://gw:99999/ws' is not a URL"),
        (_parse_list, "--server-urls", "wss://me:secret@gw:8443", "must not carry credentials"),
        (_parse_list, "--server-urls", "wss://gw/ws#top", "must not carry a fragment"),
        (DnsName.parse, "--server-dns-name", "wss://gw:8443/ws?x=1", "must not carry a query"),
        (_parse_list, "--server-urls", "wss://a:1,,wss://b:1", "entry 2 of 'wss://a:1,,wss"),
        (_parse_list, "--server-urls", "wss://a:1,wss://a:1", "'wss://a:1' is listed twice"),
        (DnsName.parse, "--server-dns-name", "cluster-gateway", "needs a port, e.g. cluster-"),
        (DnsName.parse, "--server-dns-name", "10.0.0.1:8443", "'10.0.0.1' is an address, not"),
        (DnsName.parse, "--server-dns-name", "bad_name.svc:8443", "'bad_name.svc' is not a DNS"),
        (DnsName.parse, "--server-dns-name", "gw:http", "is not a URL"),
        (DnsName.parse, "--server-dns-name", "gw:8443/ws", "must be host:port or a wss:// URL"),
        (DnsName.parse, "--server-dns-name", "ftp://gw:21", "must start with wss://"),
    ],
)
def test_a_bad_replica_setting_is_named(
    parse: Callable[[str], object], setting: str, value: str, message: str
) -> None:
    with pytest.raises(ReplicaConfigError) as caught:
        parse(value)
    assert str(caught.value).startswith(f"{setting}: ") and message in str(caught.value)


def test_exactly_one_way_to_find_replicas() -> None:
    assert discovery_from("wss://gw/ws", (), "") == ListedReplicas(("wss://gw/ws",))
    assert discovery_from("", ("wss://a/ws,wss://b/ws",), "") == ListedReplicas(
        ("wss://a/ws", "wss://b/ws")
    )
    assert isinstance(discovery_from("", (), "gw:8443"), ResolvedReplicas)
    with pytest.raises(ReplicaConfigError, match="got none"):
        discovery_from("", (), "")
    with pytest.raises(ReplicaConfigError, match="got --server-url and --server-dns-name"):
        discovery_from("wss://gw/ws", (), "gw:8443")


# ---- the fleet follows the discovery -----------------------------------------------------------


class FakeTunnel:
    """A replica's tunnel that connects when told to; ``stopped`` once its run ended."""

    def __init__(self, address: ReplicaAddress, on_change: Callable[[], None]) -> None:
        self.address, self.on_change = address, on_change
        self.connected = asyncio.Event()
        self.reconnect_requested = asyncio.Event()
        self.crash: BaseException | None = None
        self.wake = asyncio.Event()
        self.running = self.stopped = False

    async def run(self) -> None:
        self.running = True
        try:
            await self.wake.wait()
            if self.crash is not None:
                raise self.crash
        finally:
            self.stopped = True

    def up(self, connected: bool = True) -> None:
        self.connected.set() if connected else self.connected.clear()
        self.on_change()


class Names:
    """An injectable resolver: the addresses it answers, or the error it raises."""

    def __init__(self, *ips: str) -> None:
        self.ips: list[str] = list(ips)
        self.error: OSError | None = None

    async def __call__(self, host: str, port: int) -> list[str]:
        assert (host, port) == ("gw-headless.cp.svc", 8443)
        if self.error is not None:
            raise self.error
        return list(self.ips)


Tunnels = dict[str, FakeTunnel]


def fleet_over(names: Names, **options: Any) -> tuple[TunnelFleet, Tunnels]:
    """A fleet of fake tunnels over ``names``; the tunnels by the address they dial (the
    latest one for an address dialled again)."""
    tunnels: Tunnels = {}

    def dial(address: ReplicaAddress, on_change: Callable[[], None]) -> FakeTunnel:
        tunnels[address.url] = FakeTunnel(address, on_change)
        return tunnels[address.url]

    discovery = ResolvedReplicas(DnsName.parse("gw-headless.cp.svc:8443"), names)
    return TunnelFleet(discovery, dial, AgentMetrics(), **options), tunnels


async def refreshed(fleet: TunnelFleet, tunnels: Tunnels) -> None:
    """The fleet asks the name once; every tunnel it started is running."""
    await fleet.refresh()
    await until(lambda: all(t.running for t in tunnels.values() if not t.stopped))


def url(ip: str) -> str:
    return f"wss://{ip}:8443"


def known(fleet: TunnelFleet) -> list[str]:
    return [address.url for address in fleet.replicas]


def replicas_metric(fleet: TunnelFleet, state: str) -> float:
    sample = "workflowplane_agent_gateway_replicas"
    return fleet.metrics.registry.get_sample_value(sample, {"state": state}) or 0.0


async def test_addresses_added_and_removed_start_and_stop_tunnels() -> None:
    names = Names("10.0.0.1", "10.0.0.2")
    fleet, tunnels = fleet_over(names)
    await refreshed(fleet, tunnels)
    assert set(tunnels) == {url("10.0.0.1"), url("10.0.0.2")}
    assert all(t.address.server_name == "gw-headless.cp.svc" for t in tunnels.values())
    assert replicas_metric(fleet, "known") == 2
    names.ips = ["10.0.0.2", "10.0.0.3"]  # a replica replaced by a new pod
    await refreshed(fleet, tunnels)
    assert known(fleet) == [url("10.0.0.2"), url("10.0.0.3")]
    await until(lambda: tunnels[url("10.0.0.1")].stopped)  # it was not connected: at once
    assert not tunnels[url("10.0.0.2")].stopped and not tunnels[url("10.0.0.3")].stopped
    assert replicas_metric(fleet, "known") == 2
    await fleet.close()
    assert all(t.stopped for t in tunnels.values()) and not fleet.replicas


async def test_a_failed_or_empty_answer_keeps_the_replicas_known() -> None:
    names = Names("10.0.0.1", "10.0.0.2")
    fleet, tunnels = fleet_over(names)
    await refreshed(fleet, tunnels)
    names.error = OSError("Temporary failure in name resolution")
    await refreshed(fleet, tunnels)
    names.error, names.ips = None, []
    await refreshed(fleet, tunnels)
    await asyncio.sleep(0)  # a cancelled tunnel would have stopped by now
    assert len(known(fleet)) == 2 and not any(t.stopped for t in tunnels.values())
    await fleet.close()


async def test_the_fleet_follows_the_name_while_it_runs() -> None:
    names = Names("10.0.0.1", "10.0.0.2")
    fleet, tunnels = fleet_over(names, resolve_every=0.01)
    runner = asyncio.create_task(fleet.run())
    try:
        await until(lambda: len(tunnels) == 2)
        gone = tunnels[url("10.0.0.1")]
        names.ips = ["10.0.0.2"]
        await until(lambda: gone.stopped)
        assert known(fleet) == [url("10.0.0.2")]
        names.ips = ["10.0.0.2", "10.0.0.1"]  # back: a new tunnel, with a backoff of its own
        await until(lambda: len(fleet.replicas) == 2)
        assert tunnels[url("10.0.0.1")] is not gone and not tunnels[url("10.0.0.1")].stopped
    finally:
        await cancel_and_wait([runner])
    assert all(t.stopped for t in tunnels.values()) and not fleet.replicas


async def test_a_connected_replica_leaving_keeps_its_connection_until_it_ends() -> None:
    names = Names("10.0.0.1", "10.0.0.2")
    fleet, tunnels = fleet_over(names)
    await refreshed(fleet, tunnels)
    leaving, staying = tunnels[url("10.0.0.1")], tunnels[url("10.0.0.2")]
    leaving.up()
    assert fleet.connected.is_set() and replicas_metric(fleet, "connected") == 1
    names.ips = ["10.0.0.2"]
    await fleet.refresh()  # draining: the replica answers what is in flight, then closes
    await asyncio.sleep(0)
    assert not leaving.stopped and fleet.connected.is_set()
    assert replicas_metric(fleet, "known") == 1 and replicas_metric(fleet, "connected") == 0
    leaving.up(False)  # it closed (1001): no redial to an address gone
    await until(lambda: leaving.stopped)
    assert not fleet.connected.is_set()
    staying.up()
    assert fleet.connected.is_set()
    await fleet.close()


async def test_a_leaving_replica_that_never_closes_is_dropped_after_the_grace() -> None:
    names = Names("10.0.0.1")
    fleet, tunnels = fleet_over(names, retire_grace=0.05)
    await refreshed(fleet, tunnels)
    tunnels[url("10.0.0.1")].up()
    names.ips = ["10.0.0.2"]
    await refreshed(fleet, tunnels)
    await until(lambda: tunnels[url("10.0.0.1")].stopped)
    await fleet.close()


async def test_a_name_with_too_many_addresses_is_dialled_up_to_the_bound() -> None:
    names = Names(*(f"10.0.{n // 250}.{n % 250}" for n in range(MAX_REPLICAS + 10)))
    fleet, tunnels = fleet_over(names)
    await refreshed(fleet, tunnels)
    assert len(tunnels) == MAX_REPLICAS
    await fleet.close()


async def test_a_reconnect_request_reaches_every_replica() -> None:
    fleet, tunnels = fleet_over(Names("10.0.0.1", "10.0.0.2"), resolve_every=60)
    runner = asyncio.create_task(fleet.run())
    try:
        await until(lambda: len(tunnels) == 2)
        fleet.reconnect_requested.set()  # a new certificate
        await until(lambda: all(t.reconnect_requested.is_set() for t in tunnels.values()))
        assert not fleet.reconnect_requested.is_set()
    finally:
        await cancel_and_wait([runner])


async def test_a_tunnel_dying_of_a_bug_ends_the_fleet_with_it() -> None:
    fleet, tunnels = fleet_over(Names("10.0.0.1", "10.0.0.2"), resolve_every=60)
    runner = asyncio.create_task(fleet.run())
    await until(lambda: len(tunnels) == 2)
    broken = tunnels[url("10.0.0.2")]
    broken.crash = RuntimeError("a bug")
    broken.wake.set()
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(runner, 10)
    assert all(t.stopped for t in tunnels.values())


# ---- over real WebSockets ---------------------------------------------------------------------


async def _serve_until_closed(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


def _agent(tmp_path: Path, **settings: Any) -> Agent:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    config = AgentConfig(server_url="", plane_id="p", kubeconfig=tmp_path / "kubeconfig")
    resolver = settings.pop("resolver")
    agent = Agent(replace(config, tls_enabled=False, **settings), resolver=resolver)
    agent._ssl_context = plain  # type: ignore[method-assign]  # ws://: no TLS at all
    return agent


async def test_every_replica_hears_the_same_instance_and_a_name_its_host(tmp_path: Path) -> None:
    listed, named = Gateway(_serve_until_closed), Gateway(_serve_until_closed)
    async with serving(listed, named):
        assert named.server is not None
        named_port = named.server.port

        async def localhost(host: str, port: int) -> list[str]:
            assert (host, port) == ("gw.example", named_port)
            return ["127.0.0.1"]

        agents = [
            _agent(tmp_path, server_urls=(f"{listed.url}/ws",), resolver=localhost),
            _agent(tmp_path, server_dns_name=f"ws://gw.example:{named_port}", resolver=localhost),
        ]
        runs = [asyncio.create_task(agent.tunnel.run()) for agent in agents]
        try:
            await until(lambda: all(agent.tunnel.connected.is_set() for agent in agents))
        finally:
            await cancel_and_wait(runs)
            for agent in agents:
                await agent.upstream.close()
    (from_listed,), (from_named,) = listed.upgrades, named.upgrades
    assert from_listed[AGENT_INSTANCE_HEADER] == agents[0].instance
    assert from_named[AGENT_INSTANCE_HEADER] == agents[1].instance != agents[0].instance
    assert len(agents[0].instance) == 32
    assert from_named["Host"] == f"gw.example:{named_port}"


async def test_ready_while_one_replica_of_two_is_connected() -> None:
    up, down = Gateway(_serve_until_closed), Gateway(_serve_until_closed)
    async with serving(up, down):
        fleet = plain_fleet((up.url, down.url))
        runner = asyncio.create_task(fleet.run())
        try:
            await until(lambda: len(up.sockets) == len(down.sockets) == 1)
            await until(lambda: all(fleet.replicas.values()))
            down.script = lambda ws: ws.close()  # from now on it refuses every connection
            await down.sockets[0].close()
            await until(lambda: not fleet.replicas[ReplicaAddress(down.url)])
            assert fleet.connected.is_set()
            assert replicas_metric(fleet, "known") == 2
            assert replicas_metric(fleet, "connected") == 1
            assert f"1 of 2 gateway replicas connected: {up.url} up, {down.url} down" == (
                fleet.describe()
            )
        finally:
            await cancel_and_wait([runner])


async def test_a_going_away_close_is_redialled_after_the_first_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[int] = []

    def no_wait(attempt: int, _initial: float, _cap: float) -> float:
        attempts.append(attempt)
        return 0.0

    monkeypatch.setattr(tunnel_module, "full_jitter_delay", no_wait)
    codes = iter([1000, 1000, 1001, 1000])

    async def close(ws: web.WebSocketResponse) -> None:
        await ws.close(code=next(codes, 1000))

    gateway = Gateway(close)
    async with serving(gateway):
        tunnel = plain_tunnel(gateway.url)
        task = asyncio.create_task(tunnel.run())
        try:
            await until(lambda: len(attempts) >= 4)
        finally:
            await cancel_and_wait([task])
    # each plain close backs off longer; a replica going away is redialled at the first step
    assert attempts[:4] == [1, 2, 0, 1]


async def test_a_replica_of_several_is_redialled_within_seconds_one_gateway_as_configured(
    tmp_path: Path,
) -> None:
    """A rolling restart must get every agent back to a restarted replica within seconds
    (bench/ha.py): with several replicas the backoff stops at 3 s, not the 30 s default."""

    async def nowhere(host: str, port: int) -> list[str]:
        return []

    several = _agent(tmp_path, server_urls=("wss://a:1/ws,wss://b:1/ws",), resolver=nowhere)
    named = _agent(tmp_path, server_dns_name="gw.example:8443", resolver=nowhere)
    one = _agent(tmp_path, server_url="wss://a:1/ws", resolver=nowhere)
    address = ReplicaAddress("wss://a:1")
    try:
        caps = [agent._dial(address, lambda: None)._cap for agent in (several, named, one)]
    finally:
        for agent in (several, named, one):
            await agent.upstream.close()
    assert caps == [REPLICA_RECONNECT_MAX_SECONDS, REPLICA_RECONNECT_MAX_SECONDS, 30.0]
    assert redial_cap(1.0, several=True) == 1.0  # a shorter configured cap stays


async def test_a_dial_uvloops_descriptor_bug_failed_is_redialled_not_the_agents_end() -> None:
    """MagicStack/uvloop#653 fails a dial with a RuntimeError before a byte is sent. The
    tunnel backs off and dials again, as after a refused connection; a RuntimeError out of
    it would end the whole fleet (a bug, above)."""
    dials: list[str] = []

    def clash_once(addr_info: Any) -> socket.socket:
        dials.append(addr_info[4][0])
        if len(dials) == 1:
            raise RuntimeError("File descriptor 57 is used by transport <TCPTransport closed=0>")
        family, kind, proto, _, _ = addr_info
        return socket.socket(family, kind, proto)

    gateway = Gateway(_serve_until_closed)
    async with serving(gateway):
        tunnel = plain_tunnel(gateway.url, socket_factory=clash_once)
        task = asyncio.create_task(tunnel.run())
        try:
            await until(lambda: tunnel.connected.is_set() or task.done())
            assert not task.done() and dials == ["127.0.0.1", "127.0.0.1"]
        finally:
            await cancel_and_wait([task])


async def test_a_gateway_that_never_answers_the_upgrade_is_redialled_after_dead_after() -> None:
    """The upgrade had aiohttp's 300 s session timeout: a gateway that took the connection
    and said nothing held the agent's redial for five minutes."""
    taken: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tunnel = plain_tunnel(f"ws://127.0.0.1:{port}", dead_after=0.2)
    task = asyncio.create_task(tunnel.run())
    try:
        await until(lambda: len(taken) >= 2 or task.done())
        assert not task.done() and not tunnel.connected.is_set()
    finally:
        await cancel_and_wait([task])
        for writer in taken:
            writer.close()
        server.close()
        await server.wait_closed()

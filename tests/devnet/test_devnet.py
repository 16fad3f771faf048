"""The devnet against the real yagna daemon: every test starts real daemons and stops them by PID.

Each test owns its devnets through the ``devnets`` fixture, which brings down whatever is still
recorded (and kills any PID it ever saw) even when the test fails.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workgen.devnet import (
    Devnet, DevnetRunning, DevnetState, NodeState, ProcessRef, Stopped, YagnaNotFound, find_yagna,
)
from workgen.devnet.errors import DaemonStartError

try:
    YAGNA = find_yagna()
except YagnaNotFound as exc:  # pragma: no cover - the test extra installs golem-node
    pytest.skip(str(exc), allow_module_level=True)

WORKGEN = Path(sys.executable).parent / "workgen"

pytestmark = pytest.mark.timeout(180)


# --- helpers -----------------------------------------------------------------------------------

def rest(api_url: str, appkey: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One REST call to a daemon, written here rather than borrowed from the code under test."""
    host, port = api_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {appkey}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def me(node: NodeState) -> dict[str, Any]:
    code, body = rest(node.api_url, node.appkey, "GET", "/me")
    assert code == 200, body
    return dict(body)


def alive(pid: int) -> bool:
    """Running and not a zombie (exited daemons are reparented to PID 1, which may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def recorded_pids(state: DevnetState) -> list[int]:
    return [n.pid for n in state.nodes] + [a.pid for a in state.agents]


def sockets_of(pid: int) -> list[tuple[str, str, str]]:
    """(protocol, local address, state) of every inet socket the process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/{pid}/net/{proto}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    found.append((proto, fields[1], fields[3]))
    return found


def loopback(hex_address: str) -> bool:
    host = hex_address.split(":")[0]
    return host == "0100007F" or host == "00000000000000000000000001000000"


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Replaces the suite-wide sandbox leak check for this module: that check sees sandbox
    processes machine-wide, so other suites running at the same time fail it here, while the
    devnet starts no sandbox. The devnet's own processes are checked by ``devnets``."""
    yield


@pytest.fixture
def devnets(tmp_path: Path) -> Iterator[Callable[[str], Devnet]]:
    """Makes devnets in tmp_path; afterwards stops whatever they still run."""
    made: list[Devnet] = []
    seen: set[int] = set()

    def make(name: str) -> Devnet:
        devnet = Devnet(tmp_path / name)
        made.append(devnet)
        return devnet

    def note_pids() -> None:
        for devnet in made:
            if devnet.state_path.exists():
                seen.update(recorded_pids(devnet.state()))

    make.note_pids = note_pids  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        note_pids()
        for devnet in made:
            if devnet.state_path.exists():
                devnet.down()
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert not [pid for pid in seen if alive(pid)]


def offer_for(node: NodeState) -> dict[str, Any]:
    return {
        "properties": {
            "golem.node.id.name": node.name,
            "golem.node.debug.subnet": "public",
            "golem.runtime.name": "vm",
            "golem.com.scheme": "payu",
            "golem.com.pricing.model": "linear",
            "golem.com.pricing.model.linear.coeffs": [0.0, 0.0, 0.0],
            "golem.com.usage.vector": ["golem.usage.duration_sec", "golem.usage.cpu_sec"],
        },
        "constraints": "(golem.srv.comp.expiration>0)",
    }


def demand() -> dict[str, Any]:
    return {
        "properties": {
            "golem.node.debug.subnet": "public",
            "golem.srv.comp.expiration": int(time.time() * 1000) + 600_000,
        },
        "constraints": "(&(golem.node.debug.subnet=public)(golem.runtime.name=vm))",
    }


def fake_yagna(tmp_path: Path, script: str) -> Path:
    """A yagna wrapper that may fail before exec'ing the real one (same PID afterwards)."""
    path = tmp_path / "yagna"
    path.write_text(f"#!/bin/sh\n{script}\nexec {shlex.quote(str(YAGNA))} \"$@\"\n")
    path.chmod(0o755)
    return path


# --- the library -------------------------------------------------------------------------------

def test_up_gives_a_network_whose_providers_reach_the_requestor(devnets: Any) -> None:
    devnet = devnets("net")
    started = time.monotonic()
    state = devnet.up(providers=2)
    took = time.monotonic() - started
    devnets.note_pids()
    print(f"up with 2 providers took {took:.2f} s")

    assert [n.name for n in state.nodes] == ["requestor", "provider-1", "provider-2"]
    assert [n.role for n in state.nodes] == ["requestor", "provider", "provider"]
    identities = [me(node)["identity"] for node in state.nodes]
    assert identities == [node.node_id for node in state.nodes]
    assert len(set(identities)) == 3
    assert len({n.gsb_port for n in state.nodes} | {n.rest_port for n in state.nodes}) == 6
    assert all(2000 <= n.gsb_port <= 9999 for n in state.nodes)
    assert state.requestor.payment_init is not None and state.requestor.payment_init.ok

    # devnet.env holds the requestor's settings, and they work.
    env: dict[str, str] = {}
    for line in devnet.env_path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0]
    # workgen's gftp (for yapapi) comes first on the PATH it sets.
    assert env.pop("PATH") == f"{Path(sys.executable).parent}:$PATH"
    assert env == {
        "YAGNA_APPKEY": state.requestor.appkey, "YAGNA_API_URL": state.requestor.api_url,
        "YAGNA_SUBNET": "public", "GSB_URL": state.requestor.gsb_url,
        "YAGNA_PAYMENT_NETWORK": "holesky", "YAGNA_PAYMENT_DRIVER": "erc20",
        "PAYMENT_NETWORK": "holesky", "PAYMENT_DRIVER": "erc20",  # golem-js's names
    }
    code, answer = rest(env["YAGNA_API_URL"], env["YAGNA_APPKEY"], "GET", "/me")
    assert code == 200 and answer["identity"] == state.requestor.node_id
    assert json.loads(devnet.state_path.read_text())["agents"] == []

    # The providers are connected to the hub: their offers reach the requestor's market.
    for node in state.providers:
        code, _ = rest(node.api_url, node.appkey, "POST", "/market-api/v1/offers", offer_for(node))
        assert code == 201
    req = state.requestor
    code, subscription = rest(req.api_url, req.appkey, "POST", "/market-api/v1/demands", demand())
    assert code == 201, subscription
    issuers: set[str] = set()
    deadline = time.monotonic() + 60  # offers travel by broadcast: a few polls
    while len(issuers) < 2 and time.monotonic() < deadline:
        code, events = rest(req.api_url, req.appkey, "GET",
                            f"/market-api/v1/demands/{subscription}/events?timeout=5&maxEvents=10")
        assert code == 200, events
        issuers |= {e["proposal"]["issuerId"] for e in events if e["eventType"] == "ProposalEvent"}
    assert issuers == {n.node_id for n in state.providers}

    # An allocation works offline (dev skip flag) on the payment platform the env names.
    code, allocation = rest(req.api_url, req.appkey, "POST", "/payment-api/v1/allocations", {
        "address": req.node_id, "paymentPlatform": "erc20-holesky-tglm", "totalAmount": "1",
        "timeout": "2099-01-01T00:00:00Z", "makeDeposit": False})
    assert code == 201, allocation

    # Nothing listens beyond loopback (the daemons' DNS lookups of RPC pools are disabled too).
    for node in state.nodes:
        for proto, address, _ in sockets_of(node.pid):
            assert loopback(address), (node.name, proto, address)

    status = devnet.status()
    assert status.healthy
    assert [n.me["identity"] for n in status.nodes if n.me] == identities

    stopped = devnet.down()
    assert [s.what for s in stopped] == ["provider-1", "provider-2", "requestor"]
    assert all(s.outcome == "stopped" for s in stopped)
    assert not [pid for pid in recorded_pids(state) if alive(pid)]
    assert not devnet.directory.exists()


def test_two_devnets_coexist(devnets: Any) -> None:
    first, second = devnets("one"), devnets("two")
    a = first.up(providers=1)
    b = second.up(providers=1)
    devnets.note_pids()
    ports_a = {n.gsb_port for n in a.nodes} | {n.rest_port for n in a.nodes}
    ports_b = {n.gsb_port for n in b.nodes} | {n.rest_port for n in b.nodes}
    assert not ports_a & ports_b
    assert first.status().healthy and second.status().healthy
    assert {n.node_id for n in a.nodes}.isdisjoint(n.node_id for n in b.nodes)
    first.down()
    assert second.status().healthy  # the other devnet is untouched
    second.down()
    assert not [pid for pid in recorded_pids(a) + recorded_pids(b) if alive(pid)]


def test_up_on_a_running_devnet_is_a_clear_error(devnets: Any) -> None:
    devnet = devnets("net")
    state = devnet.up(providers=0)
    devnets.note_pids()
    with pytest.raises(DevnetRunning, match="already running.*workgen devnet down"):
        devnet.up(providers=1)
    assert devnet.state() == state
    assert devnet.status().healthy


def test_failed_up_stops_what_it_started(devnets: Any, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    broken = fake_yagna(tmp_path, 'case "$YAGNA_DATADIR" in */provider-2) '
                                  'echo "Error: simulated failure"; exit 1;; esac')
    devnet = devnets("net")
    with caplog.at_level(logging.INFO, logger="workgen.devnet.daemon"):
        with pytest.raises(DaemonStartError, match="provider-2.*simulated failure"):
            devnet.up(providers=2, yagna=broken)
    started = [int(m) for m in re.findall(r"started pid (\d+)", caplog.text)]
    assert len(started) == 3  # the hub and provider-1 were up when provider-2 failed
    assert not [pid for pid in started if alive(pid)]
    assert not devnet.directory.exists()


def test_a_daemon_that_loses_a_port_race_is_started_again(devnets: Any, tmp_path: Path) -> None:
    racy = fake_yagna(tmp_path, (
        'if [ "$1" = service ] && [ ! -e "$YAGNA_DATADIR.raced" ]; then'
        ' touch "$YAGNA_DATADIR.raced";'
        ' printf "Error: binding service bus router\\n    Address already in use (os error 98)\\n";'
        " exit 1; fi"))
    devnet = devnets("net")
    state = devnet.up(providers=1, yagna=racy)
    devnets.note_pids()
    assert devnet.status().healthy
    assert (state.directory / "provider-1.raced").exists()
    devnet.down()
    for marker in state.directory.parent.glob("net/*.raced"):
        marker.unlink()


def test_a_failed_payment_init_is_recorded_not_fatal(devnets: Any, tmp_path: Path) -> None:
    no_chain = fake_yagna(tmp_path, 'if [ "$1" = payment ]; then'
                                    ' echo "Error: chain unreachable" >&2; exit 3; fi')
    devnet = devnets("net")
    state = devnet.up(providers=1, yagna=no_chain)
    devnets.note_pids()
    for node in state.nodes:
        assert node.payment_init is not None and not node.payment_init.ok
        assert "exited 3: Error: chain unreachable" in node.payment_init.detail
    assert devnet.state().requestor.payment_init == state.requestor.payment_init
    assert devnet.status().healthy


def test_a_stale_record_is_replaced(devnets: Any) -> None:
    devnet = devnets("net")
    old = devnet.up(providers=1)
    devnets.note_pids()
    for node in old.nodes:  # as after a reboot: the record stays, the processes are gone
        os.kill(node.pid, signal.SIGKILL)
    for node in old.nodes:  # a killed daemon takes a moment to go (its threads exit)
        assert node.process.wait(10), f"{node.name} outlived SIGKILL"
    assert not devnet.status().healthy
    new = devnet.up(providers=1)
    devnets.note_pids()
    assert devnet.status().healthy
    assert {n.pid for n in new.nodes}.isdisjoint(n.pid for n in old.nodes)


def test_agents_are_recorded_and_stopped_first(devnets: Any) -> None:
    devnet = devnets("net")
    devnet.up(providers=1)
    code = "import os, time\nprint(os.environ['YAGNA_API_URL'], flush=True)\ntime.sleep(120)"
    agent = devnet.start_agent("agent-1", "provider-1", [sys.executable, "-c", code])
    devnets.note_pids()
    state = devnet.state()
    assert state.agents == (agent,)
    assert json.loads(devnet.state_path.read_text())["agents"][0]["node"] == "provider-1"
    status = devnet.status()
    assert status.healthy and status.agents[0].running
    assert agent.log_path is not None
    deadline = time.monotonic() + 10
    while not agent.log_path.read_text() and time.monotonic() < deadline:
        ProcessRef(agent.pid, agent.start_time).wait(0.1)  # the agent prints, then sleeps
    assert agent.log_path.read_text().strip() == state.node("provider-1").api_url
    stopped = devnet.down()
    assert [s.what for s in stopped] == ["agent agent-1", "provider-1", "requestor"]
    assert not alive(agent.pid)


def test_agents_started_from_a_background_job_still_stop_cleanly(devnets: Any,
                                                                 tmp_path: Path) -> None:
    """A shell starts background jobs with SIGINT ignored, and programs inherit that. The
    devnet's agents must still get the SIGINT that ``down`` sends, and clean up."""
    devnet = devnets("net")
    devnet.up(providers=1)
    code = ("import time\ntry:\n    print('waiting', flush=True)\n    time.sleep(120)\n"
            "except KeyboardInterrupt:\n    print('cleaned up', flush=True)")
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        agent = devnet.start_agent("agent-1", "provider-1", [sys.executable, "-c", code],
                                   log_path=tmp_path / "agent.log")  # down removes the nodes'
    finally:
        signal.signal(signal.SIGINT, ignored)
    devnets.note_pids()
    assert agent.log_path is not None
    deadline = time.monotonic() + 10
    while not agent.log_path.read_text() and time.monotonic() < deadline:
        ProcessRef(agent.pid, agent.start_time).wait(0.1)  # the agent prints, then sleeps
    stopped = devnet.down()
    assert stopped[0] == Stopped("agent agent-1", agent.pid, "stopped")
    assert agent.log_path.read_text().split() == ["waiting", "cleaned", "up"]


# --- the command line --------------------------------------------------------------------------

def workgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WORKGEN), "devnet", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_up_status_down(tmp_path: Path) -> None:
    directory = tmp_path / "cli"
    up = workgen("up", "--dir", str(directory), "--providers", "1")
    try:
        assert up.returncode == 0, up.stderr
        state = Devnet(directory).state()
        assert f"export YAGNA_APPKEY={state.requestor.appkey}" in up.stdout
        assert f"export YAGNA_API_URL={state.requestor.api_url}" in up.stdout
        assert str(directory / "devnet.env") in up.stdout
        for node in state.nodes:
            assert any(line.startswith(node.name) and str(node.node_id) in line
                       for line in up.stdout.splitlines())
        # The daemons outlived the command that started them.
        assert all(alive(pid) for pid in recorded_pids(state))

        again = workgen("up", "--dir", str(directory))
        assert again.returncode == 1
        assert again.stderr.startswith("workgen devnet: a devnet is already running")
        assert "Traceback" not in again.stderr

        status = workgen("status", "--dir", str(directory))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("[running, /me 0x") == 2

        down = workgen("down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert "provider-1: pid" in down.stdout and "is down" in down.stdout
        assert not [pid for pid in recorded_pids(state) if alive(pid)]
        assert not directory.exists()
    finally:
        if (directory / "devnet.json").exists():
            Devnet(directory).down()


def test_cli_errors_are_one_line_with_an_exit_code(tmp_path: Path) -> None:
    missing = workgen("up", "--dir", str(tmp_path / "x"), "--yagna", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "pip install golem-node==0.17.6" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    for command in ("status", "down"):
        result = workgen(command, "--dir", str(tmp_path / "x"))
        assert result.returncode == 1
        expected = f"workgen devnet: no devnet in {tmp_path / 'x'} (no devnet.json there)"
        assert result.stderr.strip() == expected

"""The Prometheus endpoint of a real agent: basic auth, command counters, entities, host and VM figures."""
from __future__ import annotations

import asyncio
import base64
import re
import socket
import urllib.error
import urllib.request

import pytest

from agent_fixtures import admin_client, second_agent
from vm_helpers import HV_NS, alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, auth: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return reply.read().decode()


def value(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


async def test_metrics_endpoint(stack, tmp_path, new_user):
    port = free_port()
    secret = tmp_path / "metrics.password"
    secret.write_text("scrape-me\n")
    handle = second_agent(stack, "hv-metrics", overrides={
        "METRICS": {"metrics_address": f"127.0.0.1:{port}", "metrics_user": "prometheus",
                    "metrics_password_file": str(secret)},
        "HEALTH": {"health_collection_interval": "1"}})
    handle.process.start()
    admin = await admin_client(stack, "metrics-test")
    url = f"http://127.0.0.1:{port}/metrics"
    auth = "Basic " + base64.b64encode(b"prometheus:scrape-me").decode()
    jid = None
    try:
        await handle.wait_ready(admin)
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(scrape, url)
        assert info.value.code == 401
        with pytest.raises(urllib.error.HTTPError):
            await asyncio.to_thread(scrape, url, "Basic " + base64.b64encode(b"prometheus:wrong").decode())

        await admin.acp(handle.full_jid, HV_NS, "nodeinfo")
        stranger = await new_user("metricsstranger")
        with pytest.raises(AcpError):
            await stranger.acp(handle.full_jid, HV_NS, "nodeinfo")
        jid = await alloc(admin, handle.full_jid, unique_name("metrics"))
        await wait_vm_ready(admin, vm_full(jid, handle.jid))

        for _ in range(40):  # the snapshot is refreshed every 5 s
            text = await asyncio.to_thread(scrape, url, auth)
            if value(text, "archipel_entities", kind="vm", state="online") == 1.0 and \
                    value(text, "archipel_vm_state", uuid=jid.split("@")[0]) is not None:
                break
            await asyncio.sleep(0.5)
        assert value(text, "archipel_entities", kind="hypervisor", state="online") == 1.0
        assert value(text, "archipel_entities", kind="vm", state="online") == 1.0
        assert value(text, "archipel_commands_total", namespace=HV_NS, action="nodeinfo", outcome="ok") >= 1
        assert value(text, "archipel_permission_refusals_total", namespace=HV_NS, action="nodeinfo") >= 1
        assert value(text, "archipel_command_duration_seconds_count", namespace=HV_NS, action="nodeinfo") >= 2
        assert value(text, "archipel_libvirt_up") == 1.0 and value(text, "archipel_storage_ok") == 1.0
        # the hypervisor and the VM logged in through the login gate
        assert value(text, "archipel_login_attempts_total") >= 2
        assert 1 <= value(text, "archipel_login_attempts_peak_per_second") <= value(text, "archipel_login_attempts_total")
        with open("/proc/meminfo") as f:
            total_kib = int(f.readline().split()[1])
        assert value(text, "archipel_host_memory_total_bytes") == total_kib * 1024
        assert value(text, "archipel_vm_state", uuid=jid.split("@")[0]) == 5.0  # shut off
    finally:
        if jid:
            await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
        await admin.close()
        handle.process.stop()


async def test_metrics_port_in_use_is_reported_and_the_agent_serves_on(stack):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        handle = second_agent(stack, "hv-metrics-busy", overrides={"METRICS": {"metrics_address": f"127.0.0.1:{port}"}})
        handle.process.start()
        admin = await admin_client(stack, "metrics-busy-test")
        try:
            await handle.wait_ready(admin)  # serving anyway
            log = (handle.lib_dir / "agent.log").read_text()
            assert f"metrics: cannot listen on 127.0.0.1:{port}" in log
        finally:
            await admin.close()
            handle.process.stop()

"""The hypervisor's ``ip`` command with a DNS server that stops answering.

``machine_ip = auto`` makes ``ip`` resolve the XMPP host's name.  Here that
name is served by a small real DNS server of the test (UDP on 127.0.0.153:53)
and the agent runs in a mount namespace of its own whose ``/etc/resolv.conf``
names only that server.  While the server answers, the agent connects and
``ip`` answers 127.0.0.1; once it stops answering, ``ip`` must answer a clear
error (-48) after the agent's lookup timeout while the hypervisor keeps
answering everything else, instead of the whole agent waiting for the resolver.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

from agent_fixtures import AgentHandle, client_for, write_config
from agent_process import REPO, AgentProcess
from archipelagent.hypervisor.address import LOOKUP_TIMEOUT
from xmpp_client import AcpError

HV = "hv-dns"
HV_NS = "archipel:hypervisor:control"
DNS_ADDR = ("127.0.0.153", 53)
XMPP_NAME = "xmpp-dns.archipel.test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")


class DnsServer:
    """Answers A queries for one name with 127.0.0.1 (other queries: no records) until muted."""

    def __init__(self, name: str):
        self.name = name.lower()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(DNS_ADDR)
        self.sock.settimeout(0.2)
        self.muted = threading.Event()
        self.queries: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    def start(self) -> "DnsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            reply = self.answer(data)
            if reply and not self.muted.is_set():
                self.sock.sendto(reply, peer)

    def answer(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        qid, _flags, qdcount = struct.unpack("!HHH", data[:6])
        labels, i = [], 12
        while i < len(data) and data[i]:
            labels.append(data[i + 1:i + 1 + data[i]].decode(errors="replace"))
            i += 1 + data[i]
        if qdcount != 1 or i + 5 > len(data):
            return None
        qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
        question = data[12:i + 5]
        name = ".".join(labels).lower()
        self.queries.append(name)
        records = b""
        if name == self.name and qtype == 1:  # A
            records = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton("127.0.0.1")
        rcode = 0 if name == self.name else 3  # NXDOMAIN for anything else
        header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, 1 if records else 0, 0, 0)
        return header + question + records


class NamespacedAgent(AgentProcess):
    """The agent in a mount namespace whose /etc/resolv.conf is ``resolv_conf``."""

    def __init__(self, config_path, log_path, resolv_conf):
        super().__init__(config_path, log_path)
        self.resolv_conf = resolv_conf

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        script = ('mount --bind "$1" /etc/resolv.conf && shift && exec "$@"')
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(self.resolv_conf),
                 sys.executable, "-m", "archipelagent", "--config", str(self.config_path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def test_ip_with_a_dead_dns_server_answers_an_error_and_nothing_freezes(stack, tmp_path):
    try:
        dns = DnsServer(XMPP_NAME).start()
    except OSError as exc:
        pytest.skip(f"cannot bind {DNS_ADDR}: {exc}")
    resolv = tmp_path / "resolv.conf"
    # the resolver waits 30 s for an answer: far longer than the agent's lookup timeout
    resolv.write_text(f"nameserver {DNS_ADDR[0]}\noptions timeout:30 attempts:1\n")
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    hv_jid = f"{HV}@{stack.domain}"
    conf = write_config(stack, lib_dir, {
        "HYPERVISOR": {"hypervisor_xmpp_jid": hv_jid, "hypervisor_name": HV},
        "GLOBAL": {"machine_ip": "auto"},
        "XMPP": {"xmpp_host": XMPP_NAME},
        "VIRTUALMACHINE": {"vm_base_path": str(tmp_path / "drives")},
    })
    process = NamespacedAgent(conf, lib_dir / "agent.out", resolv)
    handle = AgentHandle(stack, process, hv_jid, lib_dir)
    handle.full_jid = f"{hv_jid}/{HV}"
    process.start()
    user = stack.admin_user
    admin = await client_for(stack, user["jid"], user["password"], "ip-lookup").connect()
    try:
        await handle.wait_ready(admin)
        ip = await admin.acp(handle.full_jid, HV_NS, "ip")
        assert ip[0].text == "127.0.0.1" and XMPP_NAME in dns.queries

        dns.muted.set()  # the DNS server stops answering
        lookup = asyncio.ensure_future(admin.acp(handle.full_jid, HV_NS, "ip", timeout=60))
        await asyncio.sleep(0)
        # the hypervisor keeps answering while the lookup waits
        assert await admin.ping(handle.full_jid, timeout=10) >= 0
        assert int((await admin.acp(handle.full_jid, HV_NS, "nodeinfo", timeout=10))[0].get("nrCPU")) > 0
        with pytest.raises(AcpError) as err:
            await lookup
        assert err.value.code == -48, err.value
        assert (f"cannot determine the address from machine_ip='auto': looking up '{XMPP_NAME}' "
                f"did not answer within {LOOKUP_TIMEOUT:.0f} s") in err.value.text
        assert process.alive

        dns.muted.clear()
        assert (await admin.acp(handle.full_jid, HV_NS, "ip", timeout=30))[0].text == "127.0.0.1"
    finally:
        await admin.close()
        process.stop()
        dns.stop()

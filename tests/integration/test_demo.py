"""`make demo` is the real thing: `python -m rig demo` in a subprocess, the
README's admin CLI examples run against it, LDAP groups and roles given to
groups honoured for a real LDAP student, and SIGTERM leaves nothing behind.

The demo runs on the twin of the suite's profile (``<profile>-demo``: its own
ports and state), so it can run while the suite's own stack is up.
"""
from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_asyncio

from rig.stack import PROFILES, REPO, Stack
from rig.util import is_alive
from xmpp_client import AcpError, Client

HV_NS = "archipel:hypervisor:control"
PROFILE = os.environ.get("ARCHIPEL_RIG_PROFILE", "test") + "-demo"
ADMIN_CLI = Path(sys.executable).with_name("archipel-admin")
READY_TIMEOUT = 180  # first start of a profile probes QEMU's capabilities


def readme_admin_examples() -> list[list[str]]:
    """The commands of the README's admin CLI block, ``$S`` left in place."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The admin CLI", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "archipel-admin":
            commands.append(words)
    return commands


class Demo:
    """``python -m rig demo --profile PROFILE`` as a child process."""

    def __init__(self):
        self.stack = Stack(profile=PROFILE)
        self.summary_path = self.stack.state_dir / "demo.json"
        self.out = REPO / ".rig" / f"{PROFILE}.out"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.summary_path.unlink(missing_ok=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "rig", "demo", "--profile", PROFILE], cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def admin(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``archipel-admin ARGS``; ``$S`` stands for ``--summary <demo.json>`` as in the README."""
        words = [w for a in args for w in (["--summary", str(self.summary_path)] if a == "$S" else [a])]
        return subprocess.run([str(ADMIN_CLI), *words], capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def wait_ready(self) -> None:
        """Until the admin CLI pings the demo's hypervisor (the agent serves)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"demo exited with {self.proc.returncode}:\n{self.output()}"
            if self.summary_path.exists() and self.admin("$S", "ping", timeout=30).returncode == 0:
                return
            time.sleep(0.5)
        raise TimeoutError(f"demo not serving after {READY_TIMEOUT}s:\n{self.output()}")

    def pids(self) -> list[int]:
        """Everything the demo runs: itself, its children (the agent), the stack's servers and QEMUs."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        status = self.stack.status()["pids"]
        return [self.proc.pid, *map(int, children), *[p for v in status.values() for p in v]]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def demo():
    if PROFILE not in PROFILES:
        pytest.skip(f"no demo twin for profile {PROFILE!r}")
    d = Demo()
    d.start()
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()
        d.stack.purge()  # the demo stops its stack; this also removes its state


@pytest_asyncio.fixture
async def summary(demo):
    return json.loads(demo.summary_path.read_text())


async def login(summary, uid: str) -> Client:
    user = next(u for u in summary["users"] if u["jid"].split("@")[0] == uid)
    return await Client(user["jid"], user["password"], ca_file=Path(summary["ca_file"]), host=summary["xmpp_host"],
                        port=summary["xmpp_port"], resource="demo-test").connect()


def test_demo_agent_config_uses_the_demo_ldap(demo):
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(demo.stack.state_dir / "agent" / "archipel.conf")
    assert cp["LDAP"]["ldap_enabled"] == "true"
    assert cp["LDAP"]["ldap_uri"] == demo.stack.ldap_uri
    assert cp["LDAP"]["ldap_admin_groups"] == "admins"


async def test_readme_examples_work_and_ldap_groups_count_in_the_demo(demo, summary):
    hv = summary["hypervisor_full_jid"]
    student1 = await login(summary, "student1")
    student2 = await login(summary, "student2")
    try:
        with pytest.raises(AcpError) as err:  # nothing granted yet
            await student1.acp(hv, HV_NS, "alloc", {"name": "refused"})
        assert err.value.is_permission_error

        # every example of the README's admin CLI block, in order
        for words in readme_admin_examples():
            cp = demo.admin(*words[1:])
            assert cp.returncode == 0, f"{shlex.join(words)} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}"

        # `roles set student alloc` + `permissions grant --role student --group students`:
        # the LDAP student allocates through the role given to their group ...
        first = await student1.acp(hv, HV_NS, "alloc", {"name": "demo-a"})
        await student1.acp(hv, HV_NS, "alloc", {"name": "demo-b"})
        assert first[0].get("jid")
        # ... up to `quota set --group students --vms 2`
        with pytest.raises(AcpError) as err:
            await student1.acp(hv, HV_NS, "alloc", {"name": "demo-c"})
        assert err.value.code == -51, err.value

        # the role gone, a permission granted to the group directly
        assert demo.admin("$S", "roles", "delete", "student").returncode == 0
        with pytest.raises(AcpError) as err:
            await student2.acp(hv, HV_NS, "alloc", {"name": "demo-d"})
        assert err.value.is_permission_error
        cp = demo.admin("$S", "permissions", "grant", "--group", "students", "alloc")
        assert cp.returncode == 0, cp.stderr
        assert (await student2.acp(hv, HV_NS, "alloc", {"name": "demo-d"}))[0].get("jid")
    finally:
        await student1.close()
        await student2.close()


async def test_readme_first_steps_work_in_the_demo(demo, summary):
    """The README's "try it": admin logs in, chats `help`, sends the capabilities IQ as written."""
    readme = (REPO / "README.md").read_text()
    iq_to = re.search(r'<iq type="get" to="([^"]+)"', readme).group(1)
    assert iq_to == summary["hypervisor_full_jid"]
    assert "`admin@archipel.test` / `adminpw`" in readme
    admin = await login(summary, "admin")
    try:
        caps = await admin.acp(iq_to, HV_NS, "capabilities")
        assert caps[0].tag.endswith("capabilities")
        assert "nodeinfo" in await admin.chat(summary["hypervisor_jid"], "help")
    finally:
        await admin.close()


def test_demo_serves_the_web_client_and_prints_its_url(demo, summary):
    stack = demo.stack
    assert summary["web_url"] == f"http://{stack.domain}:{stack.http_port}/web/"
    assert f"Web client {summary['web_url']}" in demo.output()
    req = urllib.request.Request(f"http://127.0.0.1:{stack.http_port}/web/",
                                 headers={"Host": f"{stack.domain}:{stack.http_port}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert b'src="app.js"' in r.read()


def test_sigterm_stops_everything_the_demo_started(demo):
    pids = demo.pids()
    assert len(pids) >= 5, pids  # demo, agent, slapd, ejabberd, libvirtd
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(60) == 0, demo.output()
    left = [p for p in pids if is_alive(p)]
    assert not left, left
    assert not demo.stack.status()["running"]
    assert "rig demo: stopping the stack" in demo.output()

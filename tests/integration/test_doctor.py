"""``archipel-admin doctor`` on the rig: ready with the session agent's configuration, and the fault named
when ejabberd, libvirtd or the storage cannot be reached (the same configuration pointed elsewhere)."""
from __future__ import annotations

import asyncio
import configparser
import json
import socket
import sys
from pathlib import Path

import pytest

ADMIN = [sys.executable, "-m", "archipelagent.admin.cli"]


async def doctor(conf: Path) -> tuple[int, dict]:
    proc = await asyncio.create_subprocess_exec(*ADMIN, "doctor", "--config", str(conf), "--json",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out, err.decode()
    return proc.returncode, {c["name"]: c for c in json.loads(out)["checks"]}


def variant(agent, tmp_path: Path, name: str, section: str, key: str, value: str) -> Path:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(agent.lib_dir / "archipel.conf")
    cp.set(section, key, value)
    path = tmp_path / f"{name}.conf"
    with open(path, "w") as f:
        cp.write(f)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


async def test_doctor_passes_on_the_rig(agent, admin):
    code, checks = await doctor(agent.lib_dir / "archipel.conf")
    assert code == 0, checks
    for name in ("configuration", "ejabberd", "TLS", "pubsub", "vCard", "registration", "libvirtd", "storage", "LDAP"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "fsync" in checks["storage"]["detail"] and "libvirt 9." in checks["libvirtd"]["detail"]


@pytest.mark.parametrize("name, section, key, value, failing, words", [
    ("ejabberd-down", "XMPP", "xmpp_port", "PORT", "ejabberd", "start ejabberd"),
    ("libvirtd-down", "GLOBAL", "libvirt_uri", "qemu+unix:///system?socket=/nonexistent/libvirt-sock", "libvirtd",
     "start libvirtd"),
    ("storage-down", "VIRTUALMACHINE", "vm_base_path", "/nonexistent/archipel-drives", "storage", "mount the shared storage"),
])
async def test_doctor_names_the_fault(agent, admin, tmp_path, name, section, key, value, failing, words):
    conf = variant(agent, tmp_path, name, section, key, str(closed_port()) if value == "PORT" else value)
    code, checks = await doctor(conf)
    assert code == 1
    assert checks[failing]["status"] == "fail" and words in checks[failing]["fix"], checks[failing]
    others = [c for c in checks.values() if c["status"] == "fail" and c["name"] != failing]
    assert not others, others  # only the fault is reported as one


async def test_doctor_refuses_a_broken_configuration(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[GLOBAL]\nxmpp_server =\n")
    proc = await asyncio.create_subprocess_exec(*ADMIN, "doctor", "--config", str(bad),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and str(bad) in err.decode()

"""The audit log and archipel-admin against the real stack and a real agent process."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent_fixtures import PERMS_NS, grant
from xmpp_client import AcpError

AUDIT_NS = "archipel:audit"
HV_NS = "archipel:hypervisor:control"
REPO = Path(__file__).resolve().parents[2]


async def audit_entries(admin, agent, **filters) -> list[dict]:
    """The audit log through the ACP command (what admins and the CLI use)."""
    attrs = {("audit_action" if k == "action" else k): v for k, v in filters.items() if v is not None}
    query = await admin.acp(agent.full_jid, AUDIT_NS, "get", attrs)
    entries = []
    for el in query:
        entry = dict(el.attrib)
        entry["args"] = {a.get("name"): a.get("value") for a in el}
        entries.append(entry)
    return entries


async def find_entry(admin, agent, predicate, **filters) -> dict:
    for _ in range(20):  # recorded after the reply is sent: allow a moment
        for entry in await audit_entries(admin, agent, **filters):
            if predicate(entry):
                return entry
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit entry matches among {await audit_entries(admin, agent, **filters)}")


async def test_iq_command_is_recorded_with_its_fields(agent, admin, new_user):
    user = await new_user("audited")
    await grant(admin, agent.full_jid, user.jid, "nodeinfo")
    await user.acp(agent.full_jid, HV_NS, "nodeinfo")
    entry = await find_entry(admin, agent, lambda e: e["action"] == "nodeinfo", sender=user.jid)
    assert entry["sender"] == user.jid and entry["entity"] == agent.jid
    assert (entry["transport"], entry["namespace"], entry["outcome"]) == ("iq", HV_NS, "ok")
    assert float(entry["duration"]) >= 0 and entry["date"].endswith("+00:00")
    # the admin's grant is there too, with its arguments
    granted = await find_entry(admin, agent, lambda e: e["action"] == "set" and user.jid in e["args"].get("changes", ""),
                               sender=admin.jid, action="set")
    assert granted["namespace"] == PERMS_NS and 'permission_name="nodeinfo"' in granted["args"]["changes"]


async def test_chat_and_adhoc_commands_are_recorded(agent, admin, new_user):
    user = await new_user("audchat")
    await grant(admin, agent.full_jid, user.jid, "message", "nodeinfo", "ip")
    assert "CPUs at" in await user.chat(agent.full_jid, "nodeinfo")
    result = await user.xmpp.plugin["xep_0050"].send_command(agent.full_jid, f"{HV_NS}#ip", timeout=10)
    assert result["command"]["status"] == "completed"
    chat = await find_entry(admin, agent, lambda e: e["transport"] == "chat", sender=user.jid, action="nodeinfo")
    assert (chat["namespace"], chat["outcome"], chat["entity"]) == (HV_NS, "ok", agent.jid)
    adhoc = await find_entry(admin, agent, lambda e: e["transport"] == "adhoc", sender=user.jid, action="ip")
    assert (adhoc["namespace"], adhoc["outcome"]) == (HV_NS, "ok")


async def test_refusals_are_recorded(agent, admin, new_user):
    stranger = await new_user("audstranger")
    with pytest.raises(AcpError) as exc:
        await stranger.acp(agent.full_jid, HV_NS, "capabilities")
    assert exc.value.is_permission_error
    assert "not allowed to talk to me" in await stranger.chat(agent.full_jid, "nodeinfo")
    notes = (await stranger.xmpp.plugin["xep_0050"].send_command(agent.full_jid, f"{HV_NS}#migrationinfo", timeout=10))["command"]["notes"]
    assert notes[0][0] == "error"
    with pytest.raises(AcpError) as exc:
        await stranger.acp(agent.full_jid, HV_NS, None)
    assert exc.value.code == -42
    with pytest.raises(AcpError) as exc:
        await stranger.acp(agent.full_jid, HV_NS, "make_coffee", {"admin_password": "hunter2"})
    assert exc.value.code == -44
    with pytest.raises(AcpError) as exc:  # a stranger may not read the audit log either
        await stranger.acp(agent.full_jid, AUDIT_NS, "get")
    assert exc.value.is_permission_error

    def seen(**fields):
        return lambda e: all(e.get(k) == v for k, v in fields.items())

    await find_entry(admin, agent, seen(action="capabilities", transport="iq", outcome="denied"), sender=stranger.jid)
    await find_entry(admin, agent, seen(action="nodeinfo", transport="chat", outcome="denied"), sender=stranger.jid)
    await find_entry(admin, agent, seen(action="migrationinfo", transport="adhoc", outcome="denied"), sender=stranger.jid)
    await find_entry(admin, agent, seen(namespace=AUDIT_NS, action="get", outcome="denied"), sender=stranger.jid)
    malformed = await find_entry(admin, agent, seen(action="", outcome="error:-42"), sender=stranger.jid)
    assert malformed["namespace"] == HV_NS
    unknown = await find_entry(admin, agent, seen(action="make_coffee", outcome="error:-44"), sender=stranger.jid)
    assert unknown["args"] == {"admin_password": "***"}  # redacted by name
    denied = await audit_entries(admin, agent, sender=stranger.jid, outcome="denied")
    assert {e["action"] for e in denied} >= {"capabilities", "nodeinfo", "migrationinfo", "get"}
    errors = await audit_entries(admin, agent, sender=stranger.jid, outcome="error")
    assert {e["outcome"] for e in errors} == {"error:-42", "error:-44"}


async def test_audit_query_filters_and_limits(agent, admin, new_user):
    user = await new_user("audfilter")
    await grant(admin, agent.full_jid, user.jid, "ip")
    for _ in range(3):
        await user.acp(agent.full_jid, HV_NS, "ip")
    entries = await audit_entries(admin, agent, sender=user.jid, limit=2)
    assert len(entries) == 2 and all(e["action"] == "ip" for e in entries)
    assert entries[0]["date"] >= entries[1]["date"]  # newest first
    assert len(await audit_entries(admin, agent, sender=user.jid, since="10m")) == 3
    assert await audit_entries(admin, agent, sender=user.jid, since="2999-01-01T00:00") == []
    with pytest.raises(AcpError) as exc:
        await admin.acp(agent.full_jid, AUDIT_NS, "get", {"limit": "5000"})
    assert exc.value.code == -46
    text = await admin.chat(agent.full_jid, "audit 3")
    assert "via" in text and len(text.splitlines()) == 3


async def test_audit_file_is_owner_only(agent, admin):
    path = agent.lib_dir / "audit.sqlite3"
    assert path.exists()
    assert path.stat().st_mode & 0o077 == 0


# ------------------------------------------------------------- archipel-admin
@pytest.fixture(scope="module")
def summary(stack, agent, tmp_path_factory):
    path = tmp_path_factory.mktemp("admin-cli") / "summary.json"
    return stack.write_summary(path, hypervisor_full_jid=agent.full_jid)


def admin_cli(*argv, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archipelagent.admin.cli", *argv], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def run_cli_async(*argv, **kwargs):
    return asyncio.to_thread(admin_cli, *argv, **kwargs)


async def test_cli_ping(summary):
    done = await run_cli_async("--summary", str(summary), "ping")
    assert done.returncode == 0, done.stderr
    assert "pong in" in done.stdout
    done = await run_cli_async("ping", "--summary", str(summary), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rtt_ms"] > 0


async def test_cli_grant_revoke_checked_through_acp(summary, agent, admin, new_user):
    user = await new_user("cligrant")
    done = await run_cli_async("--summary", str(summary), "permissions", "grant", user.jid, "nodeinfo", "ip")
    assert done.returncode == 0, done.stderr
    assert "granted nodeinfo, ip" in done.stdout
    reply = await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_target": user.jid})
    assert {el.get("name") for el in reply} == {"nodeinfo", "ip"}
    done = await run_cli_async("--summary", str(summary), "permissions", "get", user.jid, "--json")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["permissions"]) == {"nodeinfo", "ip"}
    done = await run_cli_async("--summary", str(summary), "permissions", "revoke", user.jid, "ip")
    assert done.returncode == 0, done.stderr
    reply = await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_target": user.jid})
    assert {el.get("name") for el in reply} == {"nodeinfo"}
    done = await run_cli_async("--summary", str(summary), "permissions", "list")
    assert done.returncode == 0 and "permission_set" in done.stdout and "audit" in done.stdout


async def test_cli_raw_acp_prints_the_reply(summary, agent):
    done = await run_cli_async("--summary", str(summary), "acp", HV_NS, "migrationinfo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f'<query xmlns="{HV_NS}">') and "libvirt_uri=" in done.stdout


async def test_cli_shows_the_audit_log(summary, agent, admin, new_user):
    user = await new_user("cliaudit")
    await grant(admin, agent.full_jid, user.jid, "ip")
    await user.acp(agent.full_jid, HV_NS, "ip")
    done = await run_cli_async("--summary", str(summary), "audit", "--sender", user.jid, "--limit", "10")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["date", "(UTC)", "sender"]
    assert any(user.jid in line and "ip" in line and " ok " in f" {line} " for line in lines[2:])
    done = await run_cli_async("--summary", str(summary), "audit", "--sender", admin.jid, "--action", "set", "--json")
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert entries and all(e["action"] == "set" and e["sender"] == admin.jid for e in entries)
    assert any(user.jid in e["args"].get("changes", "") for e in entries)


async def test_cli_wrong_password_exits_3(summary, stack):
    wrong = Path(summary).with_name("wrong.pw")
    wrong.write_text("definitely-wrong\n")
    done = await run_cli_async("--summary", str(summary), "--password-file", str(wrong), "ping")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "authentication failed" in done.stderr


async def test_cli_refused_command_exits_1(summary, stack, new_user):
    stranger = await new_user("clistranger")
    password = uuid.uuid4().hex
    name = f"clirefused-{uuid.uuid4().hex[:6]}"
    jid = stack.register_user(name, password)
    done = await run_cli_async("--summary", str(summary), "--jid", jid, "permissions", "grant", stranger.jid, "all",
                               env={"ARCHIPEL_ADMIN_PASSWORD": password})
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "permission denied" in done.stderr
    done = await run_cli_async("--summary", str(summary), "--jid", jid, "audit", "--json",
                               env={"ARCHIPEL_ADMIN_PASSWORD": password})
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["permission"] is True

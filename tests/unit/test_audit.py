"""The audit log store, its redaction and the hooks in dispatch and chat, without any server."""
from __future__ import annotations

import asyncio
import sqlite3
import stat
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import pytest_asyncio

from archipelagent.audit import (
    REDACTED,
    AuditLog,
    audit_arguments,
    format_date,
    outcome_of,
    parse_since,
)
from archipelagent.audit.commands import commands as audit_commands
from archipelagent.audit.commands import get_audit, render_entries
from archipelagent.commands import Arg, CommandSet, Registry
from archipelagent.commands.acp import raw_arguments
from archipelagent.commands.chat import NOT_ALLOWED, ChatTransport
from archipelagent.commands.dispatch import run_command
from archipelagent.errors import ArchipelError, InvalidArgument, MissingArgument, NotFound, PermissionDenied, UnknownAction

HV = "hypervisor@archipel.test"
ALICE = "alice@archipel.test"
BOB = "bob@archipel.test"


def rows_on_disk(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT sender, action, outcome FROM audit ORDER BY id").fetchall()


def entry(audit: AuditLog, **fields) -> None:
    base = dict(sender=ALICE, entity=HV, transport="iq", namespace="ns:a", action="park", args={}, outcome="ok",
                duration_ms=1.5)
    base.update(fields)
    audit.record(**base)


@pytest_asyncio.fixture
async def audit(tmp_path):
    log = await AuditLog.open(tmp_path / "lib" / "audit.sqlite3", flush_interval=0.05)
    yield log
    await log.close()


# ------------------------------------------------------------------ the store
async def test_file_is_owner_only_and_wal(tmp_path):
    log = await AuditLog.open(tmp_path / "lib" / "audit.sqlite3")
    entry(log)
    await log.flush()
    try:
        path = tmp_path / "lib" / "audit.sqlite3"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                assert stat.S_IMODE(side.stat().st_mode) & 0o077 == 0
    finally:
        await log.close()


async def test_record_is_batched_then_written_by_the_timer(tmp_path):
    path = tmp_path / "audit.sqlite3"
    log = await AuditLog.open(path, flush_interval=0.2, batch_size=100)
    try:
        for _ in range(5):
            entry(log)
        assert rows_on_disk(path) == []  # nothing written on the command path
        assert log.pending == 5
        for _ in range(40):
            await asyncio.sleep(0.05)
            if len(rows_on_disk(path)) == 5:
                break
        assert len(rows_on_disk(path)) == 5
        assert log.pending == 0
    finally:
        await log.close()


async def test_a_full_batch_is_written_without_waiting_for_the_timer(tmp_path):
    path = tmp_path / "audit.sqlite3"
    log = await AuditLog.open(path, flush_interval=30, batch_size=100)
    try:
        for _ in range(100):
            entry(log)
        for _ in range(40):
            await asyncio.sleep(0.05)
            if len(rows_on_disk(path)) == 100:
                break
        assert len(rows_on_disk(path)) == 100
    finally:
        await log.close()


async def test_close_flushes_every_pending_row(tmp_path):
    path = tmp_path / "audit.sqlite3"
    log = await AuditLog.open(path, flush_interval=60, batch_size=10_000)
    for index in range(250):
        entry(log, action=f"a{index}")
    await log.close()
    rows = rows_on_disk(path)
    assert len(rows) == 250 and rows[0][1] == "a0" and rows[-1][1] == "a249"
    entry(log)  # after close: dropped with a warning, never an exception


async def test_pruning_keeps_the_newest_rows_and_drops_old_ones(tmp_path):
    path = tmp_path / "audit.sqlite3"
    log = await AuditLog.open(path, max_rows=5, max_days=30, flush_interval=60)
    try:
        old = format_date(datetime.now(timezone.utc) - timedelta(days=31))
        entry(log, action="ancient", date=old)
        for index in range(10):
            entry(log, action=f"a{index}")
        await log.flush()
        assert await log.count() == 11
        assert await log.prune() == 6
        assert [row[1] for row in rows_on_disk(path)] == [f"a{i}" for i in range(5, 10)]
    finally:
        await log.close()


async def test_pruning_bounds_can_be_disabled(tmp_path):
    log = await AuditLog.open(tmp_path / "audit.sqlite3", max_rows=0, max_days=0)
    try:
        entry(log, date=format_date(datetime(2000, 1, 1, tzinfo=timezone.utc)))
        for _ in range(3):
            entry(log)
        await log.flush()
        assert await log.prune() == 0 and await log.count() == 4
    finally:
        await log.close()


async def test_query_filters_and_order(audit):
    entry(audit, sender=ALICE, action="park", outcome="ok")
    entry(audit, sender=BOB, action="park", outcome="denied", entity="vm1@archipel.test")
    entry(audit, sender=BOB, action="unpark", outcome="error:-46", args={"name": "x"})
    entry(audit, sender=ALICE, action="unpark", outcome="error:-1", transport="chat")
    everything = await audit.query()  # pending rows are flushed first
    assert [e["action"] for e in everything] == ["unpark", "unpark", "park", "park"]  # newest first
    assert set(everything[0]) >= {"date", "sender", "entity", "transport", "namespace", "action", "args",
                                  "outcome", "duration_ms"}
    assert [e["sender"] for e in await audit.query(sender="Bob@Archipel.test/laptop")] == [BOB, BOB]
    assert [e["entity"] for e in await audit.query(entity="vm1@archipel.test")] == ["vm1@archipel.test"]
    assert len(await audit.query(action="park")) == 2
    assert [e["outcome"] for e in await audit.query(outcome="denied")] == ["denied"]
    assert {e["outcome"] for e in await audit.query(outcome="error")} == {"error:-46", "error:-1"}
    assert (await audit.query(outcome="error:-46"))[0]["args"] == {"name": "x"}
    assert len(await audit.query(limit=1)) == 1
    assert len(await audit.query(sender=BOB, action="unpark")) == 1


async def test_query_since_accepts_iso_and_ages(audit):
    old = format_date(datetime.now(timezone.utc) - timedelta(hours=3))
    entry(audit, action="old", date=old)
    entry(audit, action="new")
    assert [e["action"] for e in await audit.query(since="1h")] == ["new"]
    assert len(await audit.query(since="1d")) == 2
    an_hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert [e["action"] for e in await audit.query(since=an_hour_ago)] == ["new"]
    assert len(await audit.query(since=an_hour_ago + "Z")) == 1
    with pytest.raises(ValueError):
        await audit.query(since="yesterday-ish")


def test_parse_since_and_outcomes():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_since("30m", now=now) == "2024-05-01T11:30:00.000+00:00"
    assert parse_since("2024-05-01T14:00+02:00") == "2024-05-01T12:00:00.000+00:00"
    assert parse_since(None) is None
    assert outcome_of(None) == "ok"
    assert outcome_of(PermissionDenied("park")) == "denied"
    assert outcome_of(InvalidArgument("x", "bad")) == "error:-46"
    assert outcome_of(UnknownAction("nope")) == "error:-44"
    assert outcome_of(RuntimeError("bug")) == "error:internal"


# ------------------------------------------------------------------ redaction
SECRET_CMD = CommandSet()


@SECRET_CMD.command("ns:a", "login", args=(Arg("user"), Arg("code", secret=True), Arg("vm_password", required=False),
                                           Arg("domain", source="element", required=False)))
async def _login(ctx, user, code, vm_password, domain):
    return None


@SECRET_CMD.command("ns:a", "set", args=(Arg("changes", source="children"),))
async def _set(ctx, changes):
    return None


def test_secret_arguments_and_secret_names_are_redacted():
    login = SECRET_CMD.commands[0]
    raw = {"user": "alice", "code": "1234", "vm_password": "hunter2", "api_token": "t0k", "SharedSecret": "s"}
    assert audit_arguments(raw, login) == {"user": "alice", "code": REDACTED, "vm_password": REDACTED,
                                           "api_token": REDACTED, "SharedSecret": REDACTED}


def test_secrets_inside_xml_arguments_are_redacted():
    login = SECRET_CMD.commands[0]
    archipel = ET.fromstring(
        '<archipel xmlns="ns:a" action="login" user="bob" code="9"><domain type="kvm">'
        '<graphics type="vnc" passwd="vncpw"/><password>pw</password><auth secret_key="k"/>'
        '<name>vm</name></domain></archipel>')
    recorded = audit_arguments(raw_arguments(archipel), login)
    assert recorded["user"] == "bob" and recorded["code"] == REDACTED
    text = recorded["domain"]
    assert "vncpw" not in text and ">pw<" not in text and '"k"' not in text
    assert "<ns0:name>vm</ns0:name>" in text or "vm</" in text
    assert text.count(REDACTED) == 3
    assert archipel.find("{ns:a}domain/{ns:a}graphics").get("passwd") == "vncpw"  # the request is untouched


def test_acp_children_are_recorded_once():
    set_cmd = SECRET_CMD.commands[1]
    archipel = ET.fromstring('<archipel action="set"><permission permission_name="a"/>'
                             '<permission permission_name="b"/></archipel>')
    recorded = audit_arguments(raw_arguments(archipel), set_cmd)
    assert list(recorded) == ["changes"]
    assert 'permission_name="a"' in recorded["changes"] and 'permission_name="b"' in recorded["changes"]
    # unknown action: no command, the children are still recorded
    assert list(audit_arguments(raw_arguments(archipel), None)) == ["children"]


def test_long_values_are_truncated():
    recorded = audit_arguments({"text": "x" * 10_000})
    assert len(recorded["text"]) < 2100 and "more characters" in recorded["text"]


# ------------------------------------------------ hooks: dispatch and chat
class FakePermissions:
    def __init__(self, allowed: set[tuple[str, str]]):
        self.allowed = allowed

    async def check(self, entity, kind, user, permission):
        return (user, permission) in self.allowed or (user, "all") in self.allowed

    async def require(self, entity, kind, user, permission, action=None):
        if not await self.check(entity, kind, user, permission):
            raise PermissionDenied(action or permission)


def make_entity(audit: AuditLog, allowed: set[tuple[str, str]]):
    commands = CommandSet()

    @commands.command("ns:a", "park", chat=("park",), args=(Arg("count", parse=int), Arg("password", required=False)))
    async def park(ctx, count, password):
        if count < 0:
            raise NotFound("no such thing")
        if count == 13:
            raise RuntimeError("a bug")
        return None

    registry = Registry()
    registry.add_set(commands)
    registry.add_set(audit_commands)
    agent = SimpleNamespace(audit=audit, permissions=FakePermissions(allowed), registry=registry)
    entity = SimpleNamespace(agent=agent, jid=HV, kind="hypervisor", migrating=False)
    return entity, registry.lookup("hypervisor", "ns:a", "park")


async def test_run_command_records_every_outcome(audit):
    entity, park = make_entity(audit, {(ALICE, "park")})
    await run_command(entity, park, f"{ALICE}/laptop", {"count": "1", "password": "hunter2"}, "iq")
    with pytest.raises(PermissionDenied):
        await run_command(entity, park, BOB, {"count": "1"}, "adhoc")
    with pytest.raises(MissingArgument):
        await run_command(entity, park, ALICE, {}, "iq")
    with pytest.raises(InvalidArgument):
        await run_command(entity, park, ALICE, {"count": "many"}, "iq")
    with pytest.raises(NotFound):
        await run_command(entity, park, ALICE, {"count": "-1"}, "iq")
    with pytest.raises(RuntimeError):
        await run_command(entity, park, ALICE, {"count": "13"}, "iq")
    entries = list(reversed(await audit.query()))
    assert [(e["sender"], e["transport"], e["outcome"]) for e in entries] == [
        (ALICE, "iq", "ok"), (BOB, "adhoc", "denied"), (ALICE, "iq", "error:-45"), (ALICE, "iq", "error:-46"),
        (ALICE, "iq", "error:-47"), (ALICE, "iq", "error:internal"),
    ]
    first = entries[0]
    assert first["entity"] == HV and first["namespace"] == "ns:a" and first["action"] == "park"
    assert first["args"] == {"count": "1", "password": REDACTED}
    assert first["duration_ms"] >= 0
    assert first["date"].endswith("+00:00")


async def test_chat_refusals_and_help_are_recorded(audit):
    entity, _park = make_entity(audit, {(ALICE, "message"), (ALICE, "park")})
    chat = ChatTransport(entity)
    assert await chat.answer(f"{BOB}/phone", "park 3 secretpw") == NOT_ALLOWED
    assert "I don't know 'fly'" in await chat.answer(ALICE, "fly me to the moon")
    assert "Commands you can use" in await chat.answer(ALICE, "help")
    assert "Error" in await chat.answer(ALICE, "park 1 2 3")  # too many words
    assert "Done" in await chat.answer(ALICE, "park 2")
    entries = list(reversed(await audit.query()))
    got = [(e["sender"], e["namespace"], e["action"], e["outcome"], e["args"]) for e in entries]
    assert got == [
        (BOB, "ns:a", "park", "denied", {"count": "3", "password": REDACTED}),
        (ALICE, "", "fly", "error:-44", {}),
        (ALICE, "", "help", "ok", {}),
        (ALICE, "ns:a", "park", "error:-46", {}),
        (ALICE, "ns:a", "park", "ok", {"count": "2"}),
    ]
    assert all(e["transport"] == "chat" for e in entries)


async def test_audit_get_command_and_its_chat_rendering(audit):
    entity, park = make_entity(audit, {(ALICE, "park")})
    await run_command(entity, park, ALICE, {"count": "1", "password": "pw"}, "chat")
    ctx = SimpleNamespace(agent=entity.agent)
    payload = await get_audit(ctx, limit=10, sender=ALICE, audit_action=None, outcome=None, entity=None, since=None)
    assert len(payload) == 1
    el = payload[0]
    assert el.tag == "entry" and el.get("sender") == ALICE and el.get("transport") == "chat"
    assert el.get("outcome") == "ok" and float(el.get("duration")) >= 0
    assert {a.get("name"): a.get("value") for a in el} == {"count": "1", "password": REDACTED}
    text = render_entries(payload)
    assert ALICE in text and "ns:a park via chat: ok" in text
    assert render_entries([]) == "No audit entries match."


def test_audit_get_arguments_are_checked():
    command = audit_commands.commands[0]
    assert command.permission == "audit" and command.kinds == frozenset({"hypervisor"})
    assert command.chat == ("audit",)
    args = {a.name: a for a in command.args}
    assert args["limit"].convert("1000") == 1000
    for name, bad in (("limit", "0"), ("limit", "1001"), ("outcome", "maybe"), ("since", "soon")):
        with pytest.raises(InvalidArgument):
            args[name].convert(bad)
    assert args["sender"].convert("Alice@Archipel.test/x") == ALICE


class LdapDown(FakePermissions):
    async def check(self, entity, kind, user, permission):
        from archipelagent.errors import Unavailable
        raise Unavailable("LDAP is unreachable")


async def test_the_chat_gate_audits_an_ldap_outage(audit):
    entity, _park = make_entity(audit, set())
    entity.agent.permissions = LdapDown(set())
    with pytest.raises(ArchipelError):
        await ChatTransport(entity).answer(f"{BOB}/phone", "park 3")
    (row,) = await audit.query()
    assert (row["sender"], row["transport"], row["action"], row["outcome"]) == (BOB, "chat", "park", "error:-48")


async def test_subscription_decisions_are_recorded(audit):
    from archipelagent.audit import record_subscription
    from archipelagent.errors import Unavailable

    entity, _park = make_entity(audit, set())
    record_subscription(entity, f"{ALICE}/x", None)
    record_subscription(entity, BOB, PermissionDenied("presence"))
    record_subscription(entity, BOB, Unavailable("LDAP is unreachable"))
    got = [(e["sender"], e["transport"], e["action"], e["outcome"]) for e in reversed(await audit.query())]
    assert got == [(ALICE, "presence", "subscribe", "ok"), (BOB, "presence", "subscribe", "denied"),
                   (BOB, "presence", "subscribe", "error:-48")]

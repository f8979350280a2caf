"""An agent logging at debug level (slixmpp's raw stanzas included) never writes a password.

Regression of issue 10 item 8: SASL PLAIN payloads (base64 of the password) and
SCRAM client messages went to the log at debug level.
"""
from __future__ import annotations

import base64
import binascii
import re
import shutil
import sqlite3
import uuid as uuidlib

from agent_fixtures import AgentHandle, client_for, write_config
from agent_process import AgentProcess
from vm_helpers import HV_NS, alloc, unique_name, vm_full, wait_vm_ready

B64 = re.compile(r"[A-Za-z0-9+/]{12,}={0,2}")


def leaks(text: str, secret: str) -> list[str]:
    """Where ``secret`` shows in ``text``: plainly, or inside any base64 token."""
    found = [secret] if secret in text else []
    for token in B64.findall(text):
        padded = token + "=" * (-len(token) % 4)
        try:
            decoded = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if secret.encode() in decoded:
            found.append(token)
    return found


async def test_debug_log_holds_no_password(stack):
    hv = f"hv-debug-{uuidlib.uuid4().hex[:6]}"
    hv_jid = f"{hv}@{stack.domain}"
    hv_password = "hv-pw-" + uuidlib.uuid4().hex
    lib_dir = stack.state_dir / "agent-debug-log"
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir(parents=True)
    conf = write_config(stack, lib_dir, {"HYPERVISOR": {"hypervisor_xmpp_jid": hv_jid, "hypervisor_name": hv},
                                         "LOGGING": {"logging_level": "debug"}}, password=hv_password)
    process = AgentProcess(conf, lib_dir / "agent.out")
    handle = AgentHandle(stack, process, hv_jid, lib_dir)
    handle.full_jid = f"{hv_jid}/{hv}"
    user = stack.admin_user
    admin = await client_for(stack, user["jid"], user["password"], "debug-log-test").connect()
    process.start()
    try:
        await handle.wait_ready(admin)
        jid = await alloc(admin, handle.full_jid, unique_name("dbg"))
        await wait_vm_ready(admin, vm_full(jid, hv_jid))
        with sqlite3.connect(lib_dir / "hypervisor.sqlite3") as db:
            (vm_password,) = db.execute("SELECT password FROM vms WHERE jid = ?", (jid,)).fetchone()
        await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
    finally:
        process.stop()
        await admin.close()
    text = process.log_path.read_text(errors="replace")
    assert "SEND: <auth" in text and "<password>***</password>" in text  # debug stanzas were logged
    assert leaks(text, hv_password) == []
    assert leaks(text, vm_password) == []

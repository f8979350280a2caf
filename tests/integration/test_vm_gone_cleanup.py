"""What feature modules keep per VM goes when the VM leaves for good (``VMManager.add_gone_listener``).

A domain unmanaged and managed again gets the same JID: it must not show the
tags of its former life, keep its former OOM value, or run its former owner's
jobs.  A freed VM's item leaves ``/archipel/tags`` (which holds at most 1,000
items: freed VMs' items would push live ones out) and its OOM row goes.
"""
from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET

from test_scheduler import at
from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready

TAGS, TAGS_NODE = "archipel:tags", "/archipel/tags"
OOM = "archipel:vm:oom"
SCHEDULER = "archipel:entity:scheduler"
HV_NS = "archipel:hypervisor:control"


async def tagged(client, stack, jid: str) -> list[str]:
    items = await client.xmpp.plugin["xep_0060"].get_items(stack.pubsub_domain, TAGS_NODE, timeout=10)
    return [i["payload"].get("tags") for i in items["pubsub"]["items"] if i["id"] == jid]


def oom_rows(lib_dir, uuid: str) -> int:
    with sqlite3.connect(lib_dir / "oom.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM oom WHERE uuid = ?", (uuid,)).fetchone()[0]


async def test_a_domain_managed_again_starts_clean_and_a_freed_vm_leaves_nothing(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("gone"))
    full, uuid = vm_full(jid, agent.jid), jid.split("@")[0]
    item = ET.Element("item", {"jid": jid})
    await wait_vm_ready(admin, full)
    await admin.see(agent.jid)  # the tags node is read by those who see the hypervisor
    await admin.acp(full, TAGS, "settags", {"tags": "old,life"})
    await admin.acp(full, OOM, "setadjust", {"adjust": "-17"})  # stored for the next start (it is off)
    fields, _when = at(3600)
    await admin.acp(full, SCHEDULER, "schedule", {"job": "create", "comment": "former life", **fields})
    assert await tagged(admin, stack, jid) == ["old,life"]
    assert (await admin.acp(full, OOM, "getadjust"))[0].get("adjust") == "-17"
    assert [j.get("comment") for j in await admin.acp(full, SCHEDULER, "jobs")] == ["former life"]

    await admin.acp(agent.full_jid, HV_NS, "unmanage", children=[item])
    assert await tagged(admin, stack, jid) == []
    assert oom_rows(agent.lib_dir, uuid) == 0
    await admin.acp(agent.full_jid, HV_NS, "manage", children=[item])
    await wait_vm_ready(admin, full)
    assert (await admin.acp(full, OOM, "getadjust"))[0].get("adjust") == "0"
    assert list(await admin.acp(full, SCHEDULER, "jobs")) == []

    await admin.acp(full, TAGS, "settags", {"tags": "second,life"})
    await admin.acp(full, OOM, "setadjust", {"adjust": "5"})
    assert await tagged(admin, stack, jid) == ["second,life"] and oom_rows(agent.lib_dir, uuid) == 1
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
    assert await tagged(admin, stack, jid) == []
    assert oom_rows(agent.lib_dir, uuid) == 0

"""What a restarted agent sends again, and what it does not (xmpp/published.py).

A restart does not republish an unchanged vCard nor re-check a node it checked
before (campus scale: 1,000 entities logging in, issue 16), but whatever the
server lost (an account made again) is published again, and deleting the
agent's ``published.sqlite3`` makes it publish everything again.
"""
from __future__ import annotations

import asyncio

from agent_fixtures import admin_client, second_agent
from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready


async def vcard_name(client, jid: str) -> str:
    vcard = await client.xmpp.plugin["xep_0054"].get_vcard(jid, timeout=10)
    return vcard["vcard_temp"]["FN"]


async def eventually(check, what: str, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


async def test_a_restart_publishes_only_what_the_server_lost(stack):
    handle = second_agent(stack, "hv-published", {"LOGGING": {"logging_level": "DEBUG"}})
    process = handle.process
    process.start()
    admin = await admin_client(stack, "published-test")
    try:
        await handle.wait_ready(admin)
        kept_name, lost_name = unique_name("kept"), unique_name("lost")
        kept = await alloc(admin, handle.full_jid, kept_name)
        lost = await alloc(admin, handle.full_jid, lost_name)
        for jid in (kept, lost):
            await wait_vm_ready(admin, vm_full(jid, handle.jid))
        assert await vcard_name(admin, kept) == kept_name
        await asyncio.sleep(1.5)  # the digests are written behind (published.FLUSH_DELAY)
        process.stop()

        # While the agent is away: a vCard edited on the server, an account lost with all it held.
        user, host = kept.split("@")
        await asyncio.to_thread(stack.ejabberdctl, "set_vcard", user, host, "FN", "edited on the server")
        user, host = lost.split("@")
        await asyncio.to_thread(stack.ejabberdctl, "unregister", user, host)

        since = process.log_size()
        process.start()
        await handle.wait_ready(admin)
        for jid in (kept, lost):
            await wait_vm_ready(admin, vm_full(jid, handle.jid))

        def log() -> str:
            return process.log_path.read_text(errors="replace")[since:]

        async def lost_published() -> bool:
            return (f"created pubsub node /archipel/{lost}/events" in log()
                    and await vcard_name(admin, lost) == lost_name)
        # The account made again holds the vCard and the events node again.
        await eventually(lost_published, "the account made again got no vCard or no node")
        assert f"{lost}: password refused; creating the account" in log()
        # The unchanged vCard was not sent again, nor the checked node made again; the node
        # trusted without a request still carries the VM's pushes.
        assert await vcard_name(admin, kept) == "edited on the server"
        assert f"created pubsub node /archipel/{kept}/events" not in log()
        node = f"/archipel/{kept}/events"
        await admin.subscribe_events(stack.pubsub_domain, kept)
        await admin.acp(vm_full(kept, handle.jid), "archipel:vm:control", "create")
        await admin.next_push(node, "created", timeout=30)
        await admin.acp(vm_full(kept, handle.jid), "archipel:vm:control", "destroy")

        # Without its record of what was published, the agent publishes everything again.
        process.stop()
        (handle.lib_dir / "published.sqlite3").unlink()
        process.start()
        await handle.wait_ready(admin)

        async def kept_published() -> bool:
            return await vcard_name(admin, kept) == kept_name
        await eventually(kept_published, "the vCard was not published again")
        for jid in (kept, lost):
            await admin.acp(handle.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})
    finally:
        await admin.close()
        process.stop()

"""VMManager's gone listeners: every module is told, one failing module does not stop the others."""
from __future__ import annotations

from types import SimpleNamespace

from archipelagent.hypervisor.vms import VMManager


async def test_every_listener_hears_each_gone_vm_even_after_one_fails(caplog):
    vms = VMManager(SimpleNamespace())
    heard = []

    async def broken(uuid, jid):
        raise RuntimeError("module bug")

    async def tags(uuid, jid):
        heard.append(("tags", uuid, jid))

    async def removed(uuid, jid):
        heard.append(("removed", uuid, jid))

    for listener in (broken, tags, removed):
        vms.add_gone_listener(listener)
    vms.remove_gone_listener(removed)
    vms.remove_gone_listener(removed)  # twice is no error
    gone = [SimpleNamespace(uuid="u1", jid="u1@d"), SimpleNamespace(uuid="u2", jid="u2@d")]
    await vms._tell_gone(gone)
    assert heard == [("tags", "u1", "u1@d"), ("tags", "u2", "u2@d")]
    assert [r.getMessage().split(" left")[0] for r in caplog.records] == ["clean-up after VM u1", "clean-up after VM u2"]

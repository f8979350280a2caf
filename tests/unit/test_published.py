"""The record of what was published per entity (xmpp/published.py): digests, forgetting, the file."""
from __future__ import annotations

import os
import stat

from archipelagent.xmpp import published
from archipelagent.xmpp.published import PublishedMemory, digest


def test_a_digest_is_stable_and_follows_every_field():
    fields = {"FN": "vm-1", "ROLE": "virtualmachine"}
    assert digest(fields) == digest(dict(reversed(list(fields.items()))))
    assert digest(fields) != digest({**fields, "FN": "vm-2"})
    assert digest(fields) != digest({**fields, "TITLE": "Virtual machine (QEMU)"})


def test_forgetting_an_entity_forgets_all_it_published_and_only_that():
    memory = PublishedMemory()
    memory.remember("a@test", "vcard", "1")
    memory.remember("a@test", "node", "2")
    memory.remember("b@test", "vcard", "1")
    memory.forget("a@test", "node")
    assert memory.matches("a@test", "vcard", "1") and not memory.matches("a@test", "node", "2")
    memory.forget("a@test")
    assert not memory.matches("a@test", "vcard", "1")
    assert memory.matches("b@test", "vcard", "1") and not memory.matches("b@test", "vcard", "other")


async def test_the_file_keeps_the_digests_across_restarts_owner_only(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "FLUSH_DELAY", 0)
    path = tmp_path / "published.sqlite3"
    memory = await PublishedMemory.open(path)
    for i in range(1000):  # one entity's worth each: written together
        memory.remember(f"vm{i}@test", "vcard", f"d{i}")
    memory.remember("gone@test", "node", "x")
    memory.forget("gone@test")
    await memory.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = await PublishedMemory.open(path)
    try:
        assert all(again.matches(f"vm{i}@test", "vcard", f"d{i}") for i in range(1000))
        assert not again.matches("gone@test", "node", "x")
    finally:
        await again.close()


async def test_a_change_waiting_to_be_written_is_written_at_close(tmp_path):
    path = tmp_path / "published.sqlite3"
    memory = await PublishedMemory.open(path)
    memory.remember("vm@test", "vcard", "d")  # FLUSH_DELAY (1 s) not elapsed
    await memory.close()
    again = await PublishedMemory.open(path)
    try:
        assert again.matches("vm@test", "vcard", "d")
    finally:
        await again.close()

"""An entity's presence (xmpp/entity.py): a change is sent, the same presence again is not."""
from __future__ import annotations

import asyncio

from archipelagent.xmpp.entity import Entity


def bare_entity(status: str, show: str) -> tuple[Entity, list]:
    entity = Entity.__new__(Entity)  # only what set_presence reads
    entity.presence_status, entity.presence_show = status, show
    entity.online = asyncio.Event()
    sent = []
    entity.send_presence = lambda: sent.append((entity.presence_status, entity.presence_show))
    return entity, sent


def test_a_changed_presence_is_sent_an_unchanged_one_is_not():
    """A reconciliation refreshes every VM: unchanged ones must not reach every subscriber again."""
    entity, sent = bare_entity("Off", "xa")
    entity.online.set()
    entity.set_presence("Off", "xa")
    assert sent == []
    entity.set_presence("Running")
    entity.set_presence("Running")
    assert sent == [("Running", "")]
    entity.set_presence("Running", "dnd")  # the show alone changed
    assert sent == [("Running", ""), ("Running", "dnd")]


def test_offline_the_presence_is_kept_for_the_next_session():
    entity, sent = bare_entity("Initializing...", "")
    entity.set_presence("Paused", "away")
    assert sent == [] and (entity.presence_status, entity.presence_show) == ("Paused", "away")

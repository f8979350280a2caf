"""``ensure_node``'s decisions, against scripted answers of a pubsub service (pure logic:
the real service's answers are covered by tests/integration/test_pubsub_nodes.py)."""
from __future__ import annotations

import types

import pytest
from slixmpp.exceptions import IqError, IqTimeout

from archipelagent.xmpp import pubsub
from archipelagent.xmpp.published import PublishedMemory


class Answers:
    """xep_0060 as the function calls it: ``create_node`` answers from a script; the
    affiliation and configuration requests are recorded."""

    def __init__(self, *create_answers):
        self.create_answers = list(create_answers)
        self.calls: list[str] = []

    async def create_node(self, *_args, **_kwargs):
        self.calls.append("create")
        answer = self.create_answers.pop(0)
        if answer is not None:
            raise answer

    async def get_node_affiliations(self, *_args, **_kwargs):
        self.calls.append("affiliations")
        return {"pubsub_owner": {"affiliations": [{"jid": types.SimpleNamespace(bare="vm@test"), "affiliation": "owner"}]}}

    async def set_node_config(self, *_args, **_kwargs):
        self.calls.append("config")


def error(condition: str) -> IqError:
    iq = types.SimpleNamespace()
    exc = IqError.__new__(IqError)
    exc.iq = iq
    exc.condition, exc.text, exc.etype = condition, "", "cancel"
    return exc


class FakeForm:
    def add_field(self, **_kwargs):
        pass


def xmpp_with(plugin: Answers):
    forms = types.SimpleNamespace(make_form=lambda ftype: FakeForm())
    return types.SimpleNamespace(boundjid=types.SimpleNamespace(bare="vm@test"),
                                 plugin={"xep_0060": plugin, "xep_0004": forms})


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(pubsub, "CREATE_RETRY_DELAYS", (0, 0, 0, 0))


async def ensure(plugin: Answers) -> bool:
    return await pubsub.ensure_node(xmpp_with(plugin), "pubsub.test", "/archipel/vm@test/events", {})


async def test_internal_server_error_is_retried_until_created():
    plugin = Answers(error("internal-server-error"), error("internal-server-error"), None)
    assert await ensure(plugin)
    assert plugin.calls == ["create", "create", "create"]


async def test_retries_are_bounded():
    plugin = Answers(*[error("internal-server-error")] * 5)
    assert not await ensure(plugin)
    assert plugin.calls == ["create"] * 5


async def test_a_refusal_is_not_retried():
    plugin = Answers(error("forbidden"))
    assert not await ensure(plugin)
    assert plugin.calls == ["create"]


async def test_a_timeout_is_not_retried():
    plugin = Answers(IqTimeout(types.SimpleNamespace()))
    assert not await ensure(plugin)
    assert plugin.calls == ["create"]


async def test_a_conflict_is_checked_the_first_time():
    plugin = Answers(error("conflict"))
    assert await ensure(plugin)
    assert plugin.calls == ["create", "affiliations", "config"]


async def test_a_node_this_agent_checked_costs_no_request_until_its_account_is_new():
    plugin = Answers(error("conflict"), error("conflict"))
    memory = PublishedMemory()
    node = pubsub.EventsNode(xmpp_with(plugin), "pubsub.test", "vm@test", memory)
    await node.ensure()
    assert node.ready and plugin.calls == ["create", "affiliations", "config"]
    await node.ensure()  # a reconnection
    assert node.ready and plugin.calls == ["create", "affiliations", "config"]
    memory.forget("vm@test")  # the account was made again: a conflict is checked in full
    await node.ensure()
    assert plugin.calls == ["create", "affiliations", "config"] * 2


async def test_a_push_to_a_node_found_missing_makes_it_again_and_is_delivered():
    plugin = Answers(None)  # made again when a push finds it missing
    published = []

    async def publish(*_args, **_kwargs):
        published.append("publish")
        if len(published) == 1:
            raise error("item-not-found")
    plugin.publish = publish
    memory = PublishedMemory()
    node = pubsub.EventsNode(xmpp_with(plugin), "pubsub.test", "vm@test", memory)
    memory.remember("vm@test", "node", node._fingerprint)
    await node.ensure()
    assert node.ready and plugin.calls == []  # trusted: made and checked by an earlier run
    assert await node.publish("archipel:push:test", "changed")
    assert published == ["publish", "publish"] and plugin.calls == ["create"]

"""``ensure_node``'s decisions, against scripted answers of a pubsub service (pure logic:
the real service's answers are covered by tests/integration/test_pubsub_nodes.py)."""
from __future__ import annotations

import types

import pytest
from slixmpp.exceptions import IqError, IqTimeout

from archipelagent.xmpp import pubsub


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


async def ensure(plugin: Answers, **options) -> bool:
    return await pubsub.ensure_node(xmpp_with(plugin), "pubsub.test", "/archipel/vm@test/events", {}, **options)


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


async def test_a_conflict_on_a_node_this_process_checked_is_ours():
    plugin = Answers(error("conflict"))
    assert await ensure(plugin, known_ours=True)
    assert plugin.calls == ["create"]

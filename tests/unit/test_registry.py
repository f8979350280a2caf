"""The command registry, argument parsing and wire shapes, without any server."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from archipelagent.agent import build_registry
from archipelagent.commands import Arg, CommandSet, Registry
from archipelagent.commands.acp import error_element, raw_arguments
from archipelagent.commands.chat import positional_arguments
from archipelagent.commands.dispatch import parse_arguments
from archipelagent.commands.payload import qualify, render_text
from archipelagent.errors import InvalidArgument, MissingArgument, PermissionDenied, UnknownAction


def make_set():
    commands = CommandSet()

    @commands.command("ns:a", "park", chat=("park",), args=(Arg("name"),))
    async def park(ctx, name):
        """Park a VM."""

    @commands.command("ns:a", "parklist", chat=("park list",))
    async def park_list(ctx):
        return None

    @commands.command("ns:a", "memory", kinds=("vm",), args=(Arg("value", parse=int),))
    async def memory(ctx, value):
        return None

    return commands


def test_permission_defaults_to_action_and_help_to_docstring():
    cmds = {c.action: c for c in make_set()}
    assert cmds["park"].permission == "park"
    assert cmds["park"].help == "Park a VM."
    assert cmds["park"].node == "ns:a#park"


def test_lookup_is_per_kind():
    registry = Registry()
    registry.add_set(make_set())
    assert registry.lookup("vm", "ns:a", "memory") is not None
    assert registry.lookup("hypervisor", "ns:a", "memory") is None
    assert registry.namespaces("hypervisor") == ("ns:a",)


def test_duplicate_declaration_is_an_error():
    registry = Registry()
    registry.add_set(make_set())
    with pytest.raises(ValueError):
        registry.add_set(make_set())


def test_chat_longest_phrase_wins_over_archipel_prefix_bug():
    registry = Registry()
    registry.add_set(make_set())
    command, words = registry.match_chat("hypervisor", "Park List please")
    assert command.action == "parklist" and words == ["please"]
    command, words = registry.match_chat("hypervisor", "park vm1")
    assert command.action == "park" and words == ["vm1"]
    assert registry.match_chat("hypervisor", "parking") is None


def test_argument_parsing_errors_are_distinct():
    cmds = {c.action: c for c in make_set()}
    with pytest.raises(MissingArgument):
        parse_arguments(cmds["memory"], {})
    with pytest.raises(InvalidArgument) as err:
        parse_arguments(cmds["memory"], {"value": "lots"})
    assert err.value.code == -46 and "value" in err.value.message
    assert parse_arguments(cmds["memory"], {"value": "12"}) == {"value": 12}


def test_choices_are_enforced():
    arg = Arg("mode", choices=("a", "b"))
    with pytest.raises(InvalidArgument):
        arg.convert("c")


def test_chat_positional_arguments():
    cmds = {c.action: c for c in make_set()}
    assert positional_arguments(cmds["park"], ["vm1"]) == {"name": "vm1"}
    with pytest.raises(InvalidArgument):
        positional_arguments(cmds["park"], ["vm1", "extra"])


def test_error_element_has_archipel_shape():
    el = error_element(PermissionDenied("capabilities"), "archipel:hypervisor:control", "capabilities")
    assert el.get("code") == "-1" and el.get("type") == "cancel"
    tags = [child.tag for child in el]
    assert "{archipel:error:permission}archipel-error-permission" in tags
    assert "{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden" in tags
    text = el.find("{urn:ietf:params:xml:ns:xmpp-stanzas}text").text
    assert text == "Cannot use 'capabilities': permission denied\n\narchipel:hypervisor:control\ncapabilities"
    assert UnknownAction("x").code != -42


def test_raw_arguments_collects_attributes_and_children():
    archipel = ET.fromstring("<archipel xmlns='ns' action='define' name='x'><domain type='kvm'/></archipel>")
    raw = raw_arguments(archipel)
    assert raw["name"] == "x" and "action" not in raw
    assert raw["domain"].get("type") == "kvm"
    assert len(raw["__children__"]) == 1


def test_qualify_and_render():
    el = qualify(ET.fromstring("<info state='1'><x/></info>"), "ns:q")
    assert el.tag == "{ns:q}info" and el[0].tag == "{ns:q}x"
    assert render_text(None) == "Done."
    assert render_text([ET.Element("ip", {"v": "4"})]) == "ip v=4"


def test_real_registry_declares_issue_two_commands():
    registry = build_registry()
    hv = {(c.namespace, c.action) for c in registry.for_kind("hypervisor")}
    for action in ("capabilities", "nodeinfo", "ip", "migrationinfo", "rostervm"):
        assert ("archipel:hypervisor:control", action) in hv
    for action in ("list", "get", "getown", "set", "setown"):
        assert ("archipel:permissions", action) in hv
    assert registry.lookup("hypervisor", "archipel:hypervisor:control", "migrationinfo").permission == "migrationinfo"


def test_log_filters_redact_passwords_and_drop_slixmpp_sasl_noise():
    import logging
    from archipelagent.logs import RedactingFilter, SlixmppNoiseFilter, redact
    assert "s3cret" not in redact("<password>s3cret</password> password=s3cret")
    noise = logging.LogRecord("slixmpp.features.feature_mechanisms.mechanisms", logging.ERROR, "", 0,
                              "No appropriate login method.", (), None)
    assert not SlixmppNoiseFilter().filter(noise)
    kept = logging.LogRecord("archipelagent", logging.INFO, "", 0, "login password=%s", ("hunter2",), None)
    assert RedactingFilter().filter(kept) and "hunter2" not in kept.getMessage()

"""archipel-admin: argument parsing, connection settings and exit codes, without any agent."""
from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET

import pytest

from archipelagent.admin import cli
from archipelagent.admin.client import AgentError

HV = "hypervisor@archipel.test/hv-demo"


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


@pytest.fixture
def summary(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not really a CA\n")
    path = tmp_path / "demo.json"
    path.write_text(json.dumps({
        "xmpp_host": "127.0.0.1", "xmpp_port": 15222, "ca_file": str(ca), "hypervisor_full_jid": HV,
        "users": [{"jid": "student1@archipel.test", "password": "student1pw", "role": "student"},
                  {"jid": "admin@archipel.test", "password": "adminpw", "role": "admin"}],
    }))
    return path


def test_every_subcommand_has_help(capsys):
    for argv in (["--help"], ["ping", "--help"], ["acp", "--help"], ["permissions", "--help"],
                 ["permissions", "list", "--help"], ["permissions", "get", "--help"],
                 ["permissions", "grant", "--help"], ["permissions", "revoke", "--help"], ["audit", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: archipel-admin" in out and "--jid" in out


def test_connection_options_before_or_after_the_subcommand():
    before = parse("--jid", "a@b.c", "--port", "15222", "ping")
    after = parse("ping", "--jid", "a@b.c", "--port", "15222")
    assert (before.jid, before.port) == (after.jid, after.port) == ("a@b.c", 15222)
    mixed = parse("--jid", "a@b.c", "permissions", "grant", "--json", "u@b.c", "alloc", "free")
    assert mixed.jid == "a@b.c" and mixed.json is True
    assert mixed.user == "u@b.c" and mixed.permissions == ["alloc", "free"]


def test_subcommand_arguments():
    args = parse("acp", "archipel:permissions", "get", "permission_target=u@b.c", "--xml", "<x/>", "--iq-type", "set")
    assert (args.namespace, args.action, args.pairs, args.xml, args.iq_type) == (
        "archipel:permissions", "get", ["permission_target=u@b.c"], ["<x/>"], "set")
    args = parse("permissions", "revoke", "--entity", "vm@b.c/x", "u@b.c", "alloc")
    assert args.run is cli.run_permissions_revoke and args.entity == "vm@b.c/x"
    args = parse("audit", "--sender", "u@b.c", "--outcome", "denied", "--limit", "5", "--since", "2h")
    assert (args.sender, args.outcome, args.limit, args.since, args.run) == ("u@b.c", "denied", 5, "2h", cli.run_audit)


@pytest.mark.parametrize("argv", [[], ["permissions"], ["permissions", "grant", "u@b.c"], ["audit", "--limit", "x"],
                                  ["acp", "ns"], ["frobnicate"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_key_value_pairs_and_xml_children(tmp_path):
    assert cli.parse_pairs(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(cli.UsageError):
        cli.parse_pairs(["novalue"])
    children = cli.parse_xml_children(["<permission a='1'/><permission a='2'/>", "<domain/>"])
    assert [c.tag for c in children] == ["permission", "permission", "domain"]
    file = tmp_path / "d.xml"
    file.write_text("<domain type='kvm'><name>x</name></domain>")
    assert cli.parse_xml_children([f"@{file}"])[0].find("name").text == "x"
    with pytest.raises(cli.UsageError):
        cli.parse_xml_children(["<broken>"])


def test_connection_from_the_rig_summary(summary):
    conn = cli.resolve_connection(parse("--summary", str(summary), "ping"), environ={})
    assert (conn.jid, conn.password, conn.host, conn.port, conn.hypervisor) == (
        "admin@archipel.test", "adminpw", "127.0.0.1", 15222, HV)
    # another user of the summary: its password comes along; options win over the file
    conn = cli.resolve_connection(parse("--summary", str(summary), "--jid", "student1@archipel.test",
                                        "--port", "5222", "ping"), environ={})
    assert (conn.jid, conn.password, conn.port) == ("student1@archipel.test", "student1pw", 5222)


def test_password_sources(tmp_path, summary):
    pw = tmp_path / "pw"
    pw.write_text("from-file\nignored\n")
    base = ["--jid", "a@b.c", "--server", "127.0.0.1", "--hypervisor", HV]
    assert cli.resolve_connection(parse(*base, "--password-file", str(pw), "ping"), environ={}).password == "from-file"
    env = {cli.PASSWORD_ENV: "from-env"}
    assert cli.resolve_connection(parse(*base, "ping"), environ=env).password == "from-env"
    assert cli.resolve_connection(parse(*base, "--password", "opt", "ping"), environ=env).password == "opt"
    with pytest.raises(cli.UsageError, match="no password"):
        cli.resolve_connection(parse(*base, "ping"), environ={})
    with pytest.raises(cli.UsageError, match="not both"):
        cli.resolve_connection(parse(*base, "--password", "x", "--password-file", str(pw), "ping"), environ={})


@pytest.mark.parametrize("argv, message", [
    (["--password", "x", "ping"], "no JID"),
    (["--jid", "nodomain", "--password", "x", "ping"], "bare JID"),
    (["--jid", "a@b.c", "--password", "x", "ping"], "no hypervisor"),
    (["--jid", "a@b.c", "--password", "x", "--hypervisor", "h@b.c", "ping"], "resource"),
    (["--jid", "a@b.c", "--password", "x", "--hypervisor", HV, "--ca-file", "/nonexistent.pem", "ping"], "ca-file"),
    (["--summary", "/nonexistent.json", "ping"], "summary"),
])
def test_configuration_errors_exit_2(argv, message, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_unreachable_server_exits_3(capsys):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = cli.main(["--jid", "a@archipel.test", "--password", "x", "--server", "127.0.0.1", "--port", str(port),
                     "--hypervisor", HV, "--timeout", "5", "ping"])
    assert code == cli.EXIT_CONNECTION
    assert "cannot connect" in capsys.readouterr().err


def test_agent_error_text_drops_archipel_context():
    iq = ET.fromstring(
        '<iq xmlns="jabber:client" type="error"><error code="-1" type="cancel">'
        '<forbidden xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<archipel-error-permission xmlns="archipel:error:permission"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">Cannot use \'get\': permission denied\n\narchipel:audit\nget</text>'
        '</error></iq>')

    class FakeIq:
        xml = iq

        def __getitem__(self, key):
            return {"condition": "forbidden"}

    error = AgentError(FakeIq())
    assert error.code == -1 and error.is_permission_error and error.condition == "forbidden"
    assert error.text == "Cannot use 'get': permission denied"


def test_table_and_xml_rendering():
    text = cli.table(("a", "bb"), [("1", None), ("long value", "x")])
    lines = text.splitlines()
    assert lines[0].startswith("a ") and lines[1].startswith("-") and lines[2] == "1"
    assert cli.table(("a",), []) == "(nothing)"
    query = ET.fromstring('<query xmlns="archipel:permissions"><permission name="x"/></query>')
    pretty = cli.pretty_xml(query)
    assert pretty.startswith('<query xmlns="archipel:permissions">') and '<permission name="x" />' in pretty
    assert cli.element_to_dict(query[0]) == {"tag": "permission", "attrs": {"name": "x"}}

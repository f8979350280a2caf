"""archipel-admin roles / quota / usage and the --group / --role grant variants (parsing only)."""
from __future__ import annotations

import pytest

from archipelagent.admin import cli


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_help_everywhere(capsys):
    for argv in (["roles", "--help"], ["roles", "list", "--help"], ["roles", "set", "--help"],
                 ["roles", "delete", "--help"], ["quota", "--help"], ["quota", "set", "--help"],
                 ["quota", "get", "--help"], ["usage", "--help"]):
        with pytest.raises(SystemExit) as exc:
            parse(*argv)
        assert exc.value.code == 0
        assert "usage: archipel-admin" in capsys.readouterr().out


def test_grant_variants():
    assert cli._grant_plan(parse("permissions", "grant", "u@b.c", "alloc", "free")) == (
        "user", [("u@b.c", "alloc"), ("u@b.c", "free")], "u@b.c")
    assert cli._grant_plan(parse("permissions", "grant", "--group", "students", "alloc")) == (
        "group", [("students", "alloc")], "group students")
    assert cli._grant_plan(parse("permissions", "revoke", "alloc", "--group", "students")) == (
        "group", [("students", "alloc")], "group students")
    assert cli._grant_plan(parse("permissions", "grant", "--role", "student", "--group", "students")) == (
        "role", [("students", "student")], "role student")
    assert cli._grant_plan(parse("permissions", "grant", "--role", "student", "a@b.c", "teachers"))[1] == [
        ("a@b.c", "student"), ("teachers", "student")]


@pytest.mark.parametrize("argv", [["permissions", "grant", "u@b.c"], ["permissions", "grant", "--group", "g"],
                                  ["permissions", "grant", "--role", "r"], ["roles"], ["quota"]])
def test_incomplete_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


def test_quota_and_usage_arguments():
    args = parse("quota", "set", "--group", "students", "--vms", "2", "--memory", "", "--disk", "10G")
    assert (args.group, args.vms, args.memory, args.disk, args.vcpus, args.run) == (
        "students", "2", "", "10G", None, cli.run_quota_set)
    assert cli._quota_target(args) == ("group", "students")
    with pytest.raises(cli.UsageError):
        cli._quota_target(parse("quota", "get", "--group", "g", "--user", "u@b.c"))
    args = parse("usage", "u@b.c")
    assert (args.user, args.all, args.run) == ("u@b.c", False, cli.run_usage)
    assert parse("usage", "--all").all is True and parse("usage").user is None
    args = parse("roles", "set", "student", "alloc", "free", "--description", "Students")
    assert (args.name, args.permissions, args.description, args.run) == (
        "student", ["alloc", "free"], "Students", cli.run_roles_set)

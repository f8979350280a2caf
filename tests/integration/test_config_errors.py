"""A broken configuration stops the agent with exit code 2 and names file, section and key."""
from __future__ import annotations

import subprocess
import sys

import pytest

from agent_process import REPO
from agent_fixtures import write_config


def run_agent(conf, *extra):
    return subprocess.run([sys.executable, "-m", "archipelagent", "--config", str(conf), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("section,key,value,expect", [
    ("XMPP", "xmpp_port", "many", "[XMPP] xmpp_port"),
    ("XMPP", "xmpp_tls", "sometimes", "[XMPP] xmpp_tls"),
    ("HYPERVISOR", "hypervisor_xmpp_jid", "not a jid", "[HYPERVISOR] hypervisor_xmpp_jid"),
    ("XMPP", "xmpp_ca_file", "/nonexistent/ca.pem", "[XMPP] xmpp_ca_file"),
])
def test_bad_value(stack, tmp_path, section, key, value, expect):
    conf = write_config(stack, tmp_path, {section: {key: value}})
    result = run_agent(conf)
    assert result.returncode == 2
    assert str(conf) in result.stderr and expect in result.stderr


def test_missing_key(stack, tmp_path):
    conf = write_config(stack, tmp_path)
    text = conf.read_text().splitlines()
    conf.write_text("\n".join(line for line in text if not line.startswith("libvirt_uri")))
    result = run_agent(conf)
    assert result.returncode == 2 and "[GLOBAL] libvirt_uri" in result.stderr


def test_plaintext_to_a_remote_server_is_refused(stack, tmp_path):
    conf = write_config(stack, tmp_path, {"XMPP": {"xmpp_host": "xmpp.example.org", "xmpp_tls": "never"}})
    result = run_agent(conf)
    assert result.returncode == 2 and "[XMPP] xmpp_tls" in result.stderr


def test_missing_file(tmp_path):
    result = run_agent(tmp_path / "nope.conf")
    assert result.returncode == 2 and "nope.conf" in result.stderr


def test_check_flag_accepts_a_good_file(stack, tmp_path):
    conf = write_config(stack, tmp_path)
    result = run_agent(conf, "--check")
    assert result.returncode == 0, result.stderr


def test_bad_feature_module_key_exits_2(stack, tmp_path):
    conf = write_config(stack, tmp_path, {"STORAGE": {"max_disk_size": "huge"}})
    result = run_agent(conf)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "[STORAGE] max_disk_size" in result.stderr

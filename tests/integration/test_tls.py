"""The agent checks the server certificate: a CA that did not sign it means no session."""
from __future__ import annotations

import shutil
import subprocess
import time

from agent_fixtures import write_config
from agent_process import AgentProcess


def test_agent_refuses_a_server_certificate_from_another_ca(stack, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not-our-ca",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(other_ca)], check=True, capture_output=True)
    lib_dir = stack.state_dir / "agent-wrong-ca"
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir(parents=True)
    conf = write_config(stack, lib_dir, {"HYPERVISOR": {"hypervisor_xmpp_jid": f"hv-tls@{stack.domain}"},
                                         "XMPP": {"xmpp_ca_file": str(other_ca)}})
    process = AgentProcess(conf, lib_dir / "agent.out")
    process.start()
    try:
        assert process.wait_log("certificate", timeout=30), process.log_tail()
        time.sleep(1)
        assert "online as" not in process.log_path.read_text()
        assert stack.ejabberd_api("check_account", user="hv-tls", host=stack.domain) != 0  # never got far enough to register
    finally:
        process.stop()

"""Several hypervisors on the rig: namespaced libvirtds (rig/hypervisors.py), each with
its own agent process running inside that hypervisor's mount namespace (so it sees the
shared storage at the common path) and the host's network (ejabberd on 127.0.0.1)."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys

from agent_fixtures import AgentHandle, second_agent
from agent_process import REPO, AgentProcess


class NamespacedAgentProcess(AgentProcess):
    """The agent started through ``nsenter --mount`` into one hypervisor's mount namespace."""

    def __init__(self, config_path, log_path, hypervisor):
        super().__init__(config_path, log_path)
        self.hypervisor = hypervisor

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.hypervisor.nsenter(), sys.executable, "-m", "archipelagent", "--config", str(self.config_path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def hypervisor_agent(stack, hv, overrides=None) -> AgentHandle:
    """An agent (hypervisor ``hv-<i>@<domain>/hv-<i>``) for the namespaced hypervisor ``hv``,
    configured (libvirt over its unix socket, vm_base_path = the shared storage), not started."""
    settings = {"GLOBAL": {"libvirt_uri": hv.libvirt_uri, "migration_uri": hv.migration_uri},
                "VIRTUALMACHINE": {"vm_base_path": str(stack.hypervisors.shared_path)}}
    for section, values in (overrides or {}).items():
        settings.setdefault(section, {}).update(values)
    return second_agent(stack, hv.name, settings,
                        process_factory=lambda conf, out: NamespacedAgentProcess(conf, out, hv))


@contextlib.asynccontextmanager
async def running_agents(stack, hypervisors, client, overrides=None):
    """An agent per namespaced hypervisor, started and serving (checked through ``client``),
    stopped afterwards.  ``overrides(hv)`` gives a hypervisor's own config settings."""
    handles = [hypervisor_agent(stack, hv, overrides(hv) if overrides else None) for hv in hypervisors]
    for handle in handles:
        handle.process.start()
    try:
        await asyncio.gather(*(handle.wait_ready(client) for handle in handles))
        yield handles
    finally:
        for handle in handles:
            handle.process.stop()

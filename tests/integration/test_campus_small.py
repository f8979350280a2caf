"""A small campus on an ejabberd cluster (issue 16 item 3; bench/bench_campus.py at small size).

Libvirt's test driver behind 2 agents × 20 VM entities, agents and 30 user
sessions spread over 2 cluster nodes, each user with 4 VMs in its roster:
after all agents restart every entity is online again, and every presence
change (a VM stopped, then started, through the agent) reaches every
subscriber: none lost.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rig.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_campus import run_campus  # noqa: E402

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def cluster(stack):
    cl = Cluster(stack)
    cl.add_node(2)
    yield cl
    cl.stop()


async def test_every_presence_change_reaches_every_subscriber(stack, cluster):
    figures = await run_campus(stack, cluster, agents=2, vms=20, users=30, per_user=4, changes=6, timeout=60)
    print(figures)
    assert figures["entities"] == 40 and figures["nodes"] == 2
    assert figures["deliveries"] > 0
    assert figures["lost"] == 0, figures
    assert figures["restart_deliveries"] == 30 * 4 and figures["restart_lost"] == 0, figures

"""The chaos campaign's short pass (tests/chaos/campaign.py): every fault once, in a
random order at random moments, under load; the invariants checked after each.

The seed is printed (and taken from ARCHIPEL_CHAOS_SEED when set) so a failing
order can be replayed with ``tests/chaos/campaign.py --seed N``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from campaign import CLUSTER_FAULTS, FAULTS, Campaign  # noqa: E402
from rig.cluster import Cluster  # noqa: E402

pytestmark = pytest.mark.timeout(900)


async def test_every_fault_once_under_load(stack, agent):
    """On a two-node ejabberd cluster (the agent on node 1, the owner on node 2)."""
    seed = os.environ.get("ARCHIPEL_CHAOS_SEED")
    cluster = Cluster(stack)
    cluster.add_node(2)
    campaign = Campaign(stack, seed=int(seed) if seed else None, cluster=cluster)
    try:
        await campaign.setup()
        report = await campaign.run(loops=1)
    finally:
        await campaign.teardown()
        cluster.stop()
    assert sorted(line["fault"] for line in report) == sorted(FAULTS + CLUSTER_FAULTS)
    assert sum(line["answered"] for line in report) > 0
    # the faults that cut the agent off the server were seen by the owner as refusals or cuts
    assert all(line["back_s"] <= 30 for line in report), report

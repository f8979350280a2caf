"""The migration policy (archipelagent/hypervisor/migration.py): every pair of states."""
from __future__ import annotations

import itertools

import pytest

from archipelagent.hypervisor import migration as m
from archipelagent.hypervisor.migration import Keep, Side

A, S, P, R = Side.ABSENT, Side.SHUTOFF, Side.PAUSED, Side.RUNNING

EXPECTED = {  # (source, destination) -> (keep, resume, clean_other)
    (A, A): (Keep.LOST, False, False),
    (A, S): (Keep.DESTINATION, False, False),
    (A, P): (Keep.DESTINATION, True, False),
    (A, R): (Keep.DESTINATION, False, False),
    (S, A): (Keep.SOURCE, False, False),
    (S, S): (Keep.SOURCE, False, True),
    (S, P): (Keep.DESTINATION, True, True),
    (S, R): (Keep.DESTINATION, False, True),
    (P, A): (Keep.SOURCE, True, False),
    (P, S): (Keep.SOURCE, True, True),
    (P, P): (Keep.SOURCE, True, True),
    (P, R): (Keep.DESTINATION, False, True),
    (R, A): (Keep.SOURCE, False, False),
    (R, S): (Keep.SOURCE, False, True),
    (R, P): (Keep.SOURCE, False, True),
    (R, R): (Keep.CONFLICT, False, False),
}


@pytest.mark.parametrize("source,destination", list(itertools.product(Side, Side)))
def test_outcome_table(source, destination):
    out = m.decide_outcome(source, destination)
    assert (out.keep, out.resume, out.clean_other) == EXPECTED[(source, destination)]
    assert out.reason


def test_at_most_one_qemu_survives_every_automatic_outcome():
    """The outcome rule: whatever is decided automatically leaves one host with the VM."""
    for (source, destination), (keep, _resume, clean) in EXPECTED.items():
        if keep in (Keep.SOURCE, Keep.DESTINATION):
            other = destination if keep is Keep.SOURCE else source
            assert other is Side.ABSENT or clean, (source, destination)


def test_flags_live_and_offline():
    live = m.migration_flags(True)
    assert live & m.VIR_MIGRATE_LIVE and live & m.VIR_MIGRATE_PEER2PEER
    assert live & m.VIR_MIGRATE_PERSIST_DEST and live & m.VIR_MIGRATE_UNDEFINE_SOURCE
    assert not live & m.VIR_MIGRATE_OFFLINE and not live & m.VIR_MIGRATE_UNSAFE
    off = m.migration_flags(False, unsafe=True)
    assert off & m.VIR_MIGRATE_OFFLINE and not off & m.VIR_MIGRATE_LIVE and off & m.VIR_MIGRATE_UNSAFE


def test_flags_match_libvirt():
    libvirt = pytest.importorskip("libvirt")
    assert (m.VIR_MIGRATE_LIVE, m.VIR_MIGRATE_PEER2PEER, m.VIR_MIGRATE_PERSIST_DEST,
            m.VIR_MIGRATE_UNDEFINE_SOURCE, m.VIR_MIGRATE_UNSAFE, m.VIR_MIGRATE_OFFLINE) == (
        libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER, libvirt.VIR_MIGRATE_PERSIST_DEST,
        libvirt.VIR_MIGRATE_UNDEFINE_SOURCE, libvirt.VIR_MIGRATE_UNSAFE, libvirt.VIR_MIGRATE_OFFLINE)


@pytest.mark.parametrize("info,percent", [
    ([], None), ([0, 0, 0, 0, 0, 0], None), ([2, 10, 0, 0, 0, 0], None),
    ([2, 10, 0, 1000, 250, 750], 25), ([2, 10, 0, 1000, 1000, 0], 99), ([2, 10, 0, 1000, 1200, 0], 99),
])
def test_progress(info, percent):
    assert m.progress_percent(info) == percent


def test_status_text():
    assert m.status_text(42) == "Migrating - 42%"
    assert m.status_text(None) == "Migrating"


def test_refusals():
    ok = dict(migrating=False, domain_type="kvm", disk_paths=["/vm/drives/u/a.qcow2"], base_path="/vm/drives")
    assert m.refusal("u@d/hv-1", "hv-2@d/hv-2", **ok) is None
    assert "already" in m.refusal("u@d/hv-1", "hv-2@d/hv-2", **{**ok, "migrating": True})
    assert "own hypervisor" in m.refusal("hv-1@d/x", "hv-1@d/hv-1", **ok)
    assert "QEMU" in m.refusal("u@d/hv-1", "hv-2@d/hv-2", **{**ok, "domain_type": "lxc"})
    for bad in ("/var/lib/libvirt/images/a.qcow2", "/vm/drives/../etc/passwd", "/vm/drivesX/a"):
        assert "shared VM storage" in m.refusal("u@d/hv-1", "hv-2@d/hv-2", **{**ok, "disk_paths": [bad]})


@pytest.mark.parametrize("state, reason, left", [
    (None, None, True),                                            # undefined: gone
    (5, 4, True),    # shut off, reason migrated: the job is over, the source not torn down yet
    (5, 1, False),   # shut off by its guest: the migration failed
    (1, 9, False),   # running again: cancelled or failed
    (3, 2, None),   # look again
])
def test_source_after_job(state, reason, left):
    assert m.source_after_job(state, reason) is left


def test_domain_constants_match_libvirt():
    libvirt = pytest.importorskip("libvirt")
    assert (m.VIR_DOMAIN_RUNNING, m.VIR_DOMAIN_SHUTOFF, m.VIR_DOMAIN_SHUTOFF_MIGRATED) == \
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED)

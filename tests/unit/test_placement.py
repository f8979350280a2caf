"""Evacuation placement (hypervisor/placement.py): pure, so every rule is checked here."""
from archipelagent.hypervisor.placement import VM, Host, place

MIB = 1024


def test_most_free_memory_wins_and_the_plan_counts_what_it_placed():
    hosts = [Host("b@d/b", 1000 * MIB, 0), Host("c@d/c", 900 * MIB, 0)]
    plan = place([VM("1", 300 * MIB), VM("2", 300 * MIB), VM("3", 300 * MIB)], hosts)
    assert sorted(plan.moves.values()) == ["b@d/b", "b@d/b", "c@d/c"]
    assert not plan.refused


def test_ties_go_to_the_lowest_jid_so_the_plan_is_deterministic():
    hosts = [Host("c@d/c", 500 * MIB, 0), Host("b@d/b", 500 * MIB, 0)]
    assert place([VM("1", 10 * MIB)], hosts).moves == {"1": "b@d/b"}


def test_vm_limit_per_host():
    hosts = [Host("b@d/b", 10_000 * MIB, 1, max_vms=2), Host("c@d/c", 100 * MIB, 0)]
    plan = place([VM("1", 10 * MIB), VM("2", 10 * MIB)], hosts)
    assert sorted(plan.moves.values()) == ["b@d/b", "c@d/c"]


def test_maintenance_and_offline_hosts_take_nothing():
    hosts = [Host("b@d/b", 10_000 * MIB, 0, maintenance=True), Host("c@d/c", 10_000 * MIB, 0, online=False)]
    plan = place([VM("1", 10 * MIB)], hosts)
    assert plan.moves == {}
    assert "in maintenance" in plan.refused["1"] and "offline" in plan.refused["1"]


def test_refused_with_the_reason_when_nowhere_fits_and_the_rest_still_moves():
    hosts = [Host("b@d/b", 500 * MIB, 0)]
    plan = place([VM("big", 2000 * MIB), VM("small", 100 * MIB)], hosts)
    assert plan.moves == {"small": "b@d/b"}
    assert "500 MiB free, 2000 MiB needed" in plan.refused["big"]


def test_largest_first_so_small_ones_do_not_take_its_room():
    hosts = [Host("b@d/b", 1000 * MIB, 0), Host("c@d/c", 1100 * MIB, 0)]
    plan = place([VM("s1", 200 * MIB), VM("s2", 200 * MIB), VM("big", 1000 * MIB)], hosts)
    assert not plan.refused and len(plan.moves) == 3


def test_shut_off_vms_need_a_place_not_memory():
    hosts = [Host("b@d/b", 0, 0, max_vms=1)]
    plan = place([VM("off", 4000 * MIB, running=False), VM("off2", 10, running=False)], hosts)
    assert len(plan.moves) == 1 and len(plan.refused) == 1
    assert "limit of 1 VMs" in next(iter(plan.refused.values()))


def test_no_peer_at_all():
    assert "no peer hypervisor" in place([VM("1", 1)], []).refused["1"]


def test_max_vms_setting():
    """[HYPERVISOR] hypervisor_max_vms: absent or empty = no limit; not a number = a clear error."""
    import configparser
    from types import SimpleNamespace

    import pytest

    from archipelagent.config import ConfigError
    from archipelagent.hypervisor.maintenance import max_vms

    def conf(text):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text)
        return SimpleNamespace(parser=parser)

    assert max_vms(conf("[HYPERVISOR]\n")) == 0
    assert max_vms(conf("[HYPERVISOR]\nhypervisor_max_vms =\n")) == 0
    assert max_vms(conf("[HYPERVISOR]\nhypervisor_max_vms = 12\n")) == 12
    with pytest.raises(ConfigError, match="hypervisor_max_vms"):
        max_vms(conf("[HYPERVISOR]\nhypervisor_max_vms = lots\n"))

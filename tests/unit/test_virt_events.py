import libvirt
import pytest

from archipelagent.virt import events as ev
from archipelagent.virt.nodeinfo import decode_version, node_info_from_getinfo, NODE_INFO_KEYS


def test_event_ids_match_libvirt():
    for value, name in ev.EVENT_NAMES.items():
        assert getattr(libvirt, f"VIR_DOMAIN_EVENT_{name}") == value
        assert getattr(ev, name) == value


def test_detail_names_match_libvirt():
    for event, details in ev.DETAIL_NAMES.items():
        prefix = f"VIR_DOMAIN_EVENT_{ev.EVENT_NAMES[event]}_"
        for value, name in details.items():
            assert getattr(libvirt, prefix + name) == value, prefix + name


def test_state_names_match_libvirt():
    for value, name in ev.STATE_NAMES.items():
        assert getattr(libvirt, f"VIR_DOMAIN_{name}") == value


def test_names_and_unknowns():
    assert ev.event_name(ev.STOPPED) == "STOPPED"
    assert ev.detail_name(ev.STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == "DESTROYED"
    assert ev.describe(ev.SHUTDOWN, 2) == "SHUTDOWN/HOST"
    assert ev.event_name(99) == "UNKNOWN(99)"
    assert ev.detail_name(99, 0) == "UNKNOWN(0)"
    assert ev.detail_name(ev.STARTED, 99) == "UNKNOWN(99)"
    assert ev.state_name(libvirt.VIR_DOMAIN_SHUTOFF) == "SHUTOFF"


@pytest.mark.parametrize("event, ns, change", [
    (ev.DEFINED, ev.PUSH_NS_DEFINITION, "defined"),
    (ev.UNDEFINED, ev.PUSH_NS_DEFINITION, "undefined"),
    (ev.STARTED, ev.PUSH_NS_CONTROL, "created"),
    (ev.SUSPENDED, ev.PUSH_NS_CONTROL, "suspended"),
    (ev.RESUMED, ev.PUSH_NS_CONTROL, "resumed"),
    (ev.STOPPED, ev.PUSH_NS_CONTROL, "shutoff"),
    (ev.SHUTDOWN, ev.PUSH_NS_CONTROL, "shutdown"),
    (ev.PMSUSPENDED, ev.PUSH_NS_CONTROL, "suspended"),
    (ev.CRASHED, ev.PUSH_NS_CONTROL, "crashed"),
])
def test_push_words(event, ns, change):
    assert ev.push_for_event(event, 0) == (ns, change)


def test_shutdown_event_is_not_reported_as_crashed():
    # Archipel's [bug]: the SHUTDOWN *event* (6) equals the CRASHED *state* (6)
    assert libvirt.VIR_DOMAIN_EVENT_SHUTDOWN == libvirt.VIR_DOMAIN_CRASHED
    for detail in ev.DETAIL_NAMES[ev.SHUTDOWN]:
        assert ev.push_for_event(libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, detail).change == "shutdown"
    # and the STOPPED event (5, = state SHUTOFF) stays shutoff whatever the detail
    for detail in ev.DETAIL_NAMES[ev.STOPPED]:
        assert ev.push_for_event(ev.STOPPED, detail).change == "shutoff"


def test_unknown_event_has_no_push():
    assert ev.push_for_event(42) is None


def test_is_migration():
    assert ev.is_migration(ev.STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
    assert ev.is_migration(ev.RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
    assert not ev.is_migration(ev.STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)


def test_node_info_from_getinfo_units():
    info = ["x86_64", 2048, 4, 2400, 1, 1, 2, 2]
    d = node_info_from_getinfo(info)
    assert set(d) == set(NODE_INFO_KEYS)
    assert d["memory_kib"] == 2048 * 1024
    assert d["nrCPU"] == 4 and d["mHzCPU"] == 2400 and d["nrThreadperCore"] == 2
    assert node_info_from_getinfo(info, total_kib=2097000)["memory_kib"] == 2097000
    with pytest.raises(ValueError):
        node_info_from_getinfo(info[:5])


def test_decode_version():
    assert decode_version(9_000_000) == "9.0.0"
    assert decode_version(7_002_011) == "7.2.11"
    assert decode_version(2) == "0.0.2"
    with pytest.raises(ValueError):
        decode_version(-1)

"""The network definition policy for non-admins (archipelagent/networks/policy.py)."""
from __future__ import annotations

import ipaddress

import pytest

from archipelagent.networks.policy import NetworkContext, check_network
from archipelagent.networks.switch import Switch, group_for
from archipelagent.virt.policy import PolicyViolation

CTX = NetworkContext(pools=(ipaddress.IPv4Network("10.200.0.0/16"),),
                     existing=(("lab0", ipaddress.IPv4Network("10.200.5.0/24")),),
                     taken_names=frozenset({"lab0", "default"}))

GOOD = """<network><name>class1</name>
  <ip address='10.200.7.1' prefix='24'><dhcp><range start='10.200.7.100' end='10.200.7.200'/>
  <host mac='52:54:00:00:00:01' ip='10.200.7.10'/></dhcp></ip></network>"""


def test_isolated_network_with_dhcp_in_the_pool_is_accepted():
    root = check_network(GOOD, CTX)
    assert root.findtext("name") == "class1"


def test_nat_without_device_is_accepted():
    check_network(GOOD.replace("<name>class1</name>", "<name>class1</name><forward mode='nat'/>"), CTX)


@pytest.mark.parametrize("xml, element, reason", [
    ("<network><name>x</name><forward mode='bridge'/><bridge name='br100'/></network>", "network/forward",
     "only <forward mode='nat'/>"),
    ("<network><name>x</name><forward mode='nat' dev='eth0'/></network>", "network/forward", "only <forward mode='nat'/>"),
    ("<network><name>x</name><forward mode='nat'><interface dev='eth0'/></forward></network>",
     "network/forward/interface", "forwards to a host interface"),
    ("<network><name>x</name><bridge name='br100'/></network>", "network/bridge", "the agent names the bridge"),
    ("<network><name>x</name><route address='10.0.0.0' prefix='8' gateway='10.200.7.2'/></network>",
     "network/route", "routing table"),
    ("<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'><name>x</name>"
     "<dnsmasq:options><dnsmasq:option value='dhcp-script=/bin/sh'/></dnsmasq:options></network>",
     "network/dnsmasq:options", "foreign namespace"),
    ("<network><name>x</name><ip address='192.168.1.1' prefix='24'/></network>", "network/ip", "outside the address pool"),
    ("<network><name>x</name><ip address='10.200.5.129' prefix='25'/></network>", "network/ip", "overlaps 10.200.5.0/24"),
    ("<network><name>x</name><ip address='10.200.7.1' prefix='24'><dhcp><range start='10.200.8.1' "
     "end='10.200.8.9'/></dhcp></ip></network>", "network/ip/dhcp/range", "outside 10.200.7.0/24"),
    ("<network><name>x</name><ip address='10.200.7.1' prefix='24'><tftp root='/etc'/></ip></network>",
     "network/ip/tftp", "TFTP"),
    ("<network><name>x</name><ip address='10.200.0.1' prefix='8'/></network>", "network/ip", "prefix /8"),
    ("<network><name>lab0</name></network>", "network/name", "already exists"),
    ("<network><name>Bad Name</name></network>", "network/name", "lowercase"),
    ("<domain><name>x</name></domain>", "domain", "must be a <network>"),
    ("<!DOCTYPE n [<!ENTITY a 'b'>]><network><name>&a;</name></network>", "!DOCTYPE", "not accepted"),
    ("<network><name>x</name><portgroup name='p'/></network>", "network/portgroup", "admins"),
])
def test_bad_definitions_are_refused_with_their_element(xml, element, reason):
    with pytest.raises(PolicyViolation) as err:
        check_network(xml, CTX)
    assert err.value.element == element, err.value
    assert reason in err.value.reason, err.value
    assert err.value.code == -50


def test_vxlan_group_and_commands_in_a_namespace():
    assert group_for(4097) == "239.1.16.1"
    assert Switch("mig0", "arch-x-hv1")._argv("ip", "link") == ["ip", "-n", "arch-x-hv1", "link"]
    assert Switch("mig0")._argv("bridge", "fdb") == ["bridge", "fdb"]

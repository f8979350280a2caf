"""The network catalogue on the shared storage and the [NETWORKS] configuration."""
from __future__ import annotations

import configparser
import ipaddress
import stat
from types import SimpleNamespace

import pytest

from archipelagent.config import ConfigError
from archipelagent.networks import catalogue
from archipelagent.networks.catalogue import NetworkRecord
from archipelagent.networks.service import read_config


def record(name="lab1", vni=1001) -> NetworkRecord:
    return NetworkRecord(name=name, owner="teacher1@archipel.test", scope="class", hypervisor="hv-1@archipel.test",
                         vni=vni, grants=[["group", "students", "use", True]])


def test_create_is_exclusive_and_records_read_back(tmp_path):
    assert catalogue.create(tmp_path, record())
    assert not catalogue.create(tmp_path, record(vni=1002))  # a second "lab1" is refused
    found = catalogue.read_all(tmp_path)
    assert found["lab1"].vni == 1001 and found["lab1"].bridge == "acn1001"
    assert stat.S_IMODE((tmp_path / catalogue.FOLDER / "lab1.json").stat().st_mode) == 0o600
    catalogue.remove(tmp_path, "lab1")
    catalogue.remove(tmp_path, "lab1")  # twice: nothing to do
    assert catalogue.read_all(tmp_path) == {}


def test_unreadable_or_misnamed_records_are_skipped(tmp_path):
    catalogue.create(tmp_path, record())
    (tmp_path / catalogue.FOLDER / "broken.json").write_text("{half")
    (tmp_path / catalogue.FOLDER / "other.json").write_text((tmp_path / catalogue.FOLDER / "lab1.json").read_text())
    assert set(catalogue.read_all(tmp_path)) == {"lab1"}


def config(tmp_path, **values):
    parser = configparser.ConfigParser()
    parser["NETWORKS"] = values
    return SimpleNamespace(parser=parser, path=tmp_path / "archipel.conf")


def test_networks_config_defaults_and_values(tmp_path):
    cfg = read_config(config(tmp_path))
    assert cfg.pools == (ipaddress.IPv4Network("10.200.0.0/16"),) and cfg.vni_range == (1000, 9999)
    assert cfg.vxlan_device is None and cfg.namespace is None
    cfg = read_config(config(tmp_path, network_address_pool="10.50.0.0/16 10.60.0.0/24", vxlan_device="bond0.30"))
    assert len(cfg.pools) == 2 and cfg.vxlan_device == "bond0.30"


@pytest.mark.parametrize("key, value", [
    ("network_address_pool", "10.50.0.1/16"), ("network_address_pool", "fd00::/64"),
    ("vxlan_vni_range", "9-1"), ("vxlan_vni_range", "many"), ("vxlan_vni_range", "1-100000"),
])
def test_networks_config_errors_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as err:
        read_config(config(tmp_path, **{key: value}))
    assert (err.value.section, err.value.key) == ("NETWORKS", key)

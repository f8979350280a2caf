"""HA decisions and lease storage (hypervisor/ha.py): who is dead, who acts, one claim per lease."""
import configparser
import os
import threading

import pytest

from archipelagent.config import ConfigError
from archipelagent.hypervisor.ha import (Lease, claim, claim_name, dead_hosts, drop_lease, expired, memory_kib,
                                         read_leases, settings, taker, write_lease)


class Conf:
    def __init__(self, **values):
        self.parser = configparser.ConfigParser()
        self.parser["HYPERVISOR"] = values


def test_dead_needs_an_expired_lease_and_no_presence():
    leases = [Lease("a@d", 100.0, ("1",)), Lease("b@d", 100.0, ()), Lease("c@d", 195.0, ()), Lease("me@d", 0.0, ())]
    # a: expired, absent -> dead; b: expired but present -> alive; c: fresh, absent -> alive; me: never
    assert dead_hosts(leases, "me@d", {"b@d"}, now=200.0, ttl=15) == [leases[0]]
    assert not expired(Lease("x@d", 100.0, ()), now=115.0, ttl=15)
    assert expired(Lease("x@d", 100.0, ()), now=115.1, ttl=15)


def test_the_lowest_live_jid_acts():
    assert taker("hv-2@d", {"hv-3@d"}) == "hv-2@d"
    assert taker("hv-3@d", {"hv-2@d"}) == "hv-2@d"
    assert taker("hv-3@d", set()) == "hv-3@d"


def test_claim_is_exclusive_even_between_threads(tmp_path):
    lease = Lease("hv-1@d", 1234.5, ("u",))
    results = []
    threads = [threading.Thread(target=lambda: results.append(claim(tmp_path / "claims", lease))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert (tmp_path / "claims" / claim_name(lease)).exists()
    # a new lease instance of the same host (it came back, then died again) is a new claim
    assert claim(tmp_path / "claims", Lease("hv-1@d", 2000.0, ()))


def test_lease_round_trip_is_private_and_dropped_only_if_unchanged(tmp_path):
    folder = tmp_path / "leases"
    old = Lease("hv-1@d", 10.0, ("a", "b"))
    write_lease(folder, old)
    assert read_leases(folder) == [old]
    assert os.stat(folder / "hv-1@d.json").st_mode & 0o777 == 0o600
    write_lease(folder, Lease("hv-1@d", 20.0, ()))  # it renewed: the old lease's taker must not drop it
    drop_lease(folder, old)
    assert read_leases(folder) == [Lease("hv-1@d", 20.0, ())]
    drop_lease(folder, Lease("hv-1@d", 20.0, ()))
    assert read_leases(folder) == []


def test_unreadable_lease_is_skipped(tmp_path):
    folder = tmp_path / "leases"
    folder.mkdir()
    (folder / "junk@d.json").write_text("{not json")
    write_lease(folder, Lease("ok@d", 1.0, ()))
    assert [lease.jid for lease in read_leases(folder)] == ["ok@d"]


def test_memory_from_the_definition():
    assert memory_kib("<domain><memory unit='KiB'>131072</memory></domain>") == 131072
    assert memory_kib("<domain><memory unit='MiB'>128</memory></domain>") == 131072
    assert memory_kib("<domain/>") == 0


def test_settings_defaults_and_errors():
    assert settings(Conf()) == (3.0, 15.0)
    assert settings(Conf(ha_lease_interval="1", ha_lease_ttl="4")) == (1.0, 4.0)
    for bad in ({"ha_lease_ttl": "soon"}, {"ha_lease_interval": "0"}, {"ha_lease_interval": "5", "ha_lease_ttl": "6"}):
        with pytest.raises(ConfigError):
            settings(Conf(**bad))

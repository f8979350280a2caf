"""The health module's pure parts: /proc readers, configuration, log tail."""
from __future__ import annotations

import configparser
from pathlib import Path
from types import SimpleNamespace

import pytest

from archipelagent.config import ConfigError
from archipelagent.health import proc
from archipelagent_modules import health

STAT_1 = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\nintr 1\n"
STAT_2 = "cpu  150 0 150 900 0 0 0 0 0 0\ncpu0 100 0 100 400 0 0 0 0 0 0\ncpu1 50 0 50 500 0 0 0 0 0 0\nintr 2\n"
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    6000000 kB\nSwapTotal: 2000 kB\nSwapFree: 500 kB\n"
NETDEV = ("Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes\n"
          "    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n")
MOUNTS = ("proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw 0 0\nstorage:/export /vm nfs4 rw 0 0\n"
          "/dev/sda2 /var/lib xfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\n/dev/fuse /mnt/x fuse rw 0 0\n")


def test_cpu_use_is_a_delta_per_cpu():
    use = proc.cpu_use(proc.parse_stat(STAT_1), proc.parse_stat(STAT_2))
    assert use == {"cpu": 50.0, "cpu0": 100.0, "cpu1": 0.0}
    assert proc.cpu_use(proc.parse_stat(STAT_1), proc.parse_stat(STAT_1))["cpu"] == 0.0


def test_meminfo_load_uptime_netdev_mounts():
    assert proc.parse_meminfo(MEMINFO) == {"total": 16000000, "free": 6000000, "used": 10000000, "swapped": 1500}
    assert proc.parse_loadavg("0.50 1.25 2.00 1/100 42\n") == {"one": 0.5, "five": 1.25, "fifteen": 2.0}
    assert proc.parse_uptime("12345.67 999.0\n") == 12345.67
    assert proc.parse_netdev(NETDEV) == {"eth0": (1000, 2000)}  # loopback left out
    # network and pseudo file systems are never statvfs'ed (a hung NFS mount must not hang a sample)
    assert proc.local_mounts(MOUNTS) == [("/dev/sda1", "/"), ("/dev/sda2", "/var/lib")]


def test_read_sample_from_this_host():
    sample = proc.read_sample(0.0)
    assert sample.memory["total"] > 0 and "cpu" in sample.cpu_times and sample.uptime > 0


def config(tmp_path, **keys):
    parser = configparser.RawConfigParser()
    parser.add_section("HEALTH")
    for k, v in keys.items():
        parser.set("HEALTH", k, v)
    return SimpleNamespace(parser=parser, path=tmp_path / "archipel.conf", lib_dir=tmp_path)


def test_config_defaults_and_errors_name_the_key(tmp_path):
    cfg = health.read_config(config(tmp_path))
    assert cfg.interval == 10.0 and cfg.max_rows == 8640 and cfg.database == tmp_path / "health.sqlite3"
    for key, value in (("health_collection_interval", "0"), ("health_collection_interval", "often"),
                       ("max_rows_before_purge", "5"), ("health_database_path", "relative.db")):
        with pytest.raises(ConfigError) as info:
            health.read_config(config(tmp_path, **{key: value}))
        assert key in str(info.value)


def test_log_tail_keeps_the_last_records_at_a_level(tmp_path):
    log = Path(tmp_path / "agent.log")
    log.write_text("2026-12-04 10:00:00,001 INFO    a: one\n"
                   "2026-12-04 10:00:01,002 DEBUG   a: two\n"
                   "Traceback (most recent call last):\n"
                   "2026-12-04 10:00:02,003 WARNING a: three\n"
                   "2026-12-04 10:00:03,004 ERROR   a: four\n")
    assert health._tail(log, 2, None) == [("WARNING", "2026-12-04 10:00:02,003", "a: three"),
                                          ("ERROR", "2026-12-04 10:00:03,004", "a: four")]
    assert [r[2] for r in health._tail(log, 10, "INFO")] == ["a: one", "a: three", "a: four"]
    assert health._tail(log, 10, "ERROR") == [("ERROR", "2026-12-04 10:00:03,004", "a: four")]


def test_vm_figures_sum_every_disk_and_nic():
    raw = {"state.state": 1, "cpu.time": 5_000_000_000, "vcpu.current": 2, "balloon.maximum": 1048576,
           "balloon.current": 524288, "block.count": 2, "block.0.rd.bytes": 100, "block.1.rd.bytes": 50,
           "block.0.wr.bytes": 7, "net.count": 1, "net.0.rx.bytes": 9, "net.0.tx.bytes": 11}
    assert health.vm_figures(raw) == {"state": 1, "cpu_time": 5_000_000_000, "cpu_use": 0.0, "vcpus": 2,
                                      "memory": 1048576, "balloon": 524288, "disk_read": 150, "disk_write": 7,
                                      "net_rx": 9, "net_tx": 11}
    assert health.vm_figures({})["disk_read"] == 0  # a shut-off domain reports almost nothing

"""The storage health monitor: settings, the probe, the ok/degraded state machine
(with injected probe results and hangs), pushes, presence, refusals, and which
paused guests are resumed on recovery.  Also the disks' libvirt error policy."""
from __future__ import annotations

import asyncio
import configparser
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import libvirt
import pytest
from lxml import etree

from archipelagent.config import ConfigError
from archipelagent.errors import Unavailable
from archipelagent.hypervisor.entity import HypervisorEntity
from archipelagent.storage import commands as health_commands
from archipelagent.storage import health as h
from archipelagent.storage.health import (
    DEGRADED, OK, ProbeResult, StorageDegraded, StorageHealth, StorageSettings, judge, probe,
    require_writable, should_resume,
)
from archipelagent.virt.domainxml import clone_domain, default_domain
from archipelagent.virt.policy import PolicyContext, check_domain

GOOD = ProbeResult(exists=True, mounted=True, writable=True, fsync_ms=1.0, free_bytes=50, total_bytes=100)


def bad(**errors) -> ProbeResult:
    return ProbeResult(exists=True, mounted=True, writable=False, free_bytes=50, total_bytes=100,
                       errors=errors or {h.NOT_WRITABLE: "Read-only file system"})


# ------------------------------------------------------------------ settings
def config_with(tmp_path, values: dict | None):
    parser = configparser.ConfigParser()
    if values is not None:
        parser.add_section("STORAGE")
        for k, v in values.items():
            parser.set("STORAGE", k, v)
    return SimpleNamespace(parser=parser, path=tmp_path / "archipel.conf")


def test_settings_defaults_without_section(tmp_path):
    s = StorageSettings.from_config(config_with(tmp_path, None))
    assert (s.check_interval, s.fsync_warning_ms, s.min_free_percent, s.require_mountpoint) == (10, 500, 5, False)
    assert s.probe_timeout == 20


def test_settings_read(tmp_path):
    s = StorageSettings.from_config(config_with(tmp_path, {
        "storage_check_interval": "1.5", "storage_fsync_warning_ms": "0", "storage_min_free_percent": "10",
        "storage_require_mountpoint": "yes"}))
    assert (s.check_interval, s.fsync_warning_ms, s.min_free_percent, s.require_mountpoint) == (1.5, 0, 10, True)


@pytest.mark.parametrize("key,value", [
    ("storage_check_interval", "often"), ("storage_check_interval", "0"), ("storage_check_interval", "-3"),
    ("storage_check_interval", "nan"), ("storage_fsync_warning_ms", "-1"), ("storage_min_free_percent", "101"),
    ("storage_min_free_percent", "inf"), ("storage_require_mountpoint", "maybe"),
])
def test_settings_errors_name_file_section_and_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as err:
        StorageSettings.from_config(config_with(tmp_path, {key: value}))
    text = str(err.value)
    assert f"[STORAGE] {key}" in text and "archipel.conf" in text and repr(value) in text


def test_sample_config_documents_the_keys():
    text = (Path(__file__).resolve().parents[2] / "conf" / "archipel.conf").read_text()
    for key in ("storage_check_interval", "storage_fsync_warning_ms", "storage_min_free_percent",
                "storage_require_mountpoint"):
        assert key in text


# --------------------------------------------------------------------- probe
def test_probe_of_a_writable_folder(tmp_path):
    result = probe(tmp_path)
    assert result.exists and result.writable and not result.errors
    assert result.fsync_ms is not None and result.fsync_ms >= 0
    assert result.total_bytes > 0 and 0 <= result.free_bytes <= result.total_bytes
    assert not list((tmp_path / ".health").iterdir())  # the probe file is removed


def test_probe_of_a_missing_folder(tmp_path):
    result = probe(tmp_path / "gone")
    assert not result.exists and h.MISSING in result.errors
    assert judge(result, StorageSettings(), 0) == [h.MISSING]


def test_probe_of_a_file_instead_of_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    assert judge(probe(tmp_path / "f"), StorageSettings(), 0) == [h.MISSING]


def test_probe_that_cannot_write(tmp_path):
    (tmp_path / ".health").write_text("in the way")  # root ignores modes: block the probe folder instead
    result = probe(tmp_path)
    assert not result.writable and h.NOT_WRITABLE in result.errors
    assert judge(result, StorageSettings(), 0) == [h.NOT_WRITABLE]


def test_judge_mountpoint_free_space_and_slow_fsync():
    unmounted = ProbeResult(exists=True, mounted=False, writable=True, fsync_ms=1, free_bytes=50, total_bytes=100)
    assert judge(unmounted, StorageSettings(), 0) == []
    assert judge(unmounted, StorageSettings(require_mountpoint=True), 0) == [h.NOT_MOUNTED]
    full = ProbeResult(exists=True, mounted=True, writable=True, fsync_ms=1, free_bytes=3, total_bytes=100)
    assert judge(full, StorageSettings(), 0) == ["low free space (3.0% < 5%)"]
    assert judge(full, StorageSettings(min_free_percent=0), 0) == []
    slow = ProbeResult(exists=True, mounted=True, writable=True, fsync_ms=900, free_bytes=50, total_bytes=100)
    assert judge(slow, StorageSettings(), 1) == []  # a single slow fsync is only logged
    assert judge(slow, StorageSettings(), h.SLOW_FSYNC_STRIKES) == ["slow fsync (900 ms > 500 ms)"]
    assert judge(slow, StorageSettings(fsync_warning_ms=0), 10) == []


# ------------------------------------------------------------- state machine
class FakeHypervisor:
    def __init__(self):
        self.pushes: list[tuple[str, str, list[str]]] = []
        self.presence_refreshes = 0

    async def push(self, namespace, change, children=()):
        self.pushes.append((namespace, change, [c.text for c in children]))
        return True

    def refresh_presence(self):
        self.presence_refreshes += 1


class FakeDomain:
    def __init__(self, uuid, state, reason):
        self.uuid, self._state, self.resumed = uuid, (state, reason), 0

    def UUIDString(self):
        return self.uuid.upper()

    def state(self):
        return self._state

    def resume(self):
        self.resumed += 1
        self._state = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_UNPAUSED)


class FakeConn:
    def getAllDomainStats(self, stats, flags):
        assert flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PAUSED
        return [(d, {"state.state": d.state()[0], "state.reason": d.state()[1]}) for d in self.domains
                if d.state()[0] == libvirt.VIR_DOMAIN_PAUSED]


class FakeLibvirt:
    def __init__(self, domains):
        self.connected = True
        self.raw = FakeConn()
        self.raw.domains = domains
        self.by_uuid = {d.uuid: d for d in domains}

    async def call(self, fn, *args):
        return fn(*args)

    async def lookup(self, uuid):
        return self.by_uuid[uuid]


def fake_agent(domains=(), managed=None):
    domains = list(domains)
    managed = [d.uuid for d in domains] if managed is None else managed
    agent = SimpleNamespace(hypervisor=FakeHypervisor(), libvirt=FakeLibvirt(domains),
                            vms=SimpleNamespace(entities={u: object() for u in managed}))
    agent.spawn = lambda coro, name=None: asyncio.get_running_loop().create_task(coro)
    return agent


class Script:
    """A probe function returning the results given, one per call (then the last)."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


async def test_ok_degraded_recovered_pushes_presence_and_refusals(tmp_path):
    agent = fake_agent()
    monitor = StorageHealth(agent, tmp_path, StorageSettings(check_interval=0.05),
                            probe_fn=Script(GOOD, bad(), bad(), GOOD))
    agent.storage_health = monitor
    try:
        assert await monitor.check() == [] and monitor.ok and agent.hypervisor.pushes == []
        require_writable(agent, "alloc")  # fine while ok
        assert await monitor.check() == [h.NOT_WRITABLE]
        assert monitor.state == DEGRADED and not monitor.ok and monitor.reasons == ["not writable"]
        assert agent.hypervisor.pushes == [("hypervisor:storage", "degraded", ["not writable"])]
        assert monitor.presence() == ("Storage degraded: not writable", "dnd")
        with pytest.raises(StorageDegraded) as err:
            require_writable(agent, "alloc")
        assert isinstance(err.value, Unavailable) and err.value.code == -48
        assert err.value.message == "storage degraded (not writable): 'alloc' refused until it recovers"
        await monitor.check()  # still degraded, same reasons: no second push
        assert len(agent.hypervisor.pushes) == 1
        assert await monitor.check() == []
        assert monitor.state == OK and monitor.presence() is None
        assert agent.hypervisor.pushes[-1] == ("hypervisor:storage", "recovered", [])
        assert agent.hypervisor.presence_refreshes == 2
        require_writable(agent, "alloc")
    finally:
        await monitor.stop()


async def test_changed_reasons_are_pushed_again(tmp_path):
    agent = fake_agent()
    full = ProbeResult(exists=True, mounted=True, writable=False, free_bytes=1, total_bytes=100,
                       errors={h.NOT_WRITABLE: "No space left on device"})
    monitor = StorageHealth(agent, tmp_path, StorageSettings(), probe_fn=Script(bad(), full))
    try:
        await monitor.check()
        await monitor.check()
        assert [p[2] for p in agent.hypervisor.pushes] == [["not writable"], ["not writable", "low free space (1.0% < 5%)"]]
        assert "'clone' refused" in str(pytest.raises(StorageDegraded, monitor.require_writable, "clone").value)
    finally:
        await monitor.stop()


async def test_a_hung_probe_counts_as_failed_and_is_not_queued_twice(tmp_path):
    release = threading.Event()
    calls = []

    def hanging(path):
        calls.append(path)
        if len(calls) == 1:
            release.wait(10)
            return GOOD
        return GOOD

    agent = fake_agent()
    monitor = StorageHealth(agent, tmp_path, StorageSettings(check_interval=0.05), probe_fn=hanging)  # timeout 0.1 s
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await monitor.check() == [h.NOT_RESPONDING]
        assert loop.time() - start < 1  # bounded by the timeout, the loop never blocked
        assert agent.hypervisor.pushes == [("hypervisor:storage", "degraded", ["not responding"])]
        assert await monitor.check() == [h.NOT_RESPONDING]  # still stuck
        assert len(calls) == 1  # no second probe behind the stuck one
        release.set()
        await asyncio.sleep(0.05)  # the stuck call returns (its stale answer is not trusted)
        assert await monitor.check() == []  # a fresh probe answers: recovered
        assert monitor.ok and agent.hypervisor.pushes[-1][1] == "recovered" and len(calls) == 2
    finally:
        release.set()
        await monitor.stop()


async def test_the_timer_runs_in_the_background(tmp_path):
    agent = fake_agent()
    script = Script(GOOD, bad())
    monitor = StorageHealth(agent, tmp_path, StorageSettings(check_interval=0.02), probe_fn=script)
    monitor.start()
    try:
        for _ in range(200):
            if not monitor.ok:
                break
            await asyncio.sleep(0.01)
        assert monitor.state == DEGRADED and script.calls >= 2
    finally:
        await monitor.stop()


async def test_probe_exceptions_do_not_kill_the_monitor(tmp_path):
    def boom(path):
        raise RuntimeError("bug")

    agent = fake_agent()
    monitor = StorageHealth(agent, tmp_path, StorageSettings(check_interval=0.02), probe_fn=boom)
    monitor.start()
    await asyncio.sleep(0.1)
    assert monitor._task is not None and not monitor._task.done()
    await monitor.stop()


# ------------------------------------------------------------ paused guests
IO = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)
USER = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)


def test_should_resume_only_io_error_pauses():
    assert should_resume(*IO)
    assert not should_resume(*USER)
    assert not should_resume(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
    assert not should_resume(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT)
    assert not should_resume(libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED_IOERROR)
    assert not should_resume(libvirt.VIR_DOMAIN_SHUTOFF, 0)


async def test_recovery_resumes_io_error_guests_only(tmp_path):
    io_vm = FakeDomain("11111111-1111-1111-1111-111111111111", *IO)
    user_vm = FakeDomain("22222222-2222-2222-2222-222222222222", *USER)
    unmanaged = FakeDomain("33333333-3333-3333-3333-333333333333", *IO)
    agent = fake_agent([io_vm, user_vm, unmanaged], managed=[io_vm.uuid, user_vm.uuid])
    monitor = StorageHealth(agent, tmp_path, StorageSettings(), probe_fn=Script(bad(), GOOD))
    try:
        await monitor.check()
        assert io_vm.resumed == 0  # nothing is touched while degraded
        await monitor.check()
        assert io_vm.resumed == 1 and user_vm.resumed == 0 and unmanaged.resumed == 0
    finally:
        await monitor.stop()


async def test_io_error_event_while_ok_resumes_at_next_check_with_a_bound(tmp_path):
    vm = FakeDomain("11111111-1111-1111-1111-111111111111", *IO)
    agent = fake_agent([vm])
    monitor = StorageHealth(agent, tmp_path, StorageSettings(), probe_fn=Script(GOOD))
    try:
        await monitor.check()
        assert vm.resumed == 0  # no event: no scan
        for attempt in range(1, h.MAX_RESUME_ATTEMPTS + 2):
            monitor.on_lifecycle(vm.uuid, libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR)
            vm._state = IO  # paused by I/O errors again
            await monitor.check()
            assert vm.resumed == min(attempt, h.MAX_RESUME_ATTEMPTS)
        monitor.on_lifecycle(vm.uuid, libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)
        assert not monitor._io_error_pending  # a user's pause is not noted
    finally:
        await monitor.stop()


# ------------------------------------------------------- hypervisor presence
def presence_of(storage, connected=True, vms=2):
    shown = []
    stub = SimpleNamespace(agent=SimpleNamespace(storage_health=storage, libvirt=SimpleNamespace(connected=connected)),
                           managed_vms=lambda: [("a", "a")] * vms, set_presence=lambda s, show="": shown.append((s, show)))
    HypervisorEntity.refresh_presence(stub)
    return shown[-1]


async def test_hypervisor_presence_follows_the_storage(tmp_path):
    monitor = StorageHealth(fake_agent(), tmp_path, StorageSettings(), probe_fn=Script(bad(), GOOD))
    try:
        assert presence_of(monitor) == ("Online (2)", "")
        await monitor.check()
        assert presence_of(monitor) == ("Storage degraded: not writable", "dnd")
        assert presence_of(monitor, connected=False) == ("Libvirt connection lost", "dnd")
        await monitor.check()
        assert presence_of(monitor) == ("Online (2)", "")
        assert presence_of(None) == ("Online (2)", "")
    finally:
        await monitor.stop()


async def test_health_command_payload(tmp_path):
    monitor = StorageHealth(fake_agent(), tmp_path, StorageSettings(), probe_fn=Script(bad()))
    try:
        await monitor.check()
        el = monitor.element()
        assert el.tag == "storage" and el.get("path") == str(tmp_path) and el.get("state") == "degraded"
        assert el.get("free_bytes") == "50" and el.get("total_bytes") == "100" and el.get("checked_at")
        assert [r.text for r in el.findall("reason")] == ["not writable"]
        assert "not writable" in health_commands._render([el])
        result = await health_commands.storage(SimpleNamespace(agent=SimpleNamespace(storage_health=monitor)))
        assert result.tag == "storage"
        with pytest.raises(Unavailable):
            await health_commands.storage(SimpleNamespace(agent=SimpleNamespace(storage_health=None)))
    finally:
        await monitor.stop()


def test_health_command_is_declared():
    from archipelagent.agent import build_registry

    command = next(c for c in build_registry().for_kind("hypervisor")
                   if c.namespace == "archipel:hypervisor:health" and c.action == "storage")
    assert command.permission == "health_info"


# ----------------------------------------------------------- error policy
UUID = "0b7e1c2a-3d4f-4a5b-8c6d-7e8f9a0b1c2d"


@pytest.fixture
def ctx(tmp_path) -> PolicyContext:
    folder = tmp_path / UUID
    folder.mkdir()
    lib = tmp_path / "iso"
    lib.mkdir()
    return PolicyContext(uuid=UUID, name="vm", vm_folder=folder, library_paths=(lib,))


def with_disks(ctx, disks: str) -> str:
    return (f"<domain type='kvm'><name>vm</name><uuid>{UUID}</uuid><memory unit='MiB'>128</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            f"<emulator>/usr/bin/qemu-system-x86_64</emulator>{disks}</devices></domain>").replace("@VM@", str(ctx.vm_folder))


def drivers(root) -> list[dict]:
    return [dict(d.find("driver").attrib) if d.find("driver") is not None else None for d in root.iterfind("devices/disk")]


def test_policy_forces_stop_on_file_disks(ctx):
    xml = with_disks(ctx, f"""
      <disk type='file' device='disk'><source file='@VM@/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none' error_policy='ignore'/>
        <source file='@VM@/b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
      <disk type='file'><driver name='qemu' type='raw' rerror_policy='report'/><source file='@VM@/c.img'/><target dev='vdc'/></disk>
      <disk type='file' device='cdrom'><source file='{ctx.library_paths[0]}/x.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>
      <disk type='file' device='disk'><source file='@VM@/ro.img'/><target dev='vdd'/><readonly/></disk>
      <disk type='file' device='floppy'><source file='@VM@/f.img'/><target dev='fda'/></disk>""")
    root = check_domain(xml, ctx)
    d = drivers(root)
    assert d[0] == {"name": "qemu", "error_policy": "stop", "rerror_policy": "stop"}
    assert d[1] == {"name": "qemu", "type": "qcow2", "cache": "none", "error_policy": "stop", "rerror_policy": "stop"}
    assert d[2] == {"name": "qemu", "type": "raw", "error_policy": "stop", "rerror_policy": "stop"}
    assert d[3:] == [None, None, None]  # cdrom, read-only disk, floppy: QEMU refuses werror there
    assert root.find("devices/disk").index(root.find("devices/disk/driver")) == 0


def test_policy_output_with_error_policy_is_accepted_by_libvirt(ctx):
    conn = libvirt.open("test:///default")
    try:
        xml = with_disks(ctx, "<disk type='file' device='disk'><source file='@VM@/a.qcow2'/><target dev='vda' bus='virtio'/></disk>")
        xml = xml.replace("type='kvm'", "type='test'")
        ctx2 = PolicyContext(uuid=ctx.uuid, name=ctx.name, vm_folder=ctx.vm_folder, domain_types=frozenset({"test"}))
        dom = conn.defineXML(etree.tostring(check_domain(xml, ctx2), encoding="unicode"))
        driver = ET.fromstring(dom.XMLDesc(0)).find("devices/disk/driver")
        assert driver.get("error_policy") == "stop" and driver.get("rerror_policy") == "stop"
        dom.undefine()
    finally:
        conn.close()


def test_default_domain_and_clones_carry_the_policy(tmp_path):
    xml = default_domain(UUID, "vm")
    assert "<disk" not in xml  # blank: no disk yet
    src = with_disks(SimpleNamespace(vm_folder=tmp_path), "<disk type='file'><source file='@VM@/a.qcow2'/><target dev='vda'/></disk>")
    clone = ET.fromstring(clone_domain(src, uuid="1b7e1c2a-3d4f-4a5b-8c6d-7e8f9a0b1c2d", name="c", path_map={}))
    assert clone.find("devices/disk/driver").get("error_policy") == "stop"


def test_mount_point_detection(tmp_path):
    assert h.is_mount_point(Path("/proc")) and not h.is_mount_point(tmp_path)
    assert h._unescape_mountinfo(r"/vm/my\040drives") == "/vm/my drives"

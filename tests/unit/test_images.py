"""The disk guard (archipelagent/storage/images.py) with real qemu-img on real files."""
from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import threading

import pytest
from lxml import etree

from archipelagent.fsio import StorageIO, StorageTimeout
from archipelagent.storage.images import RECORD_FILE, DiskGuard, DiskToolError, ImageRefused
from archipelagent.virt.policy import PolicyViolation

UUID = "6f1c2b8e-0000-4000-8000-000000000001"


@pytest.fixture
def tree(tmp_path):
    base, iso, golden = tmp_path / "drives", tmp_path / "iso", tmp_path / "golden"
    for d in (base / UUID, iso, golden):
        d.mkdir(parents=True)
    fs = StorageIO(workers=2, timeout=5)
    yield base / UUID, DiskGuard(fs, vm_base_path=base, iso_path=iso, golden_path=golden), iso, golden
    fs.close()


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def domain(path, fmt=None, device="disk", readonly=False):
    driver = f"<driver name='qemu' type='{fmt}'/>" if fmt else ""
    return etree.fromstring(f"<domain><devices><disk type='file' device='{device}'>{driver}<source file='{path}'/>"
                            f"<target dev='vda'/>{'<readonly/>' if readonly else ''}</disk></devices></domain>")


async def test_records_are_private_and_atomic(tree):
    folder, guard, _iso, _golden = tree
    await guard.record(folder / "a.raw", "raw")
    await guard.record(folder / "b.qcow2", "qcow2")
    await guard.move(folder / "a.raw", folder / "c.raw")
    await guard.forget(folder / "b.qcow2")
    assert json.loads((folder / RECORD_FILE).read_text())["disks"] == {"c.raw": "raw"}
    assert stat.S_IMODE(os.stat(folder / RECORD_FILE).st_mode) == 0o600
    assert not (folder / f"{RECORD_FILE}.tmp").exists()
    with pytest.raises(ImageRefused, match="only raw and qcow2"):
        await guard.record(folder / "d.vmdk", "vmdk")
    (folder / RECORD_FILE).write_text("{not json")
    with pytest.raises(DiskToolError, match="cannot read the disk formats"):
        await guard.recorded(folder / "c.raw")


async def test_definitions(tree, tmp_path):
    folder, guard, iso, golden = tree
    qemu_img("create", "-q", "-f", "raw", str(folder / "r.raw"), "1M")
    await guard.record(folder / "r.raw", "raw")
    await guard.check_definition(UUID, domain(folder / "r.raw", "raw"))
    with pytest.raises(PolicyViolation, match="recorded raw"):
        await guard.check_definition(UUID, domain(folder / "r.raw", "qcow2"))
    with pytest.raises(PolicyViolation, match="explicitly"):
        await guard.check_definition(UUID, domain(folder / "r.raw"))
    # a file without a record; a missing file is accepted at definition time, refused at start
    qemu_img("create", "-q", "-f", "qcow2", str(folder / "n.qcow2"), "1M")
    with pytest.raises(PolicyViolation, match="no format recorded"):
        await guard.check_definition(UUID, domain(folder / "n.qcow2", "qcow2"))
    await guard.check_definition(UUID, domain(folder / "later.qcow2", "qcow2"))
    with pytest.raises(PolicyViolation, match="does not exist"):
        await guard.check_definition(UUID, domain(folder / "later.qcow2", "qcow2"), at_start=True)
    # adopt (manage) records what the definition says, after the chain check
    await guard.check_definition(UUID, domain(folder / "n.qcow2", "qcow2"), adopt=True)
    assert await guard.recorded(folder / "n.qcow2") == "qcow2"
    # (a backing file without its format in the header: see test_storage_paths.test_chain_problems)
    qemu_img("create", "-q", "-f", "qcow2", str(golden / "g.qcow2"), "1M")
    await guard.record(golden / "g.qcow2", "qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(golden / "g.qcow2"), "-F", "qcow2",
                    str(folder / "o.qcow2"), "1M"], check=True)
    await guard.record(folder / "o.qcow2", "qcow2")
    await guard.check_definition(UUID, domain(folder / "o.qcow2", "qcow2"))  # an overlay of a golden image
    # outside every allowed folder; user-supplied backing stores
    with pytest.raises(PolicyViolation, match="outside"):
        await guard.check_definition(UUID, domain(tmp_path / "x.raw", "raw"))
    root = domain(folder / "r.raw", "raw")
    etree.SubElement(root.find("devices/disk"), "backingStore", type="file")
    with pytest.raises(PolicyViolation, match="backingStore"):
        await guard.check_definition(UUID, root)
    # ISO library: raw and read-only only
    (iso / "i.iso").write_bytes(b"\0" * 4096)
    await guard.check_definition(UUID, domain(iso / "i.iso", "raw", device="cdrom"))
    with pytest.raises(PolicyViolation, match="raw and read-only"):
        await guard.check_definition(UUID, domain(iso / "i.iso", "raw"))


async def test_a_hung_storage_answers_storage_timeout(tree):
    """Every file system call of the guard goes through the storage pool: when the
    pool's workers hang (an NFS mount that stopped answering), the check raises
    StorageTimeout (-48) and the event loop keeps running."""
    folder, _guard, iso, golden = tree
    fs = StorageIO(workers=1, timeout=0.5)
    guard = DiskGuard(fs, vm_base_path=folder.parent, iso_path=iso, golden_path=golden)
    release = threading.Event()
    hung = asyncio.ensure_future(fs.call(release.wait, timeout=30))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.ensure_future(ticker())
    try:
        with pytest.raises(StorageTimeout) as err:
            await guard.check_definition(UUID, domain(folder / "r.raw", "raw"))
        assert err.value.code == -48
        assert ticks > 0  # the loop ran meanwhile
    finally:
        release.set()
        t.cancel()
        await hung
        fs.close()

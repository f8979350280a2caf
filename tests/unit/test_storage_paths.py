"""Pure helpers of the storage module: sizes with units, names, path confinement, backing chains."""
from __future__ import annotations

import os
import types
from configparser import ConfigParser

import pytest

from archipelagent.config import ConfigError
from archipelagent.errors import InvalidArgument
from archipelagent_modules import snapshots, storage
from archipelagent.storage.images import chain_problems, within
from archipelagent_modules.storage import (PathRefused, confined_file, disk_file_name, parse_size, read_config,
                                           validate_name)

G = 1024 ** 3


@pytest.mark.parametrize("size, unit, expected", [
    ("10", "G", 10 * G), ("10", "g", 10 * G), ("512", "M", 512 * 1024 ** 2), ("1", "T", 1024 ** 4),
    ("64", "K", 64 * 1024), ("1.5", "G", 3 * G // 2), ("10G", None, 10 * G), ("10G", "G", 10 * G),
    ("3", "GiB", 3 * G), ("1", "K", 1024), ("0.1", "K", 512),  # rounded up to a sector
])
def test_parse_size(size, unit, expected):
    assert parse_size(size, unit) == expected


@pytest.mark.parametrize("size, unit", [
    ("0", "G"), ("-1", "G"), ("ten", "G"), ("", "G"), ("10", "X"), ("10", None), ("1e3", "G"),
    ("10G", "M"), ("10 G G", None), ("nan", "G"),
])
def test_parse_size_refuses(size, unit):
    with pytest.raises(InvalidArgument):
        parse_size(size, unit)


def test_parse_size_maximum():
    assert parse_size("2", "T", maximum=4 * 1024 ** 4) == 2 * 1024 ** 4
    with pytest.raises(InvalidArgument, match="maximum"):
        parse_size("5", "T", maximum=4 * 1024 ** 4)


@pytest.mark.parametrize("name", ["disk", "disk0.qcow2", "a", "A-b_c.d", "x" * 64, "9lives.raw"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", "../x", "..", ".hidden", "a/b", "/etc/passwd", "a\\b", "nul\x00byte", "x" * 65, "-dash", "sp ace",
    "semi;colon", "é", None,
])
def test_invalid_names(name):
    with pytest.raises(InvalidArgument):
        validate_name(name)


def test_disk_file_name_adds_the_suffix():
    assert disk_file_name("d", "qcow2") == "d.qcow2"
    assert disk_file_name("d", "raw") == "d.raw"
    assert disk_file_name("d.img", "raw") == "d.img"
    assert disk_file_name("d.qcow2", "qcow2") == "d.qcow2"


@pytest.fixture
def tree(tmp_path):
    base = tmp_path / "drives"
    vm = base / "vm1"
    other = base / "vm2"
    vm.mkdir(parents=True)
    other.mkdir()
    (vm / "disk.qcow2").write_bytes(b"")
    (other / "theirs.qcow2").write_bytes(b"")
    (vm / "etc").symlink_to("/etc")
    (vm / "passwd.qcow2").symlink_to("/etc/passwd")
    (vm / "steal.qcow2").symlink_to(other / "theirs.qcow2")
    (vm / "alias.qcow2").symlink_to(vm / "disk.qcow2")
    return types.SimpleNamespace(base=base, vm=vm, other=other)


def test_confined_file_accepts_names_and_paths_inside(tree):
    assert confined_file(tree.vm, "disk.qcow2") == tree.vm / "disk.qcow2"
    assert confined_file(tree.vm, str(tree.vm / "disk.qcow2")) == tree.vm / "disk.qcow2"
    assert confined_file(tree.vm, "alias.qcow2") == tree.vm / "disk.qcow2"  # a symlink staying inside
    assert confined_file(tree.vm, "new.qcow2") == tree.vm / "new.qcow2"  # need not exist yet


@pytest.mark.parametrize("ref", [
    "../vm2/theirs.qcow2", "..", "/etc/passwd", "passwd.qcow2", "steal.qcow2", "etc", "etc/shadow",
    "a/b", "x\x00y", "x" * 65, "", "/tmp", "{vm2}/theirs.qcow2", "{vm}/../vm2/theirs.qcow2",
])
def test_confined_file_refuses_escapes(tree, ref):
    ref = ref.replace("{vm2}", str(tree.other)).replace("{vm}", str(tree.vm))
    with pytest.raises(InvalidArgument):
        confined_file(tree.vm, ref)


def test_escape_messages_are_clear(tree):
    with pytest.raises(PathRefused, match="outside this VM's folder"):
        confined_file(tree.vm, "/etc/passwd")
    with pytest.raises(PathRefused, match="resolves to '/etc/passwd'"):
        confined_file(tree.vm, "passwd.qcow2")
    with pytest.raises(PathRefused, match="NUL"):
        confined_file(tree.vm, "a\x00")


def test_within(tree):
    assert within(tree.vm / "disk.qcow2", [tree.vm])
    assert not within(tree.vm, [tree.vm])  # the folder itself is not inside it
    assert not within(tree.vm / "passwd.qcow2", [tree.vm])
    assert within(tree.other / "theirs.qcow2", [tree.vm, tree.other])


def test_chain_problems(tree):
    golden = tree.base.parent / "golden"
    golden.mkdir()
    (golden / "g.qcow2").write_bytes(b"")
    ok = [{"filename": str(tree.vm / "disk.qcow2"), "format": "qcow2", "backing-filename": str(golden / "g.qcow2"),
           "backing-filename-format": "qcow2"}, {"filename": str(golden / "g.qcow2"), "format": "qcow2"}]
    assert chain_problems(ok, [tree.vm, golden]) == []
    # a backing file whose format the image does not state would be probed
    probed = [dict(ok[0], **{"backing-filename-format": None}), ok[1]]
    assert any("no explicit format" in p for p in chain_problems(probed, [tree.vm, golden]))
    # only raw and qcow2
    assert any("vmdk" in p for p in chain_problems([{"filename": str(tree.vm / "d.vmdk"), "format": "vmdk"}], [tree.vm]))
    # the backing file named in the header is confined even when qemu-img did not open it
    header = [{"filename": str(tree.vm / "disk.qcow2"), "format": "qcow2", "backing-filename": "/etc/passwd",
               "backing-filename-format": "raw"}]
    assert any("/etc/passwd" in p for p in chain_problems(header, [tree.vm, golden]))
    assert chain_problems([{"filename": str(tree.vm / "disk.qcow2")}, {"filename": "/etc/shadow"}], [tree.vm, golden])
    assert chain_problems([{"filename": str(tree.other / "theirs.qcow2")}], [tree.vm, golden])
    assert chain_problems([{"filename": 'json:{"driver":"file"}'}], [tree.vm])
    assert chain_problems([{"filename": "nbd://10.0.0.1/x"}], [tree.vm])
    data_file = [{"filename": str(tree.vm / "disk.qcow2"),
                  "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}]
    assert chain_problems(data_file, [tree.vm])


def _config(tmp_path, storage_section: dict | None = None):
    parser = ConfigParser()
    if storage_section is not None:
        parser["STORAGE"] = storage_section
    base = tmp_path / "drives"
    base.mkdir(exist_ok=True)
    return types.SimpleNamespace(parser=parser, path=tmp_path / "archipel.conf",
                                 vm=types.SimpleNamespace(base_path=base))


def test_config_defaults(tmp_path):
    cfg = read_config(_config(tmp_path))
    assert cfg.iso_library_path == tmp_path / "iso"
    assert cfg.golden_images_path == tmp_path / "golden"
    assert cfg.max_disk_bytes == 4 * 1024 ** 4 and cfg.long_jobs == 2
    assert os.path.basename(cfg.qemu_img) == "qemu-img"


@pytest.mark.parametrize("key, value, reason", [
    ("iso_library_path", "relative/iso", "absolute"),
    ("golden_images_path", "{base}/golden", "overlap"),
    ("golden_images_path", "{base}", "overlap"),
    ("iso_library_path", "{file}", "not a directory"),
    ("qemu_img_path", "/nonexistent/qemu-img", "not found"),
    ("max_disk_size", "lots", "expected a size"),
    ("disk_jobs", "0", "between 1 and 64"),
])
def test_config_refuses(tmp_path, key, value, reason):
    (tmp_path / "afile").write_text("x")
    value = value.replace("{base}", str(tmp_path / "drives")).replace("{file}", str(tmp_path / "afile"))
    with pytest.raises(ConfigError, match=reason) as info:
        read_config(_config(tmp_path, {key: value}))
    assert "[STORAGE]" in str(info.value) and key in str(info.value)


def test_snapshot_xml_is_written_by_the_agent():
    xml = snapshots.snapshot_xml("s1", "before <update>", ["hdc"])
    assert "<name>s1</name>" in xml and "&lt;update&gt;" in xml and 'snapshot="no"' in xml


def test_scrub_strips_secrets():
    xml = ("<domainsnapshot><name>s</name><domain><name>vm</name><description>jid::::pw</description>"
           "<devices><graphics type='vnc' passwd='hunter2'/></devices></domain></domainsnapshot>")
    out = storage.ET.tostring(snapshots.scrub(xml), encoding="unicode")
    assert "hunter2" not in out and "jid::::pw" not in out and "<name>s</name>" in out


def test_writable_disks_finds_raw_ones():
    xml = ("<domain><devices>"
           "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/v/a.qcow2'/><target dev='vda'/></disk>"
           "<disk type='file' device='disk'><source file='/v/b.img'/><target dev='vdb'/></disk>"
           "<disk type='file' device='cdrom'><driver type='raw'/><source file='/iso/x.iso'/><target dev='hdc'/><readonly/></disk>"
           "</devices></domain>")
    writable, readonly = snapshots.writable_disks(xml)
    assert writable == [("vda", "qcow2", "/v/a.qcow2"), ("vdb", "raw", "/v/b.img")]
    assert readonly == ["hdc"]


def test_commands_and_permissions():
    disk = {c.action: c.permission for c in storage.commands}
    assert disk["getgolden"] == "drives_getgolden" and disk["setgolden"] == "drives_setgolden"
    assert set(disk) == {"create", "delete", "get", "getiso", "convert", "rename", "resize", "getgolden", "setgolden"}
    assert all(c.namespace == "archipel:vm:disk" and c.kinds == {"vm"} for c in storage.commands)
    snap = {c.action: c.permission for c in snapshots.commands}
    assert snap == {a: f"snapshot_{a}" for a in ("take", "delete", "get", "current", "revert")}

"""The hand-over file of a migrating VM (hypervisor/migrations.py): root-only, never via a symlink."""
from __future__ import annotations

import os
import stat

import pytest

from archipelagent.hypervisor.migrations import disk_sources, existing, read_handover, remove_handover, write_handover


def test_written_0600_and_read_back(tmp_path):
    path = tmp_path / ".archipel-handover.json"
    path.write_text("old")
    os.chmod(path, 0o644)  # an older file with looser rights is tightened
    write_handover(path, {"jid": "u@d", "password": "s3cret"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_handover(path) == {"jid": "u@d", "password": "s3cret"}
    remove_handover(path)
    remove_handover(path)  # already gone: fine
    assert not path.exists()


def test_symlink_is_never_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("{}")
    link = tmp_path / ".archipel-handover.json"
    link.symlink_to(target)
    with pytest.raises(OSError):
        write_handover(link, {"password": "s3cret"})
    with pytest.raises(OSError):
        read_handover(link)
    assert target.read_text() == "{}"


def test_disk_sources():
    xml = """<domain><devices>
      <disk type='file'><source file='/vm/u/a.qcow2'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/x.iso'/></disk>
      <disk type='network'><source protocol='nbd' name='x'/></disk>
      <disk type='file' device='cdrom'/>
    </devices></domain>"""
    assert disk_sources(xml) == ["/vm/u/a.qcow2", "/iso/x.iso"]


def test_existing_finds_files_and_links_in_one_call(tmp_path):
    """At start the agent looks for the hand-over files of all its VMs in one storage call."""
    present = tmp_path / "a.json"
    present.write_text("{}")
    dangling = tmp_path / "b.json"
    dangling.symlink_to(tmp_path / "nowhere")  # a link is looked at, never followed
    absent = tmp_path / "c.json"
    assert existing([present, dangling, absent]) == {present, dangling}
    assert existing([]) == set()

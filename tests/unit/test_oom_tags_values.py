"""Pure parts of modules/oom.py and modules/tags.py: the oom_adj conversion, tag parsing, the pid-file path rules."""
from __future__ import annotations

import pytest

from archipelagent.virt import qemu_process
from archipelagent_modules.oom import score_adj
from archipelagent_modules.tags import parse_tags


def test_score_adj_converts_like_the_kernel():
    # fs/proc/base.c: oom_adj == 15 -> 1000, -17 -> -1000, else oom_adj * 1000 / 17 (towards zero)
    assert [score_adj(a) for a in (-17, -16, -8, -1, 0, 1, 5, 14, 15)] == [-1000, -941, -470, -58, 0, 58, 294, 823, 1000]


def test_tags_are_trimmed_deduplicated_and_bounded():
    assert parse_tags(" web, prod,,web ,") == ("web", "prod")
    assert parse_tags("") == ()
    for bad in ("x" * 65, "a\x01b", "a\nb", ",".join(f"t{i}" for i in range(33))):
        with pytest.raises(ValueError):
            parse_tags(bad)


def test_only_local_qemu_uris_have_a_process_here():
    assert qemu_process.daemon_sockets("qemu:///system") == qemu_process.DEFAULT_SOCKETS
    assert qemu_process.daemon_sockets("qemu+unix:///system?socket=/x/libvirt-sock") == ("/x/libvirt-sock",)
    for uri in ("qemu+ssh://host/system", "qemu:///session", "test:///default", "qemu+tcp://10.0.0.1/system"):
        with pytest.raises(qemu_process.NoProcess):
            qemu_process.daemon_sockets(uri)
    for name in ("", "../etc", "a/b", ".hidden"):
        with pytest.raises(qemu_process.NoProcess):
            qemu_process.qemu_pid("qemu:///system", name, "00000000-0000-0000-0000-000000000000")

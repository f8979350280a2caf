"""rig/guest.py's pure parts: module load order and the <os> element."""
import pytest

from rig.guest import module_load_order, os_element
from rig.util import RigError

DEPS = {
    "kernel/drivers/virtio/virtio.ko": [],
    "kernel/drivers/virtio/virtio_ring.ko": [],
    "kernel/drivers/virtio/virtio_pci.ko": ["kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                                            "kernel/drivers/virtio/virtio.ko",
                                            "kernel/drivers/virtio/virtio_ring.ko"],
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko": [],
    "kernel/drivers/block/virtio_blk.ko": ["kernel/drivers/virtio/virtio.ko",
                                           "kernel/drivers/virtio/virtio_ring.ko"],
}


def test_dependencies_come_first_and_once():
    order = module_load_order(DEPS, ("virtio_pci", "virtio_blk"))
    assert order.index("kernel/drivers/virtio/virtio.ko") < order.index("kernel/drivers/virtio/virtio_pci.ko")
    assert order[-1] == "kernel/drivers/block/virtio_blk.ko"
    assert len(order) == len(set(order)) == 5


def test_unknown_module_is_named():
    with pytest.raises(RigError, match="virtio_gpu"):
        module_load_order(DEPS, ("virtio_gpu",))


def test_os_element_escapes_paths():
    xml = os_element("/s/a&b/vmlinuz", "/s/initrd.gz", "console=tty0")
    assert "<kernel>/s/a&amp;b/vmlinuz</kernel>" in xml and "<cmdline>console=tty0</cmdline>" in xml

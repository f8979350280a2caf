"""The rig's tiny Linux guest boots and runs the test's /init script (rig/guest.py).

Other tests build on it (a writer during a live migration, DHCP on a class
network, text on the console), so its own boot is checked here: the script's
marker on the serial line, and the virtio disk seen as /dev/vda.
"""
import time

import libvirt
import pytest

from rig.guest import os_element, tiny_linux
from vm_helpers import unique_name

SCRIPT = """
echo "GUEST-BOOTED $(cat /proc/sys/kernel/osrelease)" > /dev/ttyS0
if [ -b /dev/vda ]; then echo GUEST-SEES-VDA > /dev/ttyS0; fi
echo hello-from-the-guest | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null
sync
echo GUEST-WROTE > /dev/ttyS0
"""


def _domain_xml(name, folder, kernel, initrd):
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>160</memory><vcpu>1</vcpu>
      {os_element(kernel, initrd)}
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='raw'/>
          <source file='{folder}/disk.raw'/><target dev='vda' bus='virtio'/></disk>
        <serial type='file'><source path='{folder}/serial.log'/></serial>
      </devices></domain>"""


@pytest.mark.timeout(300)
def test_tiny_linux_guest_boots_and_writes_its_disk(stack, tmp_path):
    name = unique_name("guest")
    folder = stack.storage_dir / name
    kernel, initrd = tiny_linux(folder, SCRIPT)
    (folder / "disk.raw").write_bytes(b"\0" * (1 << 20))
    conn = libvirt.open(stack.libvirt_uri)
    dom = conn.createXML(_domain_xml(name, folder, kernel, initrd), 0)
    try:
        log = folder / "serial.log"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "GUEST-WROTE" in text:
                break
            time.sleep(0.5)
        assert "GUEST-BOOTED" in text, text[-2000:]
        assert "GUEST-SEES-VDA" in text
        assert "GUEST-WROTE" in text
        assert (folder / "disk.raw").read_bytes().startswith(b"hello-from-the-guest\n")
    finally:
        dom.destroy()
        conn.close()

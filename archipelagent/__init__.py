"""Archipel agent: a KVM/libvirt hypervisor and its VMs as Jabber entities."""

__version__ = "0.1.0"

"""The hypervisor entity and its ``archipel:hypervisor:control`` commands."""

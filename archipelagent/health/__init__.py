"""The hypervisor's own health: pure readers of /proc (``proc.py``); the collector is the ``health`` module."""

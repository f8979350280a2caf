"""Packaging for the Archipel agent.

Feature modules live in ``modules/`` but are installed as the package
``archipelagent_modules`` (never as a top-level ``modules`` package) and are
found through the ``archipelagent.modules`` entry point group.
"""
from setuptools import find_packages, setup

setup(
    name="archipel-agent",
    version="0.1.0",
    description="Asyncio XMPP agent exposing a KVM/libvirt hypervisor and its VMs as Jabber entities",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="AGPL-3.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["archipelagent", "archipelagent.*"])
    + ["archipelagent_modules"],
    package_dir={"archipelagent_modules": "modules"},
    include_package_data=True,
    install_requires=[
        "slixmpp>=1.8",
        "libvirt-python>=9.0",
        "ldap3>=2.9",
        "lxml>=4.9",
        "aiosqlite>=0.19",
        "prometheus-client>=0.17",
        "websockets>=13.0",  # the console proxy (archipelagent/console/proxy.py)
    ],
    extras_require={
        "test": ["pytest>=7.4", "pytest-asyncio>=0.23", "pytest-timeout>=2.2",
                 "fusepy>=3.0",  # tests/integration/hangfs.py (a FUSE mount the tests freeze)
                 # tests/integration/test_web_*.py drive Debian's chromium (never `playwright install`)
                 "playwright>=1.40"],
    },
    entry_points={
        "console_scripts": [
            "archipel-agent = archipelagent.main:main",
            "archipel-admin = archipelagent.admin.cli:main",
        ],
        "archipelagent.modules": [
            "storage = archipelagent_modules.storage",
            "snapshots = archipelagent_modules.snapshots",
            "classes = archipelagent_modules.classes",
            "health = archipelagent_modules.health",
            "network = archipelagent_modules.network",
            "oom = archipelagent_modules.oom",
            "tags = archipelagent_modules.tags",
            "vnc = archipelagent_modules.vnc",
            "scheduler = archipelagent_modules.scheduler",
            "vmparking = archipelagent_modules.vmparking",
        ],
    },
)

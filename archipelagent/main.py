"""``archipel-agent``: load the configuration, run the agent until a signal."""
from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys

from . import __version__
from .config import ConfigError, load_config
from .logs import setup_logging

log = logging.getLogger("archipelagent")

EXIT_CONFIG = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="archipel-agent",
        description="Run a KVM/libvirt hypervisor and its virtual machines as Jabber entities.",
    )
    parser.add_argument("-c", "--config", default="/etc/archipel/archipel.conf", help="configuration file (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit (0 valid, 2 invalid)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


async def run(config) -> int:
    from .agent import Agent  # imported late so --check stays light

    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except ConfigError as exc:  # a feature module's section, validated at its setup
        print(f"archipel-agent: configuration error: {exc}", file=sys.stderr)
        await agent.stop()
        return EXIT_CONFIG
    log.info("agent running for %s", config.hypervisor.jid)
    await stop.wait()
    log.info("stopping")
    await agent.stop()
    return 0


def raise_fd_limit() -> int:
    """One socket per entity: 1,000 VM entities need more than the usual soft limit of 1024.
    Raise the soft limit to the hard one (the systemd unit sets LimitNOFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"archipel-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"{args.config}: configuration is valid")
        return 0
    setup_logging(config.logging.level, config.logging.file_path, config.logging.max_bytes, config.logging.backup_count)
    log.info("file descriptor limit %d", raise_fd_limit())
    from .xmpp.tls import limit_tls_read_buffers
    limit_tls_read_buffers()  # one TLS stream per entity: 256 -> 32 KiB of read buffer each
    return asyncio.run(run(config))

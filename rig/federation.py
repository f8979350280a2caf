"""Federation as the seed's site runs it: a campus XMPP server next to the Archipel one
(docs/FEDERATION.md).

The campus server (``campus.test``) is an ordinary ejabberd whose people log in
with their LDAP password (the rig's slapd) and reach the Archipel server's
entities (``archipel.test``) over server-to-server connections with TLS, each
server proving its domain with a certificate of the rig's CA.  Servers find each
other as on the Internet, by ``_xmpp-server._tcp`` SRV records: a dnsmasq on
loopback answers them (and nothing else), and every rig ejabberd asks only it
(rig/ejabberd.py's inetrc), never the host's resolver.

    fed = Federation(stack)
    fed.start()                    # dnsmasq + the campus server on 127.0.0.9
    ...                            # clients of campus.test on 127.0.0.9:<c2s port>
    fed.stop()
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .certs import CertAuthority
from .ejabberd import CAMPUS_HOST, CAMPUS_IP, Ejabberd
from .util import RigError, is_alive, log, read_pidfile, terminate, wait_until

CAMPUS_DOMAIN = "campus.test"


class SrvDns:
    """dnsmasq on 127.0.0.1:<port> answering the servers' SRV records only (no DHCP,
    no upstream, no hosts file): what a site's DNS zone says about its XMPP servers."""

    def __init__(self, state_dir: Path, port: int):
        self.dir = Path(state_dir)
        self.port = port
        self.pidfile = self.dir / "dnsmasq.pid"
        self.log = self.dir / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None

    def start(self, records: dict[str, tuple[str, int]]) -> None:
        """``records``: domain -> (address, port) of its s2s listener."""
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not Path(binary).exists():
            raise RigError("dnsmasq is missing (package dnsmasq-base; scripts/bootstrap.sh installs it)")
        self.stop()
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--no-poll", "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={self.port}",
                f"--pid-file={self.pidfile}", "--user=root", "--log-facility=-"]
        for domain, (address, port) in sorted(records.items()):
            # the target is the address itself: servers resolve it without any A record
            argv.append(f"--srv-host=_xmpp-server._tcp.{domain},{address},{port},0,100")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_until(lambda: read_pidfile(self.pidfile) is not None, 15, "dnsmasq (SRV records)",
                   alive=lambda: None if self.proc.poll() is None else f"dnsmasq exited:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate([self.proc.pid], "dnsmasq", timeout=10)
        else:  # a dnsmasq of an earlier run of this rig: only if its command line names our pidfile
            pid = read_pidfile(self.pidfile)
            if pid and is_alive(pid) and str(self.pidfile) in " ".join(_cmdline(pid)):
                terminate([pid], "dnsmasq", timeout=10)
        self.proc = None
        self.pidfile.unlink(missing_ok=True)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class Federation:
    """The campus server and the SRV records joining it to a rig stack's server."""

    def __init__(self, stack):
        self.stack = stack
        main = stack.ejabberd
        self.dns = SrvDns(stack.state_dir / "federation", main.dns_port)
        certs = CertAuthority(stack.state_dir / "ca", CAMPUS_DOMAIN, name="campus")
        self.campus_certs = certs
        self.campus = Ejabberd(
            stack.state_dir / "ejabberd-campus", domain=CAMPUS_DOMAIN, pubsub_domain=f"pubsub.{CAMPUS_DOMAIN}",
            c2s_port=main.c2s_port, http_port=main.http_port, dist_port=main.dist_port,
            node=f"{main.node.split('@', 1)[0]}_campus@{CAMPUS_HOST}", ldap=main.ldap,
            admin_jid=f"{stack.admin_user['uid']}@{CAMPUS_DOMAIN}", cert_pem_source=certs.server_pem,
            loglevel=main.loglevel, listen_ip=CAMPUS_IP, s2s_port=main.s2s_port, dns_port=main.dns_port,
            ca_pem_source=certs.ca_pem)

    @property
    def domain(self) -> str:
        return CAMPUS_DOMAIN

    def start(self) -> float:
        t0 = time.monotonic()
        main = self.stack.ejabberd
        self.dns.start({main.domain: (main.listen_ip, main.s2s_port),
                        main.pubsub_domain: (main.listen_ip, main.s2s_port),
                        CAMPUS_DOMAIN: (CAMPUS_IP, main.s2s_port),
                        f"pubsub.{CAMPUS_DOMAIN}": (CAMPUS_IP, main.s2s_port)})
        self.campus_certs.ensure()
        self.campus.start(fresh=True)
        dt = time.monotonic() - t0
        log.info("federation: %s on %s:%d, SRV records on 127.0.0.1:%d, in %.2fs",
                 CAMPUS_DOMAIN, CAMPUS_IP, self.campus.c2s_port, self.dns.port, dt)
        return dt

    def stop(self) -> None:
        self.campus.purge()
        self.dns.stop()

"""ejabberd (Debian package) run for the rig.

ejabberd runs as user ``ejabberd``, which cannot traverse a clone under
``/root`` (mode 0700, Debian's default).  So its state never lives in the
repo: it lives in ``/var/lib/archipel-rig/ejabberd-<key>`` (``<key>`` from the
path of ``<state>/ejabberd``, so every clone and profile has its own), every
ancestor traversable, and ``<state>/ejabberd`` is a symlink to it.

Layout there: ``etc/`` (ejabberd.yml from the project's
template, ejabberdctl.cfg, vm.args, inetrc, server.pem), ``spool/`` (mnesia),
``logs/``, ``run/ejabberd.pid`` and the wrapper ``ejctl``.  The Erlang
distribution listens on 127.0.0.1:<dist port> only (ERL_DIST_PORT, no epmd),
so several instances (demo + test) can coexist.
"""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from .util import (RigError, check_traversable, ensure_ports_free, fill_template, is_alive, log,
                   pids_matching, port_accepts, read_cmdline, read_pidfile, run, spawn_daemon, tail,
                   terminate, wait_until, write_text)

EJABBERDCTL = "/usr/sbin/ejabberdctl"
TEMPLATE = Path(__file__).resolve().parent.parent / "ejabberd" / "ejabberd.yml.tmpl"
# The browser client's build (scripts/bootstrap.sh); copied next to ejabberd's state
# because user ejabberd cannot traverse a clone under /root.
WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"
# environment variables ejabberdctl would pick up from its caller
_ENV_DROP = ("EJABBERD", "ERL_", "ERLANG", "CONTRIB_MODULES", "INET_DIST", "FIREWALL_WINDOW")
_ENV_DROP_EXACT = {"CONFIG_DIR", "LOGS_DIR", "SPOOL_DIR", "VMARGS", "EJABBERDCTL_CONFIG_PATH", "SCRIPT"}
# Where the ejabberd state of every rig lives (root-owned, 0755; see the module doc).
SYSTEM_ROOT = Path("/var/lib/archipel-rig")
LINK_NOTE = "rig-link"
MAX_EXTRA_NODES = 3  # cluster nodes beyond the first: 127.0.0.2 .. 127.0.0.4 (rig/cluster.py)


CAMPUS_IP, CAMPUS_HOST = "127.0.0.9", "archipel-campus"  # the federation's campus server (rig/federation.py)


def cluster_host(k: int) -> str:
    """The host name of the k-th node of a rig cluster (k >= 2), at 127.0.0.k in every inetrc."""
    return f"archipel-ej{k}"  # in each system dir: the <state>/ejabberd path that points to it


def system_dir(link: Path | str) -> Path:
    """The system dir holding the state of the rig dir ``link`` (``<state>/ejabberd``)."""
    link = Path(link)
    where = str(link.parent.resolve() / link.name)  # not the symlink's target
    return SYSTEM_ROOT / f"ejabberd-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


class EjabberdError(RigError):
    pass


def stop_linked(link: Path | str) -> None:
    """Stop the ejabberd whose state ``link`` points to, knowing nothing else of it: the
    extra servers of a rig (cluster nodes, the federation's campus server) when the test
    that started them died.  Only a beam whose command line names that spool is signalled."""
    marker = str(system_dir(link) / "spool")
    pids = pids_matching(["beam.smp", "beam"], marker)
    if pids:
        terminate(pids, "ejabberd", timeout=15)


class Ejabberd:
    name = "ejabberd"

    def __init__(self, link: Path, *, domain: str, pubsub_domain: str, c2s_port: int, http_port: int,
                 dist_port: int, node: str, ldap: dict, admin_jid: str, cert_pem_source,
                 loglevel: str = "info", listen_ip: str = "127.0.0.1", s2s_port: int | None = None,
                 dns_port: int | None = None, ca_pem_source=None):
        self.link = Path(link).parent.resolve() / Path(link).name  # <state>/ejabberd, a symlink to dir
        self.dir = system_dir(self.link)
        self.etc = self.dir / "etc"
        self.spool = self.dir / "spool"
        self.logs = self.dir / "logs"
        self.run_dir = self.dir / "run"
        self.pidfile = self.run_dir / "ejabberd.pid"
        self.ctl = self.dir / "ejctl"
        self.domain = domain
        self.pubsub_domain = pubsub_domain
        self.c2s_port = c2s_port
        self.http_port = http_port
        self.dist_port = dist_port
        self.node = node
        self.ldap = ldap
        self.admin_jid = admin_jid
        self.cert_pem_source = cert_pem_source  # callable(dest) -> writes the server pem
        self.loglevel = loglevel
        # every listener and the Erlang distribution on this address: the nodes of a
        # cluster (rig/cluster.py) share the ports, each on its own loopback address
        self.listen_ip = listen_ip
        # server-to-server (federation, rig/federation.py): the s2s listener's port, the
        # port every peer is dialled on, and the rig's DNS (dnsmasq, SRV records only)
        self.s2s_port = s2s_port if s2s_port is not None else c2s_port + 47
        self.dns_port = dns_port if dns_port is not None else c2s_port + 31
        self.ca_pem_source = ca_pem_source  # callable(dest) -> writes the CA peers are checked with

    @property
    def api_url(self) -> str:
        return f"http://{self.listen_ip}:{self.http_port}/api"

    # ------------------------------------------------------------- processes
    def pids(self) -> list[int]:
        """Our beam.smp: the pidfile's PID if its cmdline names our spool, plus
        any beam.smp whose command line names our spool (pidfile lost)."""
        marker = str(self.spool)
        pids = set(pids_matching(["beam.smp", "beam"], marker))
        # a beam of an older rig that kept its state in the repo (<state>/ejabberd/spool)
        pids |= set(pids_matching(["beam.smp", "beam"], f"{self.link}/spool"))
        pid = read_pidfile(self.pidfile)
        if pid and is_alive(pid) and any(marker in a for a in read_cmdline(pid)):
            pids.add(pid)
        return sorted(pids)

    def running(self) -> bool:
        return bool(self.pids())

    def stop(self) -> None:
        """SIGTERM to beam (graceful stop in ~1 s; `ejabberdctl stop` costs
        3.5 s because it boots a control node), SIGKILL after 15 s."""
        pids = self.pids()
        if pids:
            terminate(pids, "ejabberd", timeout=15)
        self.pidfile.unlink(missing_ok=True)

    # ---------------------------------------------------------------- config
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_ENV_DROP) and k not in _ENV_DROP_EXACT}
        env.setdefault("LANG", "C.UTF-8")
        return env

    def _place(self) -> None:
        """Create the system dir (every ancestor 0755) and point ``link`` to it."""
        SYSTEM_ROOT.mkdir(parents=True, exist_ok=True)
        os.chmod(SYSTEM_ROOT, 0o755)
        self.dir.mkdir(exist_ok=True)
        write_text(self.dir / LINK_NOTE, f"{self.link}\n")
        if self.link.is_symlink():
            if os.readlink(self.link) == str(self.dir):
                return
            self.link.unlink()
        elif self.link.exists():  # a real dir from an older rig: its state is forfeit
            shutil.rmtree(self.link)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        self.link.symlink_to(self.dir, target_is_directory=True)

    def purge(self) -> None:
        """Stop, then remove the system dir and the symlink (``make clean-rig``)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.link.is_symlink():
            self.link.unlink()

    def write_config(self) -> None:
        self._place()
        for d in (self.etc, self.spool, self.logs, self.run_dir, self.etc / "modules.d"):
            d.mkdir(parents=True, exist_ok=True)
        pem = self.cert_pem_source(self.etc / "server.pem")
        ca = self.ca_pem_source(self.etc / "ca.pem") if self.ca_pem_source else pem
        self._copy_web()
        yml = fill_template(TEMPLATE.read_text(), {
            "LOGLEVEL": self.loglevel,
            "DOMAIN": self.domain,
            "PUBSUB_DOMAIN": self.pubsub_domain,
            "CERTFILE": pem,
            "LDAP_PORT": self.ldap["port"],
            "LDAP_ROOTDN": self.ldap["rootdn"],
            "LDAP_PASSWORD": self.ldap["password"],
            "LDAP_PEOPLE_BASE": self.ldap["people_base"],
            "C2S_PORT": self.c2s_port,
            "HTTP_PORT": self.http_port,
            "ADMIN_JID": self.admin_jid,
            "WEB_ROOT": self.web_root,
            "LISTEN_IP": self.listen_ip,
            "S2S_PORT": self.s2s_port,
            "CA_FILE": ca,
        }, str(TEMPLATE))
        write_text(self.etc / "ejabberd.yml", yml, 0o640)
        write_text(self.etc / "ejabberdctl.cfg", f"""\
# Generated by the Archipel rig.  Sourced by /usr/sbin/ejabberdctl through
# --config-dir (Debian's /etc/default/ejabberd would force its own config path).
ERLANG_NODE={self.node}
# distribution on this port only, no epmd; vm.args pins it to {self.listen_ip}
# (the nodes of a rig cluster share the port, each on its own loopback address)
ERL_DIST_PORT={self.dist_port}
ERL_EPMD_ADDRESS=127.0.0.1
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH={self.pidfile}
EJABBERD_BYPASS_WARNINGS=true
CONTRIB_MODULES_CONF_DIR={self.etc / 'modules.d'}
CONTRIB_MODULES_PATH={self.spool / 'contrib'}
""")
        ip_tuple = "{" + ",".join(self.listen_ip.split(".")) + "}"
        write_text(self.etc / "vm.args", f"-kernel inet_dist_use_interface {ip_tuple}\n")
        # Names: this node's and the cluster nodes' from here; DNS (the SRV records of
        # federation) only from the rig's dnsmasq on loopback, never the host's resolver.
        write_text(self.etc / "inetrc",
                   '{lookup,["file","native"]}.\n'
                   f'{{host,{{127,0,0,1}}, ["localhost","{self.domain}","{self.pubsub_domain}"]}}.\n'
                   + "".join(f'{{host,{{127,0,0,{k}}}, ["{cluster_host(k)}"]}}.\n'
                             for k in range(2, 2 + MAX_EXTRA_NODES))
                   + f'{{host,{{{CAMPUS_IP.replace(".", ",")}}}, ["{CAMPUS_HOST}"]}}.\n'
                   + '{resolv_conf,""}.\n{hosts_file,""}.\n'
                   + f'{{nameserver,{{127,0,0,1}},{self.dns_port}}}.\n')
        # As root, ejabberdctl would `su ejabberd`, and su's pam_limits resets the soft
        # fd limit to 1024: too few sockets for an agent with 1,000 VM entities.
        # setpriv switches user without PAM, so beam keeps our limit.
        home = pwd.getpwnam("ejabberd").pw_dir
        switch = (f'env HOME="{home}" setpriv --reuid=ejabberd --regid=ejabberd --init-groups '
                  if os.geteuid() == 0 else "")
        write_text(self.ctl, "#!/bin/sh\n# Generated by the Archipel rig: ejabberdctl on this rig's instance\n"
                             f'exec {switch}{EJABBERDCTL} --config-dir "{self.etc}" --spool "{self.spool}" '
                             f'--logs "{self.logs}" "$@"\n', 0o755)
        # ejabberdctl runs as "ejabberd" (setpriv): it must read etc, write spool/logs/run
        # (the dir itself and ejctl stay root's: root runs ejctl)
        run(["chown", "-R", "ejabberd:ejabberd", self.etc, self.spool, self.logs, self.run_dir])
        for path in (self.dir, self.ctl, self.dir / LINK_NOTE):
            os.chown(path, 0, 0)
        os.chmod(self.dir, 0o755)
        os.chmod(self.etc, 0o750)  # the server key and the LDAP password: ejabberd's only

    @property
    def web_root(self) -> Path:
        return self.dir / "web"

    def _copy_web(self) -> None:
        """The browser client served at /web/ (mod_http_fileserver): a copy of
        web/dist taken at each start, or a page saying how to build it."""
        shutil.rmtree(self.web_root, ignore_errors=True)
        if (WEB_DIST / "index.html").is_file():
            shutil.copytree(WEB_DIST, self.web_root)
        else:
            self.web_root.mkdir(parents=True)
            write_text(self.web_root / "index.html", "<!doctype html><title>Archipel</title>"
                       "<p>The web client is not built: run scripts/bootstrap.sh (npm ci + build in web/).</p>\n")
        for path in [self.web_root, *self.web_root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)

    # ----------------------------------------------------------------- start
    def start(self, fresh: bool = False) -> float:
        """(Re)start.  ``fresh`` wipes the mnesia spool (all internal accounts,
        rosters, pubsub nodes, vCards): a clean server."""
        t0 = time.monotonic()
        self.stop()
        if fresh:
            shutil.rmtree(self.spool, ignore_errors=True)
        self.write_config()
        check_traversable(self.dir, "ejabberd")
        ensure_ports_free({"xmpp c2s": self.c2s_port, "http": self.http_port, "xmpp s2s": self.s2s_port,
                           "erlang distribution": self.dist_port}, host=self.listen_ip)
        out = self.logs / "ejctl.out"
        rc = spawn_daemon([self.ctl, "start"], out, env=self.env(), cwd=self.dir)
        if rc != 0:
            raise EjabberdError(f"ejabberdctl start exited with {rc}:\n{tail(out)}")

        def died():
            if time.monotonic() - t0 > 3 and not self.running():
                return f"ejabberd died at start:\n{self._log_tails()}"
            return None

        try:
            wait_until(lambda: port_accepts(self.c2s_port, self.listen_ip) and self._api_started(), 60,
                       "ejabberd", alive=died)
        except RigError as e:
            raise EjabberdError(f"{e}\n{self._log_tails()}") from None
        dt = time.monotonic() - t0
        log.info("ejabberd: ready (c2s %s:%d, http %d, node %s) in %.2fs (pid %s)",
                 self.listen_ip, self.c2s_port, self.http_port, self.node, dt, read_pidfile(self.pidfile))
        return dt

    def _log_tails(self) -> str:
        return "\n".join(f"--- {p}\n{tail(p)}" for p in
                         (self.logs / "ejabberd.log", self.logs / "error.log", self.logs / "ejctl.out")
                         if p.exists())

    def _api_started(self) -> bool:
        try:
            res = self.api("status", timeout=2)
        except (OSError, RigError, ValueError):
            return False
        return "started" in str(res)

    # ------------------------------------------------------------------- api
    def api(self, command: str, payload: dict | None = None, timeout: float = 30) -> object:
        body = json.dumps(payload or {}).encode()
        req = urllib.request.Request(f"{self.api_url}/{command}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            raise EjabberdError(f"ejabberd API {command} -> HTTP {e.code}: {text}") from None
        return json.loads(raw) if raw.strip() else None

    def ctl_run(self, *args: str, check: bool = True, timeout: float = 60):
        return run([self.ctl, *args], check=check, timeout=timeout, env=self.env(), cwd=self.dir)

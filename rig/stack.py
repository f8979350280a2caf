"""The rig: real ejabberd + slapd + libvirtd/QEMU for the Archipel agent's
demo and integration tests, everything on 127.0.0.1, all state under one
directory (default ``<repo>/.rig/<profile>``).  Stdlib only.

    stack = Stack(profile="test")
    stack.start()          # idempotent: stops a previous (even crashed) run first
    ...
    stack.stop()

See docs/RIG.md.
"""
from __future__ import annotations

import configparser
import json
import os
import threading
import time
from pathlib import Path

from . import slapd as _slapd
from .certs import CertAuthority
from .ejabberd import Ejabberd
from .hypervisors import Hypervisors
from .libvirtd import Libvirtd, kvm_usable
from .util import RigError, ensure_ports_free, listening_addresses, log

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "archipel.test"

PROFILES: dict[str, dict] = {
    "demo": {"c2s_port": 5222, "http_port": 5280, "ldap_port": 3890, "dist_port": 5210,
             "node": "ejabberd@localhost"},
    "test": {"c2s_port": 15222, "http_port": 15280, "ldap_port": 13890, "dist_port": 15210,
             "node": "ejabberd_test@localhost"},
}
# Extra profiles so several developers (or agents) can run the integration
# suite at once on one machine: ARCHIPEL_RIG_PROFILE=dev1 make test.
for _i in range(1, 7):
    PROFILES[f"dev{_i}"] = {"c2s_port": 25222 + 100 * _i, "http_port": 25280 + 100 * _i,
                            "ldap_port": 23890 + 100 * _i, "dist_port": 25210 + 100 * _i,
                            "node": f"ejabberd_dev{_i}@localhost"}
# A twin of each test profile ("test-demo", "devN-demo": ports +50) for the test
# that runs `python -m rig demo` while the suite's own stack is up.
for _name in [n for n in PROFILES if n != "demo"]:
    _p = PROFILES[_name]
    PROFILES[f"{_name}-demo"] = {**{k: _p[k] + 50 for k in ("c2s_port", "http_port", "ldap_port", "dist_port")},
                                 "node": _p["node"].replace("@", "_demo@")}


class Stack:
    """The rig of one profile.  Attribute names are relied upon by the tests
    and the demo; see docs/RIG.md."""

    def __init__(self, profile: str = "demo", state_dir: Path | str | None = None):
        if profile not in PROFILES:
            raise ValueError(f"unknown rig profile {profile!r} (choose from {', '.join(PROFILES)})")
        self.profile = profile
        p = PROFILES[profile]
        self.state_dir = Path(state_dir).resolve() if state_dir else REPO / ".rig" / profile
        self.domain = DOMAIN
        self.pubsub_domain = f"pubsub.{DOMAIN}"
        self.xmpp_host = "127.0.0.1"
        self.c2s_port: int = p["c2s_port"]
        self.http_port: int = p["http_port"]
        self.ldap_port: int = p["ldap_port"]
        self.dist_port: int = p["dist_port"]
        self.node: str = p["node"]
        self.hypervisor_jid = f"hypervisor@{DOMAIN}"
        self.ldap_base_dn = _slapd.BASE_DN
        self.ldap_bind_dn = _slapd.ROOT_DN
        self.ldap_bind_password = _slapd.ROOT_PASSWORD
        self.users: list[dict] = [
            {"jid": f"{uid}@{DOMAIN}", "password": pw, "role": role, "uid": uid,
             "dn": f"uid={uid},ou=people,{_slapd.BASE_DN}", "name": f"{given} {sn}"}
            for uid, pw, role, given, sn in _slapd.PEOPLE]
        self.timings: dict[str, float] = {}

        self.certs = CertAuthority(self.state_dir / "ca", DOMAIN)
        self.slapd = _slapd.Slapd(self.state_dir / "ldap", self.ldap_port, DOMAIN)
        self.ejabberd = Ejabberd(
            self.state_dir / "ejabberd", domain=DOMAIN, pubsub_domain=self.pubsub_domain,
            c2s_port=self.c2s_port, http_port=self.http_port, dist_port=self.dist_port, node=self.node,
            ldap={"port": self.ldap_port, "rootdn": self.ldap_bind_dn, "password": self.ldap_bind_password,
                  "people_base": f"ou=people,{self.ldap_base_dn}"},
            admin_jid=self.admin_user["jid"], cert_pem_source=self.certs.server_pem,
            ca_pem_source=self.certs.ca_pem)
        index = list(PROFILES).index(profile)  # demo 0, test 1, devN N+1
        self.libvirtd = Libvirtd(self.state_dir / "libvirt", display_ports=(5900 + 200 * index, 6099 + 200 * index))
        self.hypervisors = Hypervisors(self.state_dir, profile, subnet=index)  # extra, namespaced: start_hypervisors()
        self._domain_type: str | None = None

    # ------------------------------------------------------------ properties
    @property
    def admin_user(self) -> dict:
        return next(u for u in self.users if u["role"] == "admin")

    def user(self, uid: str) -> dict:
        """The seeded LDAP user ``uid`` (e.g. ``"student1"``)."""
        return next(u for u in self.users if u["uid"] == uid)

    @property
    def bosh_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/http-bind"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api"

    @property
    def web_url(self) -> str:
        """The browser client, served by ejabberd on the BOSH/WebSocket listener (same origin).

        By the XMPP domain's name: ejabberd 23.01's mod_http_fileserver serves only
        a Host naming a served domain; the browser must resolve it to 127.0.0.1
        (/etc/hosts, or chromium's ``--host-resolver-rules``)."""
        return f"http://{self.domain}:{self.http_port}/web/"

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @property
    def libvirt_uri(self) -> str:
        return self.libvirtd.uri

    @property
    def domain_type(self) -> str:
        if self._domain_type is None:
            self._domain_type = "kvm" if kvm_usable() else "qemu"
        return self._domain_type

    @property
    def storage_dir(self) -> Path:
        d = self.state_dir / "storage" / "drives"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def ldap_uri(self) -> str:
        return self.slapd.uri

    @property
    def ldapi_uri(self) -> str:
        return self.slapd.ldapi_uri

    # ------------------------------------------------------------- lifecycle
    def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise RigError("the rig must run as root (privileged libvirtd, ejabberdctl su, mount namespaces)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755)
        self.certs.ensure()

    def start(self, fresh: bool = True) -> "Stack":
        """Start slapd (seeded), ejabberd and libvirtd and wait until each answers.

        Idempotent: whatever of ours still runs from a previous run (pidfiles,
        or processes naming our state dir) is stopped first.  ``fresh`` (the
        default) gives a clean state: LDAP reseeded, ejabberd's mnesia spool
        wiped, libvirt domain definitions forgotten, storage_dir emptied."""
        t0 = time.monotonic()
        self._prepare()
        log.info("rig[%s]: starting in %s", self.profile, self.state_dir)
        self.stop_all_quietly()
        ensure_ports_free({"xmpp c2s": self.c2s_port, "http": self.http_port, "ldap": self.ldap_port,
                           "xmpp s2s": self.ejabberd.s2s_port, "erlang distribution": self.dist_port})
        if fresh:
            import shutil
            shutil.rmtree(self.state_dir / "storage", ignore_errors=True)
        self.storage_dir  # noqa: B018 - creates it
        try:
            self.timings["slapd"] = self.slapd.start(fresh=fresh)
            # ejabberd and libvirtd are independent: start them side by side
            errors: list[BaseException] = []

            def bg():
                try:
                    self.timings["libvirtd"] = self.libvirtd.start(fresh=fresh)
                except BaseException as e:  # noqa: BLE001 - re-raised below
                    errors.append(e)

            th = threading.Thread(target=bg, name="rig-libvirtd")
            th.start()
            try:
                self.timings["ejabberd"] = self.ejabberd.start(fresh=fresh)
            finally:
                th.join()
            if errors:
                raise errors[0]
        except BaseException:
            log.error("rig[%s]: start failed, stopping what was started", self.profile)
            self.stop_all_quietly()
            raise
        self.timings["start"] = time.monotonic() - t0
        log.info("rig[%s]: up in %.2fs (slapd %.2fs, ejabberd %.2fs, libvirtd %.2fs, domain type %s)",
                 self.profile, self.timings["start"], self.timings["slapd"], self.timings["ejabberd"],
                 self.timings["libvirtd"], self.domain_type)
        return self

    def stop(self) -> None:
        """Stop everything of ours (domains destroyed first; no QEMU left)."""
        t0 = time.monotonic()
        errors = self._stop_parallel()
        self.timings["stop"] = time.monotonic() - t0
        log.info("rig[%s]: stopped in %.2fs", self.profile, self.timings["stop"])
        if errors:
            raise errors[0]

    def purge(self) -> None:
        """Stop, then remove every file of this rig: the state dir and ejabberd's
        system dir (``make clean-rig``)."""
        self.stop_all_quietly()
        self.ejabberd.purge()
        import shutil
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def stop_all_quietly(self) -> None:
        for e in self._stop_parallel():
            log.warning("rig[%s]: while stopping: %s", self.profile, e)

    def _stop_parallel(self) -> list[BaseException]:
        errors: list[BaseException] = []

        def guard(fn):
            def inner():
                try:
                    fn()
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
            return inner

        threads = [threading.Thread(target=guard(f)) for f in
                   (self.libvirtd.stop, self.hypervisors.stop, self.ejabberd.stop, self.slapd.stop,
                    self._stop_extra_servers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors

    def _stop_extra_servers(self) -> None:
        """Cluster nodes and the federation's campus server and DNS (rig/cluster.py,
        rig/federation.py), found by their state links, even if their test died."""
        from .ejabberd import stop_linked
        from .federation import SrvDns
        for link in sorted(self.state_dir.glob("ejabberd-*")):
            if link.is_symlink():
                stop_linked(link)
        SrvDns(self.state_dir / "federation", self.ejabberd.dns_port).stop()

    # per component -------------------------------------------------------
    def start_ejabberd(self, fresh: bool = False) -> float:
        """Start (or restart) ejabberd; keeps the spool unless ``fresh``."""
        self._prepare()
        return self.ejabberd.start(fresh=fresh)

    def stop_ejabberd(self) -> None:
        self.ejabberd.stop()

    def restart_ejabberd(self) -> float:
        """Stop and start ejabberd keeping its spool: accounts survive."""
        return self.start_ejabberd(fresh=False)

    def start_slapd(self, fresh: bool = False) -> float:
        self._prepare()
        return self.slapd.start(fresh=fresh)

    def stop_slapd(self) -> None:
        self.slapd.stop()

    def restart_slapd(self) -> float:
        return self.start_slapd(fresh=False)

    def start_libvirtd(self, fresh: bool = False) -> float:
        """Start (or restart) libvirtd.  Without ``fresh`` running domains are
        kept and re-attached, as after a real libvirtd restart."""
        self._prepare()
        return self.libvirtd.start(fresh=fresh)

    def start_hypervisors(self, count: int) -> list:
        """Start ``count`` extra hypervisors (rig/hypervisors.py: a libvirtd per network and
        mount namespace, shared storage at ``hypervisors.shared_path``); stopped by stop()."""
        self._prepare()
        t0 = time.monotonic()
        members = self.hypervisors.start(count)
        self.set_peers_group([f"{hv.name}@{self.domain}" for hv in members])
        self.timings["hypervisors"] = time.monotonic() - t0
        return members

    PEERS_GROUP = "archipel-hypervisors"  # the agents' default [HYPERVISOR] hypervisor_peers_group

    def set_peers_group(self, jids: list[str], group: str = PEERS_GROUP) -> None:
        """The shared roster group (mod_shared_roster) of hypervisors that know each other:
        created if needed, then exactly ``jids`` as members -- what a site's ejabberd admin does."""
        if group not in (self.ejabberd_api("srg_list", host=self.domain) or []):
            self.ejabberd_api("srg_create", group=group, host=self.domain, label=group,
                              description="Archipel hypervisors (peers for migration)", display=group)
        current = set(self.ejabberd_api("srg_get_members", group=group, host=self.domain) or [])
        for jid in current - set(jids):
            user, host = jid.split("@", 1)
            self.ejabberd_api("srg_user_del", user=user, host=host, group=group, grouphost=self.domain)
        for jid in set(jids) - current:
            user, host = jid.split("@", 1)
            self.ejabberd_api("srg_user_add", user=user, host=host, group=group, grouphost=self.domain)

    def stop_libvirtd(self, destroy_domains: bool = True) -> None:
        self.libvirtd.stop(destroy_domains=destroy_domains)

    def restart_libvirtd(self) -> float:
        """Restart libvirtd; running QEMU processes survive and are re-attached."""
        return self.start_libvirtd(fresh=False)

    # -------------------------------------------------------------- status
    def status(self) -> dict:
        pids = {"slapd": self.slapd.pids(), "ejabberd": self.ejabberd.pids(), "libvirtd": self.libvirtd.pids(),
                "qemu": self.libvirtd.qemu_pids()}
        listening = listening_addresses([p for v in pids.values() for p in v])
        return {"profile": self.profile, "state_dir": str(self.state_dir), "pids": pids,
                "listening": [f"{a}:{port} (pid {pid})" for pid, a, port in listening],
                "running": all(pids[k] for k in ("slapd", "ejabberd", "libvirtd"))}

    def listening_sockets(self) -> list[tuple[int, str, int]]:
        """(pid, address, port) of every TCP listener of our processes."""
        st = self.status()["pids"]
        return listening_addresses([p for v in st.values() for p in v])

    # ------------------------------------------------------------- ejabberd
    def ejabberd_api(self, command: str, **payload) -> object:
        """POST ``payload`` as JSON to mod_http_api's ``command``; parsed JSON
        back; RigError (with the body) on an HTTP error."""
        return self.ejabberd.api(command, payload)

    def _split(self, user: str) -> tuple[str, str]:
        if "@" in user:
            local, host = user.split("@", 1)
            return local, host
        return user, self.domain

    def register_user(self, user: str, password: str, exist_ok: bool = False) -> str:
        """Create an internal ejabberd account (``user`` or ``user@domain``);
        returns the bare JID."""
        local, host = self._split(user)
        try:
            self.ejabberd_api("register", user=local, host=host, password=password)
        except RigError as e:
            if not (exist_ok and "409" in str(e)):
                raise
        return f"{local}@{host}"

    def unregister_user(self, user: str) -> None:
        local, host = self._split(user)
        self.ejabberd_api("unregister", user=local, host=host)

    def ejabberdctl(self, *args: str, check: bool = True, timeout: float = 60):
        """Run ``<state>/ejabberd/ejctl ARGS`` (each call boots an Erlang
        control node: ~0.25 s; prefer ejabberd_api)."""
        return self.ejabberd.ctl_run(*args, check=check, timeout=timeout)

    # ------------------------------------------------------------ agent conf
    def agent_ldap_settings(self) -> dict[str, str]:
        """The agent's [LDAP] section for this rig's slapd: group grants, roles
        given to groups and the ``admins`` group as LDAP admin group work."""
        return {"ldap_enabled": "true", "ldap_uri": self.ldap_uri, "ldap_bind_dn": self.ldap_bind_dn,
                "ldap_bind_password": self.ldap_bind_password, "ldap_base_dn": self.ldap_base_dn,
                "ldap_user_base": f"ou=people,{self.ldap_base_dn}",
                "ldap_group_base": f"ou=groups,{self.ldap_base_dn}",
                "ldap_admin_groups": " ".join(g for g, role in _slapd.GROUPS.items() if role == "admin")}

    @property
    def metrics_port(self) -> int:
        """The demo agent's Prometheus endpoint (demo 9474, test 19474, …: beside the profile's c2s port)."""
        return self.c2s_port + 4252

    def write_agent_config(self, path: Path | str, *, hypervisor_jid: str = f"hypervisor@{DOMAIN}",
                           hypervisor_password: str, lib_dir: Path | str, log_file: Path | str | None = None,
                           overrides: dict[str, dict[str, str]] | None = None) -> Path:
        """The project's conf/archipel.conf pointed at this rig (comments are lost)."""
        path = Path(path)
        lib_dir = Path(lib_dir)
        lib_dir.mkdir(parents=True, exist_ok=True)
        cp = configparser.ConfigParser(interpolation=None)
        sample = REPO / "conf" / "archipel.conf"
        if not cp.read(sample):
            raise RigError(f"cannot read {sample}")

        def put(section: str, key: str, value) -> None:
            if section != "DEFAULT" and not cp.has_section(section):
                cp.add_section(section)
            cp.set(section, key, str(value))

        put("DEFAULT", "xmpp_server", self.domain)
        put("DEFAULT", "archipel_folder_lib", lib_dir)
        put("GLOBAL", "xmpp_pubsub_server", self.pubsub_domain)
        put("GLOBAL", "archipel_root_admins", self.admin_user["jid"])
        put("GLOBAL", "libvirt_uri", self.libvirt_uri)
        put("GLOBAL", "machine_ip", "127.0.0.1")
        put("XMPP", "xmpp_host", self.xmpp_host)
        put("XMPP", "xmpp_port", self.c2s_port)
        put("XMPP", "xmpp_tls", "auto")
        put("XMPP", "xmpp_ca_file", self.ca_file)
        put("XMPP", "xmpp_http_api_url", self.api_url)
        put("XMPP", "account_provisioning", "ibr")
        put("HYPERVISOR", "hypervisor_xmpp_jid", hypervisor_jid)
        put("HYPERVISOR", "hypervisor_xmpp_password", hypervisor_password)
        put("HYPERVISOR", "hypervisor_database_path", lib_dir / "hypervisor.sqlite3")
        put("HYPERVISOR", "hypervisor_permissions_database_path", lib_dir / "permissions.sqlite3")
        put("VIRTUALMACHINE", "vm_base_path", self.storage_dir)
        if log_file:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        put("LOGGING", "logging_file_path", log_file or "")
        put("METRICS", "metrics_address", "")  # agents of one rig would share a port: off unless overridden
        for section, values in (overrides or {}).items():
            for key, value in values.items():
                put(section, key, value)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"# Generated by the Archipel rig ({self.profile} profile) from {sample}\n")
            cp.write(f)
        os.chmod(path, 0o600)
        return path

    # -------------------------------------------------------------- summary
    def summary(self) -> dict:
        return {
            "profile": self.profile,
            "xmpp_host": self.xmpp_host,
            "xmpp_port": self.c2s_port,
            "domain": self.domain,
            "pubsub_domain": self.pubsub_domain,
            "bosh_url": self.bosh_url,
            "ws_url": self.ws_url,
            "api_url": self.api_url,
            "web_url": self.web_url,
            "hypervisor_jid": self.hypervisor_jid,
            "ca_file": str(self.ca_file),
            "libvirt_uri": self.libvirt_uri,
            "ldap_uri": self.ldap_uri,
            "state_dir": str(self.state_dir),
            "users": [{"jid": u["jid"], "password": u["password"], "role": u["role"]} for u in self.users],
        }

    def write_summary(self, path: Path | str, **extra) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.summary(), **extra}, indent=2) + "\n")
        return path

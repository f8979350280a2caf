"""Prometheus metrics of the agent, the hypervisor and its VMs (prometheus-client).

* **Counted as they happen** (on the loop): every command by namespace,
  action, transport and outcome, with its latency (``dispatch`` calls
  :func:`observe_command` next to the audit record); permission refusals.
* **Read at scrape time** from a snapshot the loop refreshes every few
  seconds (:meth:`Metrics.refresh`): entities online/offline, XMPP and libvirt
  reconnects, storage state, requests in flight, disk jobs, and — when the
  ``health`` module runs — the host's CPU, memory and load and each VM's
  counters (from its one bulk libvirt call).  The HTTP thread never touches
  the agent's live objects, only that immutable snapshot.
* **Served** by prometheus-client's WSGI app in one server thread on
  ``[METRICS] metrics_address`` (empty: off; loopback by default in the shipped
  config), with optional HTTP basic auth (``metrics_user`` +
  ``metrics_password_file``) and TLS (``metrics_certfile``/``metrics_keyfile``).
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from .audit.log import outcome_of
from .config import ConfigError

log = logging.getLogger(__name__)

SECTION = "METRICS"
REFRESH_SECONDS = 5.0
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class MetricsConfig:
    host: str | None  # None: no endpoint
    port: int = 0
    user: str | None = None
    password: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


def read_config(config) -> MetricsConfig:
    """``[METRICS]``; a bad value stops the start with the file, section and key."""
    parser, path = config.parser, config.path

    def raw(key: str) -> str:
        if parser is None or not parser.has_section(SECTION):
            return ""
        return (parser.get(SECTION, key, fallback="") or "").strip()

    address = raw("metrics_address")
    if not address:
        return MetricsConfig(host=None)
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ConfigError(path, SECTION, "metrics_address", f"expected ADDRESS:PORT (e.g. 127.0.0.1:9474), found {address!r}") from None
    if not sep or not 1 <= number <= 65535:
        raise ConfigError(path, SECTION, "metrics_address", f"expected a port 1-65535, found {address!r}")
    user, password_file = raw("metrics_user"), raw("metrics_password_file")
    password = None
    if bool(user) != bool(password_file):
        raise ConfigError(path, SECTION, "metrics_user", "metrics_user and metrics_password_file go together")
    if password_file:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(path, SECTION, "metrics_password_file", f"cannot read it: {exc.strerror or exc}") from None
        if not password:
            raise ConfigError(path, SECTION, "metrics_password_file", "the file is empty")
    certfile, keyfile = raw("metrics_certfile") or None, raw("metrics_keyfile") or None
    if bool(certfile) != bool(keyfile):
        raise ConfigError(path, SECTION, "metrics_certfile", "metrics_certfile and metrics_keyfile go together")
    if not ip.is_loopback and not (user and certfile):
        raise ConfigError(path, SECTION, "metrics_address",
                          f"{host} is not loopback: set metrics_user/metrics_password_file and a TLS certificate too")
    return MetricsConfig(host=str(ip), port=number, user=user or None, password=password,
                         certfile=certfile, keyfile=keyfile)


def _basic_auth(app, user: str, password: str):
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ, start_response):
        if not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", ""), expected):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="archipel-agent"'),
                                                ("Content-Type", "text/plain")])
            return [b"authentication required\n"]
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # scrapes are not news
        pass


class _Snapshot:
    """What the scrape reads: plain values copied on the loop (never live agent objects)."""

    def __init__(self):
        self.taken = 0.0
        self.entities: dict[tuple[str, str], int] = {}
        self.xmpp_reconnects: dict[str, int] = {}
        self.libvirt_reconnects = 0
        self.login_attempts = 0
        self.login_peak = 0
        self.libvirt_up = 0
        self.storage_ok = 1
        self.in_flight = 0
        self.disk_jobs = 0
        self.host: dict | None = None
        self.vms: list[tuple[str, str, dict]] = []


class _AgentCollector:
    def __init__(self, metrics: "Metrics"):
        self.metrics = metrics

    def collect(self):
        s = self.metrics.snapshot
        g = GaugeMetricFamily("archipel_entities", "Jabber entities of the agent, by kind and state", labels=["kind", "state"])
        for (kind, state), n in sorted(s.entities.items()):
            g.add_metric([kind, state], n)
        yield g
        c = CounterMetricFamily("archipel_xmpp_reconnects", "XMPP sessions started again after the first, by entity kind",
                                labels=["kind"])
        for kind, n in sorted(s.xmpp_reconnects.items()):
            c.add_metric([kind], n)
        yield c
        yield CounterMetricFamily("archipel_libvirt_reconnects", "libvirt connections re-established", value=s.libvirt_reconnects)
        yield CounterMetricFamily("archipel_login_attempts", "XMPP connection attempts the login gate started",
                                  value=s.login_attempts)
        yield GaugeMetricFamily("archipel_login_attempts_peak_per_second",
                                "the most connection attempts started within one second since the agent started "
                                "(bounded by [XMPP] max_logins_per_second)", value=s.login_peak)
        yield GaugeMetricFamily("archipel_libvirt_up", "1 while libvirt is connected", value=s.libvirt_up)
        yield GaugeMetricFamily("archipel_storage_ok", "1 while the VM storage is healthy (storage/health.py)", value=s.storage_ok)
        yield GaugeMetricFamily("archipel_requests_in_flight", "requests being served, every transport", value=s.in_flight)
        yield GaugeMetricFamily("archipel_disk_jobs_running", "background disk jobs (convert, golden copies)", value=s.disk_jobs)
        yield GaugeMetricFamily("archipel_metrics_snapshot_age_seconds", "age of the figures below",
                                value=max(0.0, time.time() - s.taken) if s.taken else 0.0)
        if s.host:
            h = s.host
            yield GaugeMetricFamily("archipel_host_cpu_usage_ratio", "host CPU busy, 0-1", value=h["cpu"] / 100.0)
            yield GaugeMetricFamily("archipel_host_memory_total_bytes", "host memory", value=h["mem_total"] * 1024)
            yield GaugeMetricFamily("archipel_host_memory_available_bytes", "host memory available", value=h["mem_free"] * 1024)
            yield GaugeMetricFamily("archipel_host_load1", "1-minute load average", value=h["load1"])
        families = {
            "cpu": CounterMetricFamily("archipel_vm_cpu_seconds", "CPU time of the VM", labels=["uuid", "name"]),
            "memory": GaugeMetricFamily("archipel_vm_memory_bytes", "memory given to the VM (balloon)", labels=["uuid", "name"]),
            "rd": CounterMetricFamily("archipel_vm_disk_read_bytes", "bytes read from its disks", labels=["uuid", "name"]),
            "wr": CounterMetricFamily("archipel_vm_disk_written_bytes", "bytes written to its disks", labels=["uuid", "name"]),
            "rx": CounterMetricFamily("archipel_vm_network_receive_bytes", "bytes received", labels=["uuid", "name"]),
            "tx": CounterMetricFamily("archipel_vm_network_transmit_bytes", "bytes sent", labels=["uuid", "name"]),
            "state": GaugeMetricFamily("archipel_vm_state", "libvirt state (1 running, 3 paused, 5 shut off…)", labels=["uuid", "name"]),
        }
        for uuid, name, f in s.vms:
            families["cpu"].add_metric([uuid, name], f["cpu_time"] / 1e9)
            families["memory"].add_metric([uuid, name], f["balloon"] * 1024)
            families["rd"].add_metric([uuid, name], f["disk_read"])
            families["wr"].add_metric([uuid, name], f["disk_write"])
            families["rx"].add_metric([uuid, name], f["net_rx"])
            families["tx"].add_metric([uuid, name], f["net_tx"])
            families["state"].add_metric([uuid, name], f["state"])
        yield from families.values()


class Metrics:
    """Built once in the wiring (``Agent.metrics``); counts always, serves when configured."""

    def __init__(self, cfg: MetricsConfig):
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.commands = Counter("archipel_commands", "commands answered, by outcome (ok, denied, error:<code>, error:internal)",
                                ["namespace", "action", "transport", "outcome"], registry=self.registry)
        self.latency = Histogram("archipel_command_duration_seconds", "time to answer a command",
                                 ["namespace", "action"], buckets=BUCKETS, registry=self.registry)
        self.refusals = Counter("archipel_permission_refusals", "requests refused for lack of permission",
                                ["namespace", "action"], registry=self.registry)
        self.snapshot = _Snapshot()
        self.registry.register(_AgentCollector(self))
        self._server = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------- counting
    def command(self, namespace: str | None, action: str | None, transport: str, outcome: str, seconds: float) -> None:
        ns, act = namespace or "", action or ""
        self.commands.labels(ns, act, transport, outcome).inc()
        self.latency.labels(ns, act).observe(max(0.0, seconds))
        if outcome == "denied":
            self.refusals.labels(ns, act).inc()

    def refresh(self, agent) -> None:
        """Copy what the scrape shows (on the loop, so the agent's objects are read safely)."""
        s = _Snapshot()
        entities = [agent.hypervisor] if agent.hypervisor else []
        entities += list(agent.vms.entities.values())
        for e in entities:
            key = (e.kind, "online" if e.online.is_set() else "offline")
            s.entities[key] = s.entities.get(key, 0) + 1
            s.xmpp_reconnects[e.kind] = s.xmpp_reconnects.get(e.kind, 0) + max(0, e.sessions - 1)
        s.libvirt_reconnects = agent.libvirt_reconnects
        s.login_attempts, s.login_peak = agent.login_gate.started, agent.login_gate.peak
        s.libvirt_up = int(agent.libvirt.connected)
        s.storage_ok = int(agent.storage_health is None or agent.storage_health.ok)
        s.in_flight = agent.requests.total()
        s.disk_jobs = len(agent.disks.busy) if agent.disks is not None else 0
        health = agent.module_services.get("health")
        if health is not None and health.latest:
            latest = health.latest
            s.host = {"cpu": latest["cpu"].get("cpu", 0.0), "mem_total": latest["memory"]["total"],
                      "mem_free": latest["memory"]["free"], "load1": latest["load"]["one"]}
            names = {uuid: e.name for uuid, e in agent.vms.entities.items()}
            s.vms = [(uuid, names[uuid], dict(f)) for uuid, f in sorted(health.vm_stats.items()) if uuid in names]
        s.taken = time.time()
        self.snapshot = s  # one reference swap: the scrape thread sees the old or the new, never half

    async def _refresh_loop(self, agent) -> None:
        while True:
            try:
                self.refresh(agent)
            except Exception:  # noqa: BLE001 - a metric must never take the agent down
                log.exception("metrics: refresh failed")
            await asyncio.sleep(REFRESH_SECONDS)

    # -------------------------------------------------------------- serving
    def start(self, agent) -> None:
        self._task = agent.spawn(self._refresh_loop(agent), name="metrics-refresh")
        if self.cfg.host is None:
            return
        app = make_wsgi_app(self.registry)
        if self.cfg.user:
            app = _basic_auth(app, self.cfg.user, self.cfg.password)
        try:
            self._server = make_server(self.cfg.host, self.cfg.port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        except OSError as exc:  # metrics are secondary: the agent serves on, and says why there are none
            log.error("metrics: cannot listen on %s:%d ([METRICS] metrics_address): %s", self.cfg.host, self.cfg.port,
                      exc.strerror or exc)
            return
        if self.cfg.certfile:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cfg.certfile, self.cfg.keyfile)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        scheme = "https" if self.cfg.certfile else "http"
        log.info("metrics on %s://%s:%d/metrics%s", scheme, self.cfg.host, self.cfg.port,
                 " (basic auth)" if self.cfg.user else "")

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()


def observe_command(entity, namespace: str | None, action: str | None, transport: str,
                    error: BaseException | None, started: float | None) -> None:
    """Called by dispatch beside the audit record: count the answer and its latency."""
    metrics = getattr(getattr(entity, "agent", None), "metrics", None)  # test doubles of the agent have none
    if metrics is None:
        return
    metrics.command(namespace, action, transport, outcome_of(error),
                    time.perf_counter() - started if started is not None else 0.0)

"""``archipel-admin doctor``: is this hypervisor ready to run the agent?  Each check says how to fix it.

Archipel shipped ``archipel-testxmppserver``; this checks the whole chain from
the agent's own configuration, locally, as the agent would use it: the
configuration, ejabberd (reachable, STARTTLS with a trusted certificate, the
hypervisor's login, pubsub, vCard, in-band registration for its VM accounts),
the file-descriptor limit, libvirtd and KVM, the VM storage (present, mounted
when required, writable, fsync latency) and LDAP.  Exit 0 when every check
passes (warnings allowed), 1 when one fails, 2 on a configuration error.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT = 10.0
MIN_NOFILE = 4096  # each VM entity holds a c2s connection (README: file-descriptor limits)
FSYNC_WARNING_MS = 500.0


@dataclass
class Check:
    name: str
    status: str  # ok, warn, fail
    detail: str
    fix: str = ""


def setup_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check this hypervisor's readiness (ejabberd, TLS, pubsub, libvirt, KVM, "
                                      "storage, LDAP, limits); local, from the agent's configuration",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--config", default="/etc/archipel/archipel.conf", help="the agent's configuration "
                   "(default /etc/archipel/archipel.conf)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(local_run=run_doctor)


def _ok(name, detail):
    return Check(name, "ok", detail)


def _fail(name, detail, fix):
    return Check(name, "fail", detail, fix)


async def check_xmpp(config) -> list[Check]:
    from .client import AdminClient, AuthFailed, ConnectionFailed

    x, hv = config.xmpp, config.hypervisor
    checks: list[Check] = []
    client = AdminClient(hv.jid, hv.password, host=x.host, port=x.port, ca_file=x.ca_file, resource="doctor",
                         timeout=TIMEOUT)
    try:
        await client.connect()
    except AuthFailed as exc:
        return [_ok("ejabberd", f"{x.host}:{x.port} answers"),
                _fail("hypervisor login", str(exc), "check hypervisor_xmpp_jid/hypervisor_xmpp_password, or let the "
                      "agent create the account once (account_provisioning = ibr)")]
    except ConnectionFailed as exc:
        return [_fail("ejabberd", str(exc), "start ejabberd, or fix [XMPP] xmpp_host/xmpp_port; a certificate "
                      "problem: set xmpp_ca_file to the CA that signed ejabberd's certificate")]
    try:
        checks.append(_ok("ejabberd", f"{x.host}:{x.port} answers; logged in as {hv.jid}"))
        tls = client.xmpp.transport.get_extra_info("ssl_object") if client.xmpp.transport else None
        if tls is not None:
            checks.append(_ok("TLS", f"STARTTLS, {tls.version()}, certificate trusted"))
        elif x.tls == "required":
            checks.append(_fail("TLS", "no TLS on the stream", "offer STARTTLS in ejabberd (certfiles, starttls: true)"))
        else:
            checks.append(Check("TLS", "warn", "the stream is not encrypted (accepted towards loopback only)",
                                "offer STARTTLS in ejabberd (certfiles, starttls: true)"))
        disco = client.xmpp.plugin["xep_0030"]
        try:
            info = await disco.get_info(jid=config.pubsub_server, timeout=TIMEOUT)
            features = set(info["disco_info"]["features"])
            if "http://jabber.org/protocol/pubsub" in features:
                checks.append(_ok("pubsub", f"{config.pubsub_server} serves pubsub"))
            else:
                checks.append(_fail("pubsub", f"{config.pubsub_server} does not announce pubsub",
                                    "enable mod_pubsub on pubsub.<domain> (see ejabberd/ejabberd.yml.tmpl)"))
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure
            checks.append(_fail("pubsub", f"{config.pubsub_server}: {exc}", "enable mod_pubsub (host pubsub.<domain>) "
                                "and set [GLOBAL] xmpp_pubsub_server"))
        try:
            iq = client.xmpp.make_iq_get(ito=hv.jid)
            iq.append(ET.Element("{vcard-temp}vCard"))
            await iq.send(timeout=TIMEOUT)
            checks.append(_ok("vCard", "vcard-temp answers (the entities publish their ROLE)"))
        except Exception as exc:  # noqa: BLE001
            condition = getattr(getattr(exc, "iq", None), "get", lambda *_: None)("error", {}) or {}
            if getattr(exc, "condition", "") == "item-not-found" or condition == "item-not-found":
                checks.append(_ok("vCard", "vcard-temp answers (no vCard yet)"))
            else:
                checks.append(_fail("vCard", f"vcard-temp: {exc}", "enable mod_vcard in ejabberd"))
        if x.account_provisioning == "ibr":
            try:
                info = await disco.get_info(jid=config.domain, timeout=TIMEOUT)
                if "jabber:iq:register" in set(info["disco_info"]["features"]):
                    checks.append(Check("registration", "ok", "in-band registration is offered (the agent creates "
                                        "its VM accounts with it)", "make sure mod_register's ip_access allows only "
                                        "the hypervisors' addresses (ejabberd/ejabberd.yml.tmpl)"))
                else:
                    checks.append(_fail("registration", "in-band registration is not offered to this host",
                                        "enable mod_register with ip_access limited to the hypervisors, or use "
                                        "account_provisioning = http_api"))
            except Exception as exc:  # noqa: BLE001
                checks.append(_fail("registration", str(exc), "enable mod_register (ip_access: the hypervisors)"))
    finally:
        await client.close()
    return checks


def check_limits() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= MIN_NOFILE or hard >= 65536:  # the agent raises its soft limit up to the hard one
        return _ok("file descriptors", f"soft {soft}, hard {hard}")
    return Check("file descriptors", "warn", f"soft {soft}, hard {hard}: a few hundred VM entities at most",
                 "raise the limit (LimitNOFILE=65536 in the unit; ejabberd needs the same)")


def check_libvirt(config) -> list[Check]:
    import libvirt

    try:
        conn = libvirt.open(config.libvirt_uri)
    except libvirt.libvirtError as exc:
        return [_fail("libvirtd", f"{config.libvirt_uri}: {exc.get_error_message()}",
                      "start libvirtd, or fix [GLOBAL] libvirt_uri")]
    try:
        caps = ET.fromstring(conn.getCapabilities())
        version = conn.getLibVersion()
    finally:
        conn.close()
    checks = [_ok("libvirtd", f"{config.libvirt_uri}: libvirt {version // 1_000_000}.{version // 1000 % 1000}")]
    types = {d.get("type") for d in caps.iter("domain")}
    kvm_device = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if "kvm" in types and kvm_device:
        checks.append(_ok("KVM", "/dev/kvm usable; libvirt offers kvm domains"))
    else:
        checks.append(Check("KVM", "warn", "no KVM: guests run under QEMU's TCG emulation (much slower)",
                            "enable virtualisation in the BIOS and load kvm_intel/kvm_amd"))
    return checks


def check_storage(config) -> list[Check]:
    from ..storage.health import StorageSettings, probe

    base = Path(config.vm.base_path)
    settings = StorageSettings.from_config(config)
    result = probe(base)
    if not result.exists:
        return [_fail("storage", f"{base}: {'; '.join(result.errors.values()) or 'missing'}",
                      "mount the shared storage at [VIRTUALMACHINE] vm_base_path (the same path on every hypervisor)")]
    checks = []
    if settings.require_mountpoint and not result.mounted:
        checks.append(_fail("storage", f"{base} is not a mount point", "mount the NFS export there (fstab line "
                            "from `archipel-admin ha generate`)"))
    if not result.writable:
        checks.append(_fail("storage", f"{base} is not writable: {'; '.join(result.errors.values())}",
                            "remount it read-write; on the storage pair, check DRBD is primary and NFS exports rw"))
    elif result.fsync_ms is not None and result.fsync_ms > FSYNC_WARNING_MS:
        checks.append(Check("storage", "warn", f"{base}: fsync took {result.fsync_ms:.0f} ms",
                            "check the storage network and the DRBD/NFS pair's load"))
    else:
        free = f", {result.free_bytes / 2**30:.1f} GiB free" if result.free_bytes is not None else ""
        checks.append(_ok("storage", f"{base}: {'mounted, ' if result.mounted else ''}writable, "
                          f"fsync {result.fsync_ms or 0:.1f} ms{free}"))
    return checks


async def check_ldap(config) -> Check | None:
    if config.ldap is None:
        return None
    from ..directory import Directory

    directory = Directory(config.ldap, config.domain)
    try:
        if await directory.ping():
            return _ok("LDAP", f"{config.ldap.uri} answers the agent's bind")
        return _fail("LDAP", f"{config.ldap.uri} does not answer (or refuses the bind)",
                     "start slapd, or fix [LDAP] ldap_uri/ldap_bind_dn/ldap_bind_password")
    finally:
        await directory.close()


async def _off_loop(name: str, fn, *args) -> list[Check]:
    """Blocking checks (libvirt, the storage) in a thread, bounded: a hung NFS mount is a finding, not a hang."""
    try:
        result = await asyncio.wait_for(asyncio.to_thread(fn, *args), TIMEOUT)
    except asyncio.TimeoutError:
        return [_fail(name, f"no answer within {TIMEOUT:.0f} s", "a hung NFS mount or libvirtd: see its logs")]
    return result if isinstance(result, list) else [result]


async def diagnose(config) -> list[Check]:
    try:
        return await _diagnose(config)
    finally:  # slixmpp leaves filter tasks behind a closed stream: end them before the loop closes
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


async def _diagnose(config) -> list[Check]:
    checks = [_ok("configuration", f"{config.path} is valid")]
    checks += await check_xmpp(config)
    checks.append(check_limits())
    checks += await _off_loop("libvirtd", check_libvirt, config)
    checks += await _off_loop("storage", check_storage, config)
    ldap = await check_ldap(config)
    if ldap is not None:
        checks.append(ldap)
    return checks


def run_doctor(args) -> int:
    from ..config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"archipel-admin doctor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.CRITICAL)  # the checks say what failed; libraries' own lines are noise here
    checks = asyncio.run(diagnose(config))
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        marks = {"ok": " ok ", "warn": "warn", "fail": "FAIL"}
        for c in checks:
            print(f"[{marks[c.status]}] {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                print(f"       fix: {c.fix}")
        print("ready" if not failed else "not ready: fix the FAIL lines above")
    return EXIT_FAILED if failed else EXIT_OK

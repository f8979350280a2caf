"""``archipel-admin ha generate|check``: the storage pair's HA kit, offline.

Unlike the other subcommands these never connect to an agent: ``setup_ha``
sets ``local_run`` (a plain function ``args -> exit code``) and
:func:`archipelagent.admin.cli.main` calls it instead of connecting.

Exit codes: 0 ok, 1 a validator found a problem (or, with --strict, is
missing), 2 bad parameters or usage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..ha import kit
from ..ha.kit import HAKitError, HAParams

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2
EX = kit.EXAMPLE


def _int(option: str):
    def parse(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option}: expected a whole number, got {value!r}") from None
    return parse


def setup_ha(sub) -> None:
    p = sub.add_parser("ha", help="generate and check the HA storage kit (DRBD, Corosync, Pacemaker, NFSv4); offline",
                       description="The storage pair's HA configuration: LVM -> DRBD -> filesystem -> NFSv4, "
                                   "moved together by Pacemaker/Corosync.  Runs locally, no agent needed.")
    hsub = p.add_subparsers(dest="ha_command", metavar="ACTION", required=True)

    g = hsub.add_parser("generate", help="write the kit's files into a directory",
                        description="Write the DRBD resource, corosync.conf, the Pacemaker CIB and crmsh script, "
                                    "the NFS export and nfsd settings, the hypervisors' fstab line and a README "
                                    "into --out.  Example: archipel-admin ha generate --node1 storage1=10.0.0.1 "
                                    "--node2 storage2=10.0.0.2 --service-ip 192.168.10.100/24 --nic eth0 "
                                    "--device /dev/vg_archipel/lv_vms --clients 192.168.10.0/24 --out conf/ha")
    req = g.add_argument_group("required")
    req.add_argument("--node1", metavar="NAME=IP[,IP2]", help="first node: its `uname -n` and its address on the "
                     "replication/cluster network (IP2: optional second corosync link)")
    req.add_argument("--node2", metavar="NAME=IP[,IP2]", help="second node, same form")
    req.add_argument("--service-ip", metavar="IP/PREFIX", help="the floating address the hypervisors mount from")
    req.add_argument("--nic", help="interface carrying the service IP (e.g. eth0)")
    req.add_argument("--device", metavar="/dev/VG/LV", help="LVM logical volume under DRBD (same path on both nodes)")
    req.add_argument("--clients", metavar="NET/PREFIX", help="network allowed to mount the export (the hypervisors)")
    req.add_argument("--out", metavar="DIR", help="directory to write (created if missing)")
    opt = g.add_argument_group("optional")
    opt.add_argument("--cluster-name", default=EX.cluster_name, help=f"corosync cluster name (default {EX.cluster_name})")
    opt.add_argument("--drbd-resource", default=EX.drbd_resource, help=f"DRBD resource name (default {EX.drbd_resource})")
    opt.add_argument("--drbd-minor", type=_int("--drbd-minor"), default=EX.drbd_minor,
                     help=f"DRBD minor: /dev/drbdN (default {EX.drbd_minor})")
    opt.add_argument("--drbd-port", type=_int("--drbd-port"), default=EX.drbd_port,
                     help=f"DRBD TCP port (default {EX.drbd_port})")
    opt.add_argument("--drbd-version", choices=kit.DRBD_VERSIONS, default=EX.drbd_version,
                     help="DRBD kernel module: 8.4 (Debian 12's own) or 9 (LINBIT) (default 8.4)")
    opt.add_argument("--mount", default=EX.mount, help=f"mount point of the replicated volume (default {EX.mount})")
    opt.add_argument("--fstype", choices=kit.FSTYPES, default=EX.fstype, help=f"filesystem (default {EX.fstype})")
    opt.add_argument("--export", default="", help="exported directory, under --mount (default MOUNT/drives)")
    opt.add_argument("--client-mount", default=EX.client_mount,
                     help=f"where the hypervisors mount it: the agent's vm_base_path (default {EX.client_mount})")
    opt.add_argument("--lease-time", type=_int("--lease-time"), default=EX.lease_time,
                     help=f"NFSv4 lease time, seconds (default {EX.lease_time})")
    opt.add_argument("--grace-time", type=_int("--grace-time"), default=EX.grace_time,
                     help=f"NFSv4 grace time, seconds (default {EX.grace_time})")
    opt.add_argument("--ipmi", action="append", default=[], metavar="NODE=BMC",
                     help="IPMI address of a node's BMC (give both): turns STONITH on with fence_ipmilan")
    opt.add_argument("--ipmi-user", default=EX.ipmi_user, help=f"IPMI user (default {EX.ipmi_user})")
    opt.add_argument("--example", action="store_true",
                     help="use the example parameters (those of conf/ha/) for every option not given")
    opt.add_argument("--force", action="store_true", help="overwrite files already in --out")
    opt.add_argument("--json", action="store_true", help="machine-readable output", default=argparse.SUPPRESS)
    g.set_defaults(local_run=run_generate)

    c = hsub.add_parser("check", help="validate a generated kit with the installed offline tools",
                        description="crm_verify and crm_simulate (failover of the Promoted node) on cib.xml, "
                                    "crmsh on cluster.crm, drbdadm on the DRBD resource, corosync -t on "
                                    "corosync.conf (in a private network namespace).  Nothing is "
                                    "started.  A tool that is not installed is reported, and fails with --strict.")
    c.add_argument("directory", metavar="DIR", help="a directory written by `ha generate`")
    c.add_argument("--strict", action="store_true", help="a missing tool is a failure")
    c.add_argument("--json", action="store_true", help="machine-readable output", default=argparse.SUPPRESS)
    c.set_defaults(local_run=run_check)


def params_from_args(args) -> HAParams:
    example = getattr(args, "example", False)
    missing = [opt for opt in ("node1", "node2", "service_ip", "nic", "device", "clients")
               if not getattr(args, opt) and not example]
    if missing:
        raise HAKitError("missing " + ", ".join("--" + m.replace("_", "-") for m in missing)
                         + " (or --example for the example parameters)")
    node1 = kit.parse_node(args.node1, "node1") if args.node1 else EX.node1
    node2 = kit.parse_node(args.node2, "node2") if args.node2 else EX.node2
    return kit.validate(HAParams(
        node1=node1, node2=node2,
        service_ip=args.service_ip or EX.service_ip, nic=args.nic or EX.nic,
        device=args.device or EX.device, clients=args.clients or EX.clients,
        cluster_name=args.cluster_name, drbd_resource=args.drbd_resource, drbd_minor=args.drbd_minor,
        drbd_port=args.drbd_port, drbd_version=args.drbd_version, mount=args.mount, fstype=args.fstype,
        export=args.export, client_mount=args.client_mount, lease_time=args.lease_time,
        grace_time=args.grace_time, ipmi=tuple(kit.parse_ipmi(s) for s in args.ipmi), ipmi_user=args.ipmi_user))


def write_kit(files: dict[str, str], out: Path, force: bool = False) -> list[Path]:
    if out.exists() and not out.is_dir():
        raise HAKitError(f"--out: {out} exists and is not a directory")
    existing = sorted(name for name in files if (out / name).exists())
    if existing and not force:
        raise HAKitError(f"--out: {out} already has {', '.join(existing)}; use --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def run_generate(args) -> int:
    as_json = getattr(args, "json", False)
    try:
        if not args.out:
            raise HAKitError("missing --out DIR")
        params = params_from_args(args)
        written = write_kit(kit.generate(params), Path(args.out), args.force)
    except HAKitError as exc:
        print(f"archipel-admin: error: {exc}", file=sys.stderr)
        if as_json:
            print(json.dumps({"ok": False, "exit": EXIT_USAGE, "error": {"text": str(exc)}}))
        return EXIT_USAGE
    except OSError as exc:
        print(f"archipel-admin: error: --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if as_json:
        print(json.dumps({"ok": True, "files": [str(p) for p in written], "params": params.to_json()}, indent=2))
    else:
        print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}\n"
              f"next: archipel-admin ha check {args.out}")
    return EXIT_OK


def run_check(args) -> int:
    from ..ha.check import check_directory   # subprocess-heavy; only when asked
    as_json = getattr(args, "json", False)
    try:
        results = check_directory(Path(args.directory))
    except HAKitError as exc:
        print(f"archipel-admin: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = [r for r in results if not r.ok and (args.strict or not r.missing)]
    code = EXIT_CHECK_FAILED if failed else EXIT_OK
    if as_json:
        print(json.dumps({"ok": code == 0, "results": [r.__dict__ for r in results]}, indent=2))
    else:
        for r in results:
            print(r.line())
        missing = [r.missing for r in results if r.missing]
        print(("FAILED" if failed else "OK") + (f" ({len(missing)} not run: {', '.join(missing)})" if missing else ""))
    return code

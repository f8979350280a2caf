"""``archipel-admin net generate|check``: a hypervisor's host networking, offline.

Like ``ha``, these never connect to an agent (``local_run``).  Exit codes: 0
ok, 1 the check found problems, 2 a bad declaration or usage.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from ..hostnet import check, render
from ..hostnet.model import HostNetError, load

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2
DECLARATION = "hostnet.toml"  # the declaration, copied next to what it generated


def setup_net(sub) -> None:
    p = sub.add_parser("net", help="generate and check a hypervisor's host networking (bond, VLANs, bridges); offline",
                       description="A bond of the host's NICs (active-backup or 802.3ad) carrying tagged VLANs, each "
                                   "on a bridge br<id>, for ifupdown(2) and systemd-networkd, from a small TOML "
                                   "declaration (example: conf/net/hypervisor.toml).  Runs locally, no agent needed.")
    nsub = p.add_subparsers(dest="net_command", metavar="ACTION", required=True)
    g = nsub.add_parser("generate", help="write ifupdown, systemd-networkd and agent files from a declaration",
                        description="Writes OUT/ifupdown/interfaces, OUT/networkd/*.netdev|*.network, "
                                    "OUT/archipel-bridges.conf (the agent's vm_allowed_bridges) and a copy of the "
                                    "declaration (OUT/hostnet.toml).")
    g.add_argument("--from", dest="source", required=True, metavar="FILE", help="the declaration (TOML)")
    g.add_argument("--out", required=True, metavar="DIR", help="directory to write (created if missing)")
    g.add_argument("--force", action="store_true", help="replace files already in --out")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(local_run=run_generate)
    c = nsub.add_parser("check", help="validate generated (or edited) files against their declaration",
                        description="Parses the files strictly and checks: the declared bond and mode, every VLAN "
                                    "on the bond and alone on its bridge br<id>, the host's addresses, and no "
                                    "host-only VLAN (storage, cluster, management) offered to VMs.")
    c.add_argument("dir", metavar="DIR", help="a directory written by `net generate`")
    c.add_argument("--declaration", metavar="FILE", help=f"the declaration (default DIR/{DECLARATION})")
    c.add_argument("--agent-config", metavar="FILE", help="also check this archipel.conf's vm_allowed_bridges")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(local_run=run_check)


def _say(args, payload: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2))
    else:
        print(text)


def run_generate(args) -> int:
    try:
        net = load(args.source)
    except (HostNetError, OSError) as exc:
        print(f"archipel-admin net generate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    files = render.render(net)
    existing = [name for name in [*files, DECLARATION] if (out / name).exists()]
    if existing and not args.force:
        print(f"archipel-admin net generate: {out} already has {', '.join(existing)} (use --force)", file=sys.stderr)
        return EXIT_USAGE
    if args.force and (out / render.NETWORKD_DIR).is_dir():
        shutil.rmtree(out / render.NETWORKD_DIR)  # stale unit files would be read by networkd and by check
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copyfile(args.source, out / DECLARATION)
    os.chmod(out / DECLARATION, 0o644)
    _say(args, {"out": str(out), "files": sorted([*files, DECLARATION])},
         f"wrote {len(files) + 1} files into {out}: install ifupdown/interfaces as /etc/network/interfaces "
         f"or networkd/* into /etc/systemd/network/, and put archipel-bridges.conf's line in the agent's config")
    return EXIT_OK


def run_check(args) -> int:
    folder = Path(args.dir)
    try:
        net = load(args.declaration or folder / DECLARATION)
    except (HostNetError, OSError) as exc:
        print(f"archipel-admin net check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problems = check.check_dir(folder, net, agent_config=args.agent_config)
    _say(args, {"ok": not problems, "problems": problems},
         "\n".join(problems) if problems else
         f"ok: bond {net.bond.name} ({net.bond.mode}), {len(net.vlans)} VLANs each on its bridge; "
         f"offered to VMs: {' '.join(net.guest_bridges) or 'none'}")
    return EXIT_CHECK_FAILED if problems else EXIT_OK

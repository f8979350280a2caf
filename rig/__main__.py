"""``python -m rig {up,down,status,demo}`` -- see docs/RIG.md."""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .ejabberd import LINK_NOTE, SYSTEM_ROOT
from .stack import PROFILES, REPO, Stack
from .util import RigError, pids_matching

log = logging.getLogger("rig")


DEMO_HYPERVISOR_NAME = "hv-demo"  # the hypervisor entity's resource in the demo


def _stack(args) -> Stack:
    return Stack(profile=args.profile, state_dir=args.state_dir)


def cmd_up(args) -> int:
    st = _stack(args)
    st.start(fresh=not args.keep)
    extra = {}
    if args.hypervisors:
        extra["hypervisors"] = [
            {"name": hv.name, "netns": hv.netns, "address": hv.address, "libvirt_uri": hv.libvirt_uri,
             "migration_uri": hv.migration_uri, "libvirtd_pid": hv.pid(), "nsenter": hv.nsenter()}
            for hv in st.start_hypervisors(args.hypervisors)]
        extra["shared_storage"] = str(st.hypervisors.shared_path)
    print(json.dumps({**st.summary(), **extra, "timings": {k: round(v, 2) for k, v in st.timings.items()}},
                     indent=2))
    return 0


def cmd_down(args) -> int:
    profiles = sorted(p.name for p in (REPO / ".rig").iterdir() if p.name in PROFILES) \
        if args.all and (REPO / ".rig").is_dir() else [args.profile]
    for prof in profiles:
        st = Stack(profile=prof, state_dir=None if args.all else args.state_dir)
        if st.state_dir.is_dir():
            st.stop()
    return 0


def cmd_clean(args) -> int:
    """Stop every profile of this repo and remove .rig/ and ejabberd's system dirs."""
    rig = REPO / ".rig"
    if rig.is_dir():
        for p in sorted(rig.iterdir()):
            if p.name in PROFILES:
                Stack(profile=p.name).purge()
    # system dirs whose link pointed into this .rig (the link itself may be gone)
    if SYSTEM_ROOT.is_dir():
        for d in sorted(SYSTEM_ROOT.glob("ejabberd-*")):
            try:
                link = (d / LINK_NOTE).read_text().strip()
            except OSError:
                continue
            if link.startswith(f"{rig}/") and not pids_matching(["beam.smp", "beam"], str(d / "spool")):
                shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(rig, ignore_errors=True)
    return 0


def cmd_status(args) -> int:
    st = _stack(args)
    status = st.status()
    print(json.dumps(status, indent=2))
    return 0 if status["running"] else 3


def _hypervisor_password(agent_dir: Path) -> str:
    f = agent_dir / "hypervisor.password"
    if f.exists() and f.read_text().strip():
        return f.read_text().strip()
    agent_dir.mkdir(parents=True, exist_ok=True)
    pw = secrets.token_urlsafe(24)
    f.write_text(pw + "\n")
    os.chmod(f, 0o600)
    return pw


def _demo_hypervisors(st: Stack, count: int) -> list[list[str]]:
    """``count`` namespaced hypervisors (rig/hypervisors.py) and one agent command each, run in
    that hypervisor's mount namespace (it sees the shared storage) on the host's network."""
    members = st.start_hypervisors(count)
    cmds = []
    for hv in members:
        agent_dir = st.state_dir / f"agent-{hv.name}"
        lib = agent_dir / "lib"
        shutil.rmtree(lib, ignore_errors=True)
        conf = st.write_agent_config(
            agent_dir / "archipel.conf", hypervisor_jid=f"{hv.name}@{st.domain}",
            hypervisor_password=_hypervisor_password(agent_dir), lib_dir=lib, log_file=agent_dir / "agent.log",
            overrides={"GLOBAL": {"libvirt_uri": hv.libvirt_uri, "migration_uri": hv.migration_uri},
                       "HYPERVISOR": {"hypervisor_name": hv.name},
                       "VIRTUALMACHINE": {"vm_base_path": str(st.hypervisors.shared_path)},
                       "LDAP": st.agent_ldap_settings()})
        cmds.append([*hv.nsenter(), sys.executable, "-m", "archipelagent", "--config", str(conf)])
    return cmds


DEMO_GOLDEN = "blank"  # README: class provision ... --golden blank


def seed_demo_golden(vm_base_path: Path) -> Path:
    """A golden image for the README's class example: an empty 1 GiB qcow2 in the
    default golden folder (<vm_base_path>/../golden), its format recorded the way
    the agent records the images it makes (it never guesses a format)."""
    from archipelagent.storage.images import _read_records, _write_records  # the venv's agent

    folder = (vm_base_path / ".." / "golden").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"{DEMO_GOLDEN}.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
        image.chmod(0o444)  # golden images are read-only
    records = _read_records(folder)
    records[image.name] = "qcow2"
    _write_records(folder, records)
    return image


def cmd_demo(args) -> int:
    st = Stack(profile=args.profile, state_dir=args.state_dir)
    stop_signal: list[int] = []

    def on_signal(signum, _frame):
        stop_signal.append(signum)
        if agent is None:  # still starting the stack: abort it
            raise KeyboardInterrupt

    agent: subprocess.Popen | None = None
    agents: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        st.start()
        seed_demo_golden(st.storage_dir)
        agent_dir = st.state_dir / "agent"
        lib = agent_dir / "lib"
        shutil.rmtree(lib, ignore_errors=True)  # the server side was reset: so is the agent's state
        conf = st.write_agent_config(agent_dir / "archipel.conf", hypervisor_jid=st.hypervisor_jid,
                                     hypervisor_password=_hypervisor_password(agent_dir), lib_dir=lib,
                                     log_file=agent_dir / "agent.log",
                                     overrides={"HYPERVISOR": {"hypervisor_name": DEMO_HYPERVISOR_NAME},
                                                "LDAP": st.agent_ldap_settings(),
                                                "METRICS": {"metrics_address": f"127.0.0.1:{st.metrics_port}"},
                                                "VNC": {"vnc_proxy_port": st.console_port}})
        summary = st.write_summary(st.state_dir / "demo.json", hypervisor_jid=st.hypervisor_jid,
                                   hypervisor_full_jid=f"{st.hypervisor_jid}/{DEMO_HYPERVISOR_NAME}",
                                   agent_config=str(conf), metrics_url=f"http://127.0.0.1:{st.metrics_port}/metrics",
                                   console_proxy=f"ws://127.0.0.1:{st.console_port}/vnc/")
        print(f"rig demo: stack up, summary in {summary}", flush=True)
        for u in st.users:
            print(f"  {u['role']:<9} {u['jid']:<24} password {u['password']}", flush=True)
        print(f"  BOSH {st.bosh_url}   WebSocket {st.ws_url}   CA {st.ca_file}", flush=True)
        print(f"  metrics http://127.0.0.1:{st.metrics_port}/metrics (Prometheus)", flush=True)
        print(f"  Web client {st.web_url}  or over TLS {st.https_web_url}  ({st.domain} must resolve to "
              f"127.0.0.1: /etc/hosts, or chromium --host-resolver-rules='MAP {st.domain} 127.0.0.1'; "
              f"the rig's CA {st.ca_file})", flush=True)
        cmds = [[sys.executable, "-m", "archipelagent", "--config", str(conf)]]
        if args.hypervisors >= 2:  # namespaced hypervisors hv-1..hv-N instead (migration between them)
            cmds = _demo_hypervisors(st, args.hypervisors)
            summary = st.write_summary(st.state_dir / "demo.json", hypervisor_jid=f"hv-1@{st.domain}",
                                       hypervisor_full_jid=f"hv-1@{st.domain}/hv-1",
                                       hypervisors=[f"hv-{i}@{st.domain}/hv-{i}" for i in range(1, args.hypervisors + 1)])
            print(f"rig demo: {args.hypervisors} hypervisors on one shared storage, summary in {summary}; "
                  f"see README 'Live migration in the demo'", flush=True)
        else:
            print(f"  VM consoles: the Console section of a running VM's page (proxy ws://127.0.0.1:{st.console_port}, "
                  "one-time tokens from archipel:virtualmachine:vnc display)", flush=True)
        for cmd in cmds:
            print(f"rig demo: running {' '.join(cmd)} (Ctrl-C stops agents and stack)", flush=True)
            agents.append(subprocess.Popen(cmd, cwd=REPO, start_new_session=True))
        agent = agents[0]
        while all(a.poll() is None for a in agents) and not stop_signal:
            time.sleep(0.2)
        rc = next((a.returncode for a in agents if a.poll() is not None), 0)
        for a in agents:
            if a.poll() is None:
                print(f"rig demo: stopping agent {a.pid}", flush=True)
                a.send_signal(signal.SIGTERM)
                try:
                    a.wait(timeout=args.agent_timeout)
                except subprocess.TimeoutExpired:
                    print(f"rig demo: agent still running after {args.agent_timeout}s, SIGKILL", flush=True)
                    a.kill()
                    a.wait()
            else:
                print(f"rig demo: agent {a.pid} exited with {a.returncode}", flush=True)
    except KeyboardInterrupt:
        rc = 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("rig demo: stopping the stack", flush=True)
        st.stop()
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rig", description=(
        "Archipel agent rig: real ejabberd + slapd + libvirtd/QEMU on 127.0.0.1, "
        "state in .rig/<profile>. See docs/RIG.md."))
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, profile="demo"):
        p.add_argument("--profile", choices=sorted(PROFILES), default=profile,
                       help=f"ports/state profile (default {profile})")
        p.add_argument("--state-dir", type=Path, default=None, help="state dir (default .rig/<profile>)")

    p = sub.add_parser("up", help="start the stack (stopping a previous run) and print its summary")
    common(p)
    p.add_argument("--keep", action="store_true",
                   help="keep data (ejabberd spool, LDAP, libvirt definitions) instead of a fresh state")
    p.add_argument("--hypervisors", type=int, default=0, metavar="N",
                   help="also start N extra hypervisors: a libvirtd per network+mount namespace, "
                        "shared storage (docs/RIG.md, 'Several hypervisors')")
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("down", help="stop the stack (destroys its running domains)")
    common(p)
    p.add_argument("--all", action="store_true", help="every profile found under .rig/")
    p.set_defaults(fn=cmd_down)
    p = sub.add_parser("clean", help="stop every profile, remove .rig/ and ejabberd's dirs in "
                                     f"{SYSTEM_ROOT}/ (make clean-rig)")
    p.set_defaults(fn=cmd_clean)
    p = sub.add_parser("status", help="PIDs and listening sockets (exit 3 when not fully running)")
    common(p)
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("demo", help="start the demo stack, write the agent config and run the agent")
    common(p)
    p.add_argument("--agent-timeout", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--hypervisors", type=int, metavar="N",
                   default=int(os.environ.get("ARCHIPEL_DEMO_HYPERVISORS") or 1),
                   help="N >= 2: N namespaced hypervisors hv-1..hv-N on one shared storage, one agent each, "
                        "so VMs can migrate (default: $ARCHIPEL_DEMO_HYPERVISORS or 1, the host's libvirtd)")
    p.set_defaults(fn=cmd_demo)

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    try:
        return args.fn(args)
    except RigError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Offline validation of a generated HA kit with the cluster stack's own tools.

Nothing here starts a daemon or touches the network:

* ``crm_verify`` checks the CIB (schema + configuration rules);
* ``crm_simulate`` runs the real Pacemaker scheduler: both nodes up, DRBD
  promotion scores set the way the drbd agent sets them, then the Promoted
  node fails; the result says where everything went and in which order;
* crmsh loads ``cluster.crm`` into an empty CIB file (it checks every
  parameter against the agents' metadata);
* ``drbdadm`` (the 8.4 or 9 parser, as generated) parses the resource and
  dry-runs ``up`` as each node (``__DRBD_NODE__``);
* ``corosync -t`` checks corosync.conf as each node, inside a throw-away
  network namespace that holds the node's address (a user namespace too when
  not root).

Each check returns a :class:`Result`; a missing tool is ``missing`` (the
caller decides whether that fails: ``--strict`` and the tests say it does).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .kit import HAKitError, HAParams

ANSI = re.compile(r"\x1b\[[0-9;]*m")
DRBDADM_84 = "/usr/lib/drbd/drbdadm-84"
TIMEOUT = 60
# What the drbd agent sets (crm_master) on an UpToDate node; node1 a little higher so the
# simulation's initial placement is deterministic.
PROMOTION_SCORES = (10000, 9000)


@dataclass
class Result:
    name: str
    ok: bool
    detail: str = ""
    missing: str | None = None   # the tool that is not installed, if that is why it did not run

    def line(self) -> str:
        status = "ok" if self.ok else ("MISSING" if self.missing else "FAIL")
        return f"[{status:7}] {self.name}" + (f": {self.detail}" if self.detail else "")


class ToolMissing(Exception):
    pass


def _which(tool: str) -> str:
    path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") if not tool.startswith("/") else (
        tool if os.access(tool, os.X_OK) else None)
    if not path:
        raise ToolMissing(tool)
    return path


def run(argv: list[str], *, env: dict | None = None, cwd: str | None = None, timeout: int = TIMEOUT
        ) -> subprocess.CompletedProcess:
    """Run a tool (looked up in PATH plus /usr/sbin) and capture its output as text, ANSI colours stripped."""
    argv = [_which(argv[0]), *argv[1:]]
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    proc = subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    proc.stdout, proc.stderr = ANSI.sub("", proc.stdout), ANSI.sub("", proc.stderr)
    return proc


def _errors(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip() and "modinfo: not found" not in l]
    return " | ".join(lines[-6:])


# --------------------------------------------------------------------- CIB
def wellformed(path: Path) -> Result:
    # crm_verify exits 0 on some malformed XML (libxml2 recovers): parse it ourselves first.
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return Result("cib.xml well-formed", False, str(exc))
    if root.tag != "cib" or root.find("configuration") is None:
        return Result("cib.xml well-formed", False, "not a CIB (<cib><configuration>…)")
    return Result("cib.xml well-formed", True)


def crm_verify(path: Path) -> subprocess.CompletedProcess:
    return run(["crm_verify", "-V", "--xml-file", str(path)])


def verify_cib(path: Path, params: HAParams, workdir: Path) -> Result:
    name = "crm_verify cib.xml"
    proc = crm_verify(path)
    if proc.returncode == 0 and "error" not in proc.stderr.lower():
        return Result(name, True)
    if params.stonith and proc.returncode != 0:
        # With STONITH on and no status, crm_verify warns it would fence the unseen nodes
        # (startup fencing): verify the state with both nodes up instead, as the reference says.
        workdir.mkdir(parents=True, exist_ok=True)
        state = workdir / "verify-state.xml"
        up = run(["crm_simulate", "-x", str(path), "-q", "true", "-u", params.node1.name, "-u", params.node2.name,
                  "-S", "-O", str(state)])
        if up.returncode == 0:
            proc = crm_verify(state)
            if proc.returncode == 0 and "error" not in proc.stderr.lower():
                return Result(name, True, "verified with both nodes up (startup fencing would warn otherwise)")
    return Result(name, False, f"rc={proc.returncode}: {_errors(proc.stderr + proc.stdout)}")


@dataclass
class Simulation:
    """What crm_simulate said: placements before/after the failure and the ordered transition."""
    primary: str                              # where DRBD was Promoted before the failure
    failed: str
    before: dict[str, list[tuple[str, str]]]  # resource id -> [(role, node)]
    after: dict[str, list[tuple[str, str]]]
    transition: list[str]                     # "rsc op node", "pseudo TASK", "fence ACTION node"
    summary: list[dict[str, str]]             # <actions><rsc_action …/> of the failover
    dot: str                                  # the transition graph (-D)
    text: str = ""                            # the failover run, human readable
    states: dict[str, Path] = field(default_factory=dict)

    def placed(self, resource: str, when: str = "after") -> list[tuple[str, str]]:
        return (self.after if when == "after" else self.before).get(resource, [])

    def index(self, entry: str) -> int:
        return self.transition.index(entry)


def _placement(status: ET.Element | None) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    if status is None:
        return out
    for rsc in status.iter("resource"):
        for node in rsc.findall("node"):
            out[rsc.get("id")].append((rsc.get("role"), node.get("name")))
    return dict(out)


def _transition(root: ET.Element) -> list[str]:
    out = []
    tr = root.find("transition")
    for el in (tr if tr is not None else []):
        if el.tag == "rsc_action":
            out.append(f"{el.get('resource')} {el.get('op')} {el.get('node')}"
                       + (f" {el.get('interval')}" if el.get("interval") else ""))
        elif el.tag == "pseudo_action":
            out.append(f"pseudo {el.get('task')}")
        elif el.tag in ("fence_action", "fence_event", "fencing_action"):
            out.append(f"fence {el.get('op') or el.get('action')} {el.get('target') or el.get('node')}")
        else:
            out.append(f"{el.tag} " + " ".join(f"{k}={v}" for k, v in sorted(el.attrib.items())))
    return out


def dot_reachable(dot: str, src: str, dst: str) -> bool:
    """Is ``dst`` reachable from ``src`` in a crm_simulate -D graph (edges ``"a" -> "b"``)?"""
    edges: dict[str, set[str]] = defaultdict(set)
    for a, b in re.findall(r'^"(.+?)" -> "(.+?)"', dot, re.M):
        edges[a].add(b)
    seen, todo = {src}, [src]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt == dst:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def simulate_failover(cib: Path, params: HAParams, workdir: Path, fail: str | None = None) -> Simulation:
    """Both nodes up with DRBD promotion scores, then the Promoted node (or ``fail``) fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    ids = params.ids
    s1, s2, s3 = workdir / "sim-1-up.xml", workdir / "sim-2-promoted.xml", workdir / "sim-3-failed.xml"

    def checked(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
        if proc.returncode != 0:
            raise HAKitError(f"{what}: rc={proc.returncode}: {_errors(proc.stderr + proc.stdout)}")
        return proc

    # corosync two_node keeps the survivor quorate: the simulation runs with quorum (-q true),
    # or Pacemaker would block everything ("due to no quorum").
    checked(run(["crm_simulate", "-x", str(cib), "-q", "true", "-u", params.node1.name, "-u", params.node2.name,
                 "-S", "-O", str(s1)]), "crm_simulate (nodes up)")
    # Nothing sets the promotion score in a simulation (the drbd agent does it with crm_master
    # in a real cluster): set it as a transient node attribute, exactly like the agent.
    for node, score in zip(params.nodes, PROMOTION_SCORES):
        checked(run(["crm_attribute", "-N", node.name, "-n", f"master-{ids['drbd']}", "-v", str(score),
                     "-l", "reboot"], env={"CIB_file": str(s1)}), "crm_attribute (promotion score)")
    first = checked(run(["crm_simulate", "-x", str(s1), "-S", "--output-as=xml", "-O", str(s2)]),
                    "crm_simulate (promotion)")
    root = ET.fromstring(first.stdout)
    before = _placement(root.find("revised_cluster_status"))
    promoted = [n for role, n in before.get(ids["drbd"], []) if role == "Promoted"]
    if len(promoted) != 1:
        raise HAKitError(f"crm_simulate: expected DRBD Promoted on one node with both up, got {before.get(ids['drbd'])}")
    failed = fail or promoted[0]
    dot = workdir / "sim-failover.dot"
    proc = checked(run(["crm_simulate", "-x", str(s2), "--node-fail", failed, "-S", "--output-as=xml",
                        "-D", str(dot), "-O", str(s3)]), "crm_simulate (node failure)")
    root = ET.fromstring(proc.stdout)
    text = run(["crm_simulate", "-x", str(s2), "--node-fail", failed, "-S"]).stdout
    summary = [dict(el.attrib) for el in (root.find("actions") if root.find("actions") is not None else [])]
    return Simulation(primary=promoted[0], failed=failed, before=before,
                      after=_placement(root.find("revised_cluster_status")), transition=_transition(root),
                      summary=summary, dot=dot.read_text(), text=text, states={"up": s1, "promoted": s2, "failed": s3})


def failover_problems(sim: Simulation, params: HAParams) -> list[str]:
    """Everything wrong with a simulated failover (empty list: it did what the kit promises)."""
    ids, problems = params.ids, []
    survivor = next(n.name for n in params.nodes if n.name != sim.failed)
    for rsc in params.group_members:
        if sim.placed(rsc, "before") != [("Started", sim.primary)]:
            problems.append(f"before the failure {rsc} is {sim.placed(rsc, 'before')}, not Started on {sim.primary}")
        if sim.placed(rsc) != [("Started", survivor)]:
            problems.append(f"after the failure {rsc} is {sim.placed(rsc)}, not Started on {survivor}")
    if [r for r, n in sim.placed(ids["drbd"]) if r == "Promoted"] != ["Promoted"] or \
            ("Promoted", survivor) not in sim.placed(ids["drbd"]):
        problems.append(f"after the failure DRBD is {sim.placed(ids['drbd'])}, not Promoted on {survivor}")
    promote = f"{ids['drbd']} promote {survivor}"
    if promote not in sim.transition:
        problems.append(f"no '{promote}' in the transition")
        return problems
    for rsc in params.group_members:
        start = f"{rsc} start {survivor}"
        if start not in sim.transition:
            problems.append(f"no '{start}' in the transition")
        elif sim.index(start) < sim.index(promote):
            problems.append(f"'{start}' comes before '{promote}'")
    # The real dependency, not only the printed order: promote -> ... -> fs start in the graph.
    if not dot_reachable(sim.dot, f"{ids['drbd']}_promote_0 {survivor}", f"{ids['fs']}_start_0 {survivor}"):
        problems.append("the transition graph does not make the filesystem start depend on the DRBD promotion")
    if params.stonith:   # the failed node is fenced before its DRBD peer is promoted
        fence = f"fence reboot {sim.failed}"
        if fence not in sim.transition:
            problems.append(f"STONITH is on but the transition does not fence {sim.failed}")
        elif sim.index(fence) > sim.index(promote) or not dot_reachable(
                sim.dot, f"stonith 'reboot' {sim.failed}", f"{ids['drbd']}_promote_0 {survivor}"):
            problems.append(f"DRBD is promoted on {survivor} before {sim.failed} is fenced")
    starts = [sim.index(f"{r} start {survivor}") for r in params.group_members if f"{r} start {survivor}" in sim.transition]
    if starts != sorted(starts):
        problems.append(f"the group does not start in order {params.group_members}")
    return problems


def check_failover(cib: Path, params: HAParams, workdir: Path) -> Result:
    name = "crm_simulate failover"
    try:
        sim = simulate_failover(cib, params, workdir)
    except HAKitError as exc:
        return Result(name, False, str(exc))
    problems = failover_problems(sim, params)
    survivor = next(n.name for n in params.nodes if n.name != sim.failed)
    if problems:
        return Result(name, False, "; ".join(problems))
    return Result(name, True, f"{sim.failed} fails: DRBD promoted on {survivor}, then "
                              f"{', '.join(params.group_members)} start there")


# -------------------------------------------------------------------- crmsh
def crmsh_load(script: Path, workdir: Path, force: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """Load a crmsh script into a fresh empty CIB file; returns (the load run, the CIB file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cib = workdir / "crmsh-cib.xml"
    empty = run(["cibadmin", "--empty"])
    cib.write_text(empty.stdout)
    home = workdir / "crm-home"   # crmsh writes its history/log under $HOME/.config, .cache
    home.mkdir(exist_ok=True)
    env = {"CIB_file": str(cib), "HOME": str(home)}
    argv = ["crm", *(["-F"] if force else []), "configure", "load", "update", str(script)]
    return run(argv, env=env), cib


def check_crmsh(script: Path, params: HAParams, workdir: Path) -> Result:
    name = "crmsh load cluster.crm"
    proc, cib = crmsh_load(script, workdir)
    out = proc.stdout + proc.stderr
    note = ""
    if proc.returncode != 0 and params.stonith and re.search(r"stonith:fence_ipmilan: got no meta-data", out):
        # crmsh reads every agent's metadata; fence-agents (~100 MB) is not needed on a check host.
        proc, cib = crmsh_load(script, workdir / "forced", force=True)
        out = "\n".join(l for l in (proc.stdout + proc.stderr).splitlines()
                        if not re.search(r"stonith:fence_ipmilan: (got no meta-data|no such resource agent)", l))
        note = " (forced: fence_ipmilan metadata absent, fence-agents not installed)"
    # "ERROR: (cluster_status) warning: … lack of quorum" is crmsh relaying pacemaker's view of
    # the empty, quorum-less CIB file; real errors name a resource or a line, and set rc 1.
    if proc.returncode != 0 or re.search(r"^ERROR: (?!\(\w+\)\s)", out, re.M):
        return Result(name, False, f"rc={proc.returncode}: {_errors(out)}")
    verify = crm_verify(cib)
    if verify.returncode != 0 and not params.stonith:
        return Result(name, False, f"crm_verify of crmsh's CIB: rc={verify.returncode}: {_errors(verify.stderr)}")
    return Result(name, True, "parameters match the agents' metadata" + note)


# --------------------------------------------------------------------- DRBD
def drbd_conf(res: Path, workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "drbd.conf"
    conf.write_text(f'include "{res.resolve()}";\n')
    return conf


def drbdadm_for(params: HAParams) -> str:
    # drbd-utils 9 dispatches to drbdadm-84 on a host running the 8.4 kernel module: the
    # 8.4 file must pass *that* parser (drbdadm 9 rejects 8.4's `disk { fencing }`).
    return DRBDADM_84 if params.drbd_version == "8.4" else "drbdadm"


def check_drbd(res: Path, params: HAParams, workdir: Path) -> Result:
    name = f"drbdadm ({params.drbd_version}) {res.name}"
    conf = drbd_conf(res, workdir)
    tool = drbdadm_for(params)
    dump = run([tool, "-c", str(conf), "dump", "all"])
    if dump.returncode != 0:
        return Result(name, False, f"dump all rc={dump.returncode}: {_errors(dump.stderr)}")
    if f"resource {params.drbd_resource}" not in dump.stdout:
        return Result(name, False, f"dump all does not show resource {params.drbd_resource}")
    for node in params.nodes:   # drbdadm only acts on its own `on <hostname>`: impersonate each node
        env = {"__DRBD_NODE__": node.name}
        up = run([tool, "-c", str(conf), "-d", "up", params.drbd_resource], env=env)
        if up.returncode != 0:
            return Result(name, False, f"as {node.name}: -d up rc={up.returncode}: {_errors(up.stderr)}")
        disk = run([tool, "-c", str(conf), "sh-ll-dev", params.drbd_resource], env=env).stdout.strip()
        if disk != params.device:
            return Result(name, False, f"as {node.name}: backing disk {disk!r}, expected {params.device}")
        if f"{node.address}:{params.drbd_port}" not in up.stdout:
            return Result(name, False, f"as {node.name}: -d up does not use {node.address}:{params.drbd_port}")
    return Result(name, True, f"parsed, `up` dry-runs as {params.node1.name} and {params.node2.name}")


# ----------------------------------------------------------------- corosync
def corosync_test(conf: Path, address: str, workdir: Path) -> subprocess.CompletedProcess:
    """``corosync -t`` as the node owning ``address``, in a private network namespace.

    corosync -t looks for a nodelist address on a local interface and reads the
    authkey: the config is copied with ``keyfile`` pointing to a throw-away key.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "authkey"
    if not key.exists():
        key.write_bytes(os.urandom(256))
        key.chmod(0o400)
    text = conf.read_text()
    copy = workdir / "corosync.conf"
    text = re.sub(r"^totem \{\n", f"totem {{\n    keyfile: {key}\n", text, count=1, flags=re.M)
    root = os.geteuid() == 0
    if not root:   # corosync -t opens the log file: not ours to write as a user
        text = re.sub(r"^(\s*)to_logfile:.*$", r"\1to_logfile: no", text, flags=re.M)
        text = re.sub(r"^\s*logfile:.*\n", "", text, flags=re.M)
    copy.write_text(text)
    for tool in ("corosync", "unshare", "ip", "timeout"):
        _which(tool)
    script = (f"ip link set lo up && ip addr add {address}/32 dev lo && "
              f"exec timeout 20 {_which('corosync')} -c {copy} -t")
    # root: a plain network namespace; a user: a user namespace too (-r), root inside it only.
    return run(["unshare", "-n" if root else "-rn", "sh", "-c", script])


def check_corosync(conf: Path, params: HAParams, workdir: Path) -> Result:
    name = "corosync -t corosync.conf"
    _which("corosync")
    for node in params.nodes:
        proc = corosync_test(conf, node.address, workdir / node.name)
        if proc.returncode != 0 or "exiting normally" not in proc.stderr + proc.stdout:
            return Result(name, False, f"as {node.name}: rc={proc.returncode}: {_errors(proc.stderr + proc.stdout)}")
    return Result(name, True, f"accepted as {params.node1.name} and {params.node2.name}")


# ---------------------------------------------------------------------- all
def load_params(directory: Path) -> HAParams:
    path = directory / "params.json"
    try:
        return HAParams.from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise HAKitError(f"{path}: {exc.strerror or exc} (is {directory} a directory written by `ha generate`?)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise HAKitError(f"{path}: {exc}") from None


def check_directory(directory: Path) -> list[Result]:
    """Run every validator on a generated kit; missing tools give ``missing`` results."""
    directory = Path(directory)
    params = load_params(directory)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="archipel-ha-check-") as tmp:
        work = Path(tmp)
        cib = directory / "cib.xml"
        res = directory / f"{params.drbd_resource}.res"
        steps = [
            ("cib.xml well-formed", lambda: wellformed(cib)),
            ("crm_verify cib.xml", lambda: verify_cib(cib, params, work / "verify")),
            ("crm_simulate failover", lambda: check_failover(cib, params, work / "simulate")),
            ("crmsh load cluster.crm", lambda: check_crmsh(directory / "cluster.crm", params, work / "crmsh")),
            (f"drbdadm {res.name}", lambda: check_drbd(res, params, work / "drbd")),
            ("corosync -t corosync.conf", lambda: check_corosync(directory / "corosync.conf", params, work / "corosync")),
        ]
        for name, step in steps:
            try:
                results.append(step())
            except ToolMissing as exc:
                results.append(Result(name, False, f"{exc} is not installed (scripts/bootstrap.sh installs it)",
                                      missing=str(exc)))
            except (OSError, subprocess.SubprocessError, ET.ParseError) as exc:
                results.append(Result(name, False, f"{type(exc).__name__}: {exc}"))
    return results

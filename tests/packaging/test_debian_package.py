"""The Debian package: built from a copy of this tree, installed into a throwaway root, lintian clean of errors.

Container-less install check: ``dpkg --root=<tmp> --force-script-chrootless``
really unpacks the .deb, registers its conffiles in the root's dpkg database
and runs its maintainer scripts with ``DPKG_ROOT=<tmp>``.  The dependencies
are not installed in that root (``--force-depends``: an empty root has no
Python), so the installed code is run with this venv's interpreter and the
root's ``dist-packages`` first on the path.  ``py3compile``/``pypy3compile``
(dh-python's byte-compilation, called by the postinst) do not honour
DPKG_ROOT: they would compile the host's paths, so a shim records their
arguments instead.  ``deb-systemd-helper`` honours DPKG_ROOT and runs for real.

Needs dpkg-dev, debhelper, dh-python, python3-all, python3-setuptools,
fakeroot and lintian (scripts/bootstrap.sh installs them).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian", "fakeroot")

pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)} (scripts/bootstrap.sh)")


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """``dpkg-buildpackage -us -uc -b`` on a copy of the tree's files (tracked and new, not ignored)."""
    work = tmp_path_factory.mktemp("deb")
    src = work / "src"
    files = run("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if name.endswith(".whl") or not (REPO / name).is_file():
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=src)
    return work


def test_the_deb_is_built_with_its_parts(built):
    deb = built / f"archipel-agent_{VERSION}_all.deb"
    assert deb.is_file()
    fields = run("dpkg-deb", "-f", deb).stdout
    for dep in ("python3-libvirt", "python3-slixmpp", "python3-ldap3", "python3-aiosqlite",
                "python3-prometheus-client", "python3-lxml", "qemu-utils"):
        assert dep in fields, dep
    listing = run("dpkg-deb", "-c", deb).stdout
    for path in ("./usr/bin/archipel-agent", "./usr/bin/archipel-admin", "./lib/systemd/system/archipel-agent.service",
                 "./usr/lib/python3/dist-packages/archipelagent_modules/oom.py",
                 "./usr/lib/python3/dist-packages/archipelagent/agent.py"):
        assert path in listing, path
    assert "-rw-r----- root/root" in next(line for line in listing.splitlines() if line.endswith("/archipel.conf"))


def test_lintian_finds_no_error(built):
    done = subprocess.run(["lintian", "--allow-root", str(built / f"archipel-agent_{VERSION}_amd64.changes")],
                          capture_output=True, text=True)
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert not errors and done.returncode in (0, 2), done.stdout + done.stderr


def test_installs_into_a_throwaway_root_and_purges(built, tmp_path):
    root, shims = tmp_path / "root", tmp_path / "shims"
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (root / sub).mkdir(parents=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).touch()
    shims.mkdir()
    calls = tmp_path / "py3compile.calls"
    for tool in ("py3compile", "pypy3compile"):
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    dpkg = ("dpkg", f"--root={root}", f"--log={tmp_path / 'dpkg.log'}", "--force-script-chrootless")
    run(*dpkg, "--force-depends", "-i", str(built / f"archipel-agent_{VERSION}_all.deb"), env=env)

    status = (root / "var/lib/dpkg/status").read_text()
    assert "Status: install ok installed" in status
    assert "Conffiles:\n /etc/archipel/archipel.conf " in status
    conf = root / "etc/archipel/archipel.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    # postinst: the state and log folders, nothing started or enabled
    assert stat.S_IMODE((root / "var/lib/archipel").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "var/log/archipel").stat().st_mode) == 0o750
    assert "py3compile -p archipel-agent" in calls.read_text()
    assert not (root / "etc/systemd/system/multi-user.target.wants/archipel-agent.service").exists()
    unit = (root / "lib/systemd/system/archipel-agent.service").read_text()
    assert "ExecStart=/usr/bin/archipel-agent --config /etc/archipel/archipel.conf" in unit

    # the installed code runs (this venv's interpreter, the root's dist-packages first)
    site = root / "usr/lib/python3/dist-packages"
    py_env = {**os.environ, "PYTHONPATH": str(site)}
    for script in ("archipel-agent", "archipel-admin"):
        assert run(sys.executable, root / "usr/bin" / script, "--version", env=py_env).stdout.strip() \
            == f"{script} {VERSION}"
    where = run(sys.executable, "-c", "import archipelagent, archipelagent_modules.oom as m; print(archipelagent.__file__, m.__file__)",
                env=py_env, cwd=tmp_path).stdout
    assert where.count(str(site)) == 2, where
    entry_points = (site / f"archipel_agent-{VERSION}.egg-info/entry_points.txt").read_text()
    assert "oom = archipelagent_modules.oom" in entry_points and "tags = archipelagent_modules.tags" in entry_points

    conf.write_text(conf.read_text() + "\n# edited by the admin\n")
    run(*dpkg, "--purge", "archipel-agent", env=env)
    assert not conf.exists() and not (root / "var/log/archipel").exists()
    assert (root / "var/lib/archipel").is_dir()  # kept on purge: VM accounts and rights (see debian/postrm)

"""The rig's own CA and the ejabberd server certificate (openssl CLI).

Generated once per state dir and kept (``<state>/ca``): clients verify the
server properly with ``ca.pem``.  The server certificate covers the XMPP
domain, ``*.<domain>``, ``localhost`` and IP 127.0.0.1; it is regenerated
when missing, expiring within a day or not matching the domain.
"""
from __future__ import annotations

import os
from pathlib import Path

from .util import log, run


class CertAuthority:
    """``name`` names the server's files: a second server of the rig (the federation's
    campus server, rig/federation.py) gets its own certificate from the same CA."""

    def __init__(self, directory: Path, domain: str, name: str = "server"):
        self.dir = Path(directory)
        self.domain = domain
        self.ca_key = self.dir / "ca.key"
        self.ca_file = self.dir / "ca.pem"
        self.server_key = self.dir / f"{name}.key"
        self.server_cert = self.dir / f"{name}.crt"

    def _valid(self, cert: Path) -> bool:
        if not cert.exists():
            return False
        return run(["openssl", "x509", "-checkend", "86400", "-noout", "-in", cert], check=False).returncode == 0

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        if not (self.ca_key.exists() and self._valid(self.ca_file)):
            log.info("certs: creating the rig CA in %s", self.dir)
            run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-sha256", "-subj", f"/O=Archipel test rig/CN=Archipel rig CA ({self.domain})",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-addext", "subjectKeyIdentifier=hash",
                 "-keyout", self.ca_key, "-out", self.ca_file])
            os.chmod(self.ca_key, 0o600)
            os.chmod(self.ca_file, 0o644)
            self.server_cert.unlink(missing_ok=True)
        if self._server_ok():
            return
        log.info("certs: issuing the server certificate for %s", self.domain)
        csr = self.server_cert.with_suffix(".csr")
        ext = self.server_cert.with_suffix(".ext")
        ext.write_text(
            "basicConstraints = critical,CA:FALSE\n"
            "keyUsage = critical,digitalSignature,keyEncipherment\n"
            # clientAuth too: a server presents it when it dials a peer (s2s, rig/federation.py)
            "extendedKeyUsage = serverAuth,clientAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid,issuer\n"
            f"subjectAltName = DNS:{self.domain},DNS:*.{self.domain},DNS:localhost,IP:127.0.0.1\n")
        run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={self.domain}",
             "-keyout", self.server_key, "-out", csr])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", self.ca_key,
             "-CAcreateserial", "-days", "825", "-sha256", "-extfile", ext, "-out", self.server_cert])
        os.chmod(self.server_key, 0o600)
        csr.unlink(missing_ok=True)

    def _server_ok(self) -> bool:
        if not (self.server_key.exists() and self._valid(self.server_cert)):
            return False
        cp = run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", self.server_cert], check=False)
        if f"DNS:{self.domain}" not in cp.stdout:
            return False
        eku = run(["openssl", "x509", "-noout", "-ext", "extendedKeyUsage", "-in", self.server_cert], check=False)
        if "Client Authentication" not in eku.stdout:
            return False
        return run(["openssl", "verify", "-CAfile", self.ca_file, self.server_cert], check=False).returncode == 0

    def server_pem(self, dest: Path) -> Path:
        """cert + key + CA chain in one PEM file (what ejabberd's certfiles wants)."""
        dest.write_text(self.server_cert.read_text() + self.server_key.read_text() + self.ca_file.read_text())
        os.chmod(dest, 0o640)
        return dest

    def ca_pem(self, dest: Path) -> Path:
        """The CA alone (ejabberd's ``ca_file``: the peers' certificates are checked with it)."""
        dest.write_text(self.ca_file.read_text())
        os.chmod(dest, 0o644)
        return dest

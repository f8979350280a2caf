"""Load and validate the agent's INI configuration (``conf/archipel.conf``).

The agent refuses to start on a bad configuration rather than failing later
in the middle of the night, so everything is checked here, once, and every
error names the file, the section and the key, what was expected and what was
found.  Feature modules read their own sections from ``AgentConfig.parser``.
"""
from __future__ import annotations

import configparser
import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, TypeVar
from urllib.parse import urlsplit

from slixmpp.jid import JID, InvalidJID

T = TypeVar("T")

TlsMode = Literal["auto", "required", "never"]
Provisioning = Literal["ibr", "http_api", "none"]

TLS_MODES = ("auto", "required", "never")
PROVISIONING_MODES = ("ibr", "http_api", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")
VCARD_KEYS = ("orgname", "orgunit", "userid", "locality", "url", "categories")
MIN_PASSWORD_SIZE = 32

_HOSTNAME_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class ConfigError(Exception):
    """A configuration problem, located as precisely as we can."""

    def __init__(
        self,
        path: str | os.PathLike,
        section: str | None,
        key: str | None,
        reason: str,
        *,
        line: int | None = None,
    ):
        self.path = Path(path)
        self.section = section
        self.key = key
        self.reason = reason
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f": line {self.line}"
        if self.section is None:
            return f"{where}: {self.reason}"
        if self.key is None:
            return f"{where}: [{self.section}]: {self.reason}"
        return f"{where}: [{self.section}] {self.key}: {self.reason}"


# ejabberd on a 2-core test machine logs in ~150 clients a second (bench/bench_scale.py's raw
# storm); a server on real hardware several times that.  Sites size it (docs/CLUSTER.md).
DEFAULT_MAX_LOGINS_PER_SECOND = 200


@dataclass(frozen=True)
class XmppConfig:
    host: str
    port: int
    tls: TlsMode
    ca_file: Path | None
    verify_certificate: bool
    account_provisioning: Provisioning
    http_api_url: str
    reconnect_min_delay: float
    reconnect_max_delay: float
    # Connection attempts per second across all entities (xmpp/ratelimit.py); 0: unlimited.
    max_logins_per_second: int = DEFAULT_MAX_LOGINS_PER_SECOND


@dataclass(frozen=True)
class HypervisorConfig:
    jid: str
    password: str = field(repr=False)  # never in logs or tracebacks
    name: str
    database_path: Path
    permissions_database_path: Path
    # The audit log (optional keys): its own file, rotated by age and row count (0: no bound).
    audit_database_path: Path | None = None
    audit_max_rows: int = 100_000
    audit_max_days: int = 90
    # The shared roster group (ejabberd mod_shared_roster, set by its admin) of the hypervisors
    # that know each other: peers for migration (hypervisor/peers.py).
    peers_group: str = "archipel-hypervisors"


@dataclass(frozen=True)
class VMConfig:
    base_path: Path
    password_size: int
    # Domain definition policy knobs (optional keys; see conf/archipel.conf).
    enable_block_device_access: bool = False
    allowed_networks: frozenset[str] | None = frozenset()  # None: any network ('*'); default none
    allowed_bridges: frozenset[str] = frozenset()
    max_memory_kib: int | None = None   # vm_max_memory (MiB in the file); None: the host's memory
    max_vcpus: int | None = None        # vm_max_vcpus; None: the host's CPUs


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    file_path: Path | None
    max_bytes: int
    backup_count: int


@dataclass(frozen=True)
class LdapConfig:
    """The optional [LDAP] section: where people and their groups are looked up."""

    uri: str
    bind_dn: str
    bind_password: str = field(repr=False)  # never in logs or tracebacks
    base_dn: str
    user_base: str
    user_filter: str
    uid_attribute: str
    group_base: str
    group_filter: str
    group_member_attribute: str
    admin_groups: frozenset[str]
    cache_ttl: float
    timeout: float
    ca_file: Path | None = None
    # Federation: people of these other XMPP domains are the directory's people too
    # (their server authenticates against this LDAP): <uid>@<domain> is the person uid.
    federated_domains: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    domain: str
    lib_dir: Path
    pubsub_server: str
    root_admins: frozenset[str]
    machine_ip: str
    libvirt_uri: str
    xmpp: XmppConfig
    hypervisor: HypervisorConfig
    vm: VMConfig
    vcard: dict[str, str]
    logging: LoggingConfig
    parser: configparser.ConfigParser = field(repr=False, compare=False)
    ldap: LdapConfig | None = None
    # Where another hypervisor's libvirtd sends a VM (p2p live migration); "" = libvirt_uri.
    migration_uri: str = ""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": the only places plaintext may go."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Reader:
    """Typed access to one parsed file; every failure becomes a located ConfigError."""

    def __init__(self, path: Path, parser: configparser.ConfigParser):
        self.path = path
        self.parser = parser

    def error(self, section: str, key: str | None, reason: str) -> ConfigError:
        return ConfigError(self.path, section, key, reason)

    def raw(self, section: str, key: str, *, optional: bool = False) -> str:
        """The interpolated, stripped value; empty is an error unless optional."""
        if section != configparser.DEFAULTSECT and not self.parser.has_section(section):
            raise self.error(section, None, "section is missing")
        try:
            value = self.parser.get(section, key, fallback=None)
        except configparser.InterpolationMissingOptionError as exc:
            raise self.error(
                section, key, f"refers to %({exc.reference})s, which is not defined"
            ) from None
        except configparser.InterpolationError:
            # The value itself stays out of the message: it may be a password.
            raise self.error(
                section, key, "expected %(name)s or %% after a '%' (write %% for a literal %)"
            ) from None
        if value is None:
            if optional:
                return ""
            raise self.error(section, key, "key is missing")
        value = value.strip()
        if not value and not optional:
            raise self.error(section, key, "must not be empty")
        return value

    def convert(self, section: str, key: str, convert: Callable[[str], T], expected: str) -> T:
        value = self.raw(section, key)
        try:
            return convert(value)
        except (ValueError, KeyError):
            raise self.error(section, key, f"expected {expected}, found {value!r}") from None

    def integer(self, section: str, key: str, minimum: int, maximum: int | None = None) -> int:
        expected = f"an integer >= {minimum}" if maximum is None else (
            f"an integer between {minimum} and {maximum}")

        def parse(text: str) -> int:
            number = int(text, 10)
            if number < minimum or (maximum is not None and number > maximum):
                raise ValueError
            return number

        return self.convert(section, key, parse, expected)

    def positive_float(self, section: str, key: str) -> float:
        def parse(text: str) -> float:
            number = float(text)
            if not math.isfinite(number) or number <= 0:
                raise ValueError
            return number

        return self.convert(section, key, parse, "a number of seconds > 0")

    def boolean(self, section: str, key: str) -> bool:
        def parse(text: str) -> bool:
            return configparser.ConfigParser.BOOLEAN_STATES[text.lower()]

        return self.convert(section, key, parse,
                            "a boolean (true/false, yes/no, on/off, 1/0)")

    def choice(self, section: str, key: str, choices: tuple[str, ...]) -> str:
        def parse(text: str) -> str:
            if text.lower() not in choices:
                raise ValueError
            return text.lower()

        return self.convert(section, key, parse, "one of " + ", ".join(choices))

    def bare_jid(self, section: str, key: str, value: str) -> str:
        try:
            return parse_bare_jid(value)
        except ValueError as exc:
            raise self.error(section, key, f"expected a bare JID user@domain, found {value!r} "
                                           f"({exc})") from None

    def path_value(self, section: str, key: str, *, optional: bool = False) -> Path | None:
        value = self.raw(section, key, optional=optional)
        return Path(value) if value else None


def parse_bare_jid(value: str) -> str:
    """Validate ``user@domain`` (no resource) and return it lowercased."""
    try:
        jid = JID(value)
    except InvalidJID as exc:
        raise ValueError(str(exc)) from None
    if not jid.node:
        raise ValueError("no user part")
    if jid.resource:
        raise ValueError("a resource is not allowed")
    _check_domain(jid.domain)
    return jid.bare.lower()


def _check_domain(domain: str) -> None:
    if domain.startswith("[") or _is_ip(domain):
        return
    labels = domain.lower().rstrip(".").split(".")
    if not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError(f"{domain!r} is not a valid domain name")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _read_file(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(path, None, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, None, f"cannot read the file: {exc}") from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(path, None, None, f"expected a [SECTION] header, found {exc.line!r}",
                          line=exc.lineno) from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0]
        found = text.splitlines()[lineno - 1].strip() if lineno <= len(text.splitlines()) else ""
        raise ConfigError(path, None, None,
                          f"expected 'key = value' or [SECTION], found {found!r}",
                          line=lineno) from None
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as exc:
        raise ConfigError(path, None, None, exc.message.split(": ", 1)[-1],
                          line=exc.lineno) from None
    except configparser.Error as exc:
        raise ConfigError(path, None, None, f"syntax error: {exc}") from None
    return parser


def load_config(path: str | os.PathLike) -> AgentConfig:
    """Parse and validate ``path``; raise ConfigError on the first problem found."""
    path = Path(path)
    read = _Reader(path, _read_file(path))
    default = configparser.DEFAULTSECT

    domain_text = read.raw(default, "xmpp_server").lower()
    try:
        _check_domain(domain_text)
    except ValueError:
        raise read.error(default, "xmpp_server",
                         f"expected a domain name, found {domain_text!r}") from None
    lib_dir = read.path_value(default, "archipel_folder_lib")

    pubsub_server = read.raw("GLOBAL", "xmpp_pubsub_server").lower()
    root_admins = frozenset(
        read.bare_jid("GLOBAL", "archipel_root_admins", item)
        for item in read.raw("GLOBAL", "archipel_root_admins").split()
    )
    machine_ip = read.raw("GLOBAL", "machine_ip")
    libvirt_uri = read.raw("GLOBAL", "libvirt_uri")
    if ":" not in libvirt_uri:
        raise read.error("GLOBAL", "libvirt_uri",
                         f"expected a libvirt URI such as qemu:///system, found {libvirt_uri!r}")
    migration_uri = read.raw("GLOBAL", "migration_uri", optional=True)
    if migration_uri and not re.match(r"^[a-z0-9+]+://[^/\s]+/system$", migration_uri):
        raise read.error("GLOBAL", "migration_uri",
                         f"expected a remote libvirt URI such as qemu+tls://10.0.0.5/system, found {migration_uri!r}")

    return AgentConfig(
        path=path,
        domain=domain_text,
        lib_dir=lib_dir,
        pubsub_server=pubsub_server,
        root_admins=root_admins,
        machine_ip=machine_ip,
        libvirt_uri=libvirt_uri,
        migration_uri=migration_uri,
        xmpp=_xmpp_section(read),
        hypervisor=_hypervisor_section(read, domain_text),
        vm=VMConfig(
            base_path=read.path_value("VIRTUALMACHINE", "vm_base_path"),
            password_size=read.integer("VIRTUALMACHINE", "xmpp_password_size",
                                       MIN_PASSWORD_SIZE, 1023),
            **_vm_policy_keys(read),
        ),
        vcard=_vcard_section(read),
        logging=LoggingConfig(
            level=read.choice("LOGGING", "logging_level", LOG_LEVELS),
            file_path=read.path_value("LOGGING", "logging_file_path", optional=True),
            max_bytes=read.integer("LOGGING", "logging_max_bytes", 0),
            backup_count=read.integer("LOGGING", "logging_backup_count", 0),
        ),
        parser=read.parser,
        ldap=_ldap_section(read),
    )


NAME_LIST_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
MAX_VM_MEMORY_MIB = 1 << 32     # 4 PiB: beyond any host; a typo, not a choice
MAX_VM_VCPUS = 4096


def _vm_policy_keys(read: _Reader) -> dict:
    """Optional [VIRTUALMACHINE] keys of the domain definition policy."""
    section = "VIRTUALMACHINE"
    out: dict = {}
    if read.raw(section, "enable_block_device_access", optional=True):
        out["enable_block_device_access"] = read.boolean(section, "enable_block_device_access")
    for key, field_name in (("vm_allowed_networks", "allowed_networks"), ("vm_allowed_bridges", "allowed_bridges")):
        names = read.raw(section, key, optional=True).split()
        if key == "vm_allowed_networks" and "*" in names:
            if names != ["*"]:
                raise read.error(section, key, f"expected '*' (every network) alone or names, found {' '.join(names)!r}")
            out[field_name] = None      # every libvirt network: an explicit choice
            continue
        for name in names:
            if not NAME_LIST_RE.match(name):
                raise read.error(section, key, f"expected space-separated names, found {name!r}")
        out[field_name] = frozenset(names)
    # Size caps of one VM, quota or not (the host's capacity caps them too).
    if read.raw(section, "vm_max_memory", optional=True):
        out["max_memory_kib"] = read.integer(section, "vm_max_memory", 1, MAX_VM_MEMORY_MIB) * 1024
    if read.raw(section, "vm_max_vcpus", optional=True):
        out["max_vcpus"] = read.integer(section, "vm_max_vcpus", 1, MAX_VM_VCPUS)
    return out


def _xmpp_section(read: _Reader) -> XmppConfig:
    section = "XMPP"
    host = read.raw(section, "xmpp_host")
    port = read.integer(section, "xmpp_port", 1, 65535)
    tls = read.choice(section, "xmpp_tls", TLS_MODES)
    if tls == "never" and not is_loopback(host):
        raise read.error(section, "xmpp_tls",
                         f"plaintext (never) is only allowed towards a loopback address, "
                         f"found xmpp_host = {host!r}")
    ca_file = read.path_value(section, "xmpp_ca_file", optional=True)
    if ca_file is not None and not (ca_file.is_file() and os.access(ca_file, os.R_OK)):
        raise read.error(section, "xmpp_ca_file",
                         f"expected a readable CA bundle, found {str(ca_file)!r} "
                         "(missing or unreadable)")
    verify = read.boolean(section, "xmpp_verify_certificate")
    provisioning = read.choice(section, "account_provisioning", PROVISIONING_MODES)
    url = read.raw(section, "xmpp_http_api_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise read.error(section, "xmpp_http_api_url",
                         f"expected an http:// or https:// URL, found {url!r}")
    min_delay = read.positive_float(section, "reconnect_min_delay")
    max_delay = read.positive_float(section, "reconnect_max_delay")
    if max_delay < min_delay:
        raise read.error(section, "reconnect_max_delay",
                         f"expected a value >= reconnect_min_delay ({min_delay:g}), "
                         f"found {max_delay:g}")
    logins = (read.integer(section, "max_logins_per_second", 0)
              if read.raw(section, "max_logins_per_second", optional=True)
              else DEFAULT_MAX_LOGINS_PER_SECOND)
    return XmppConfig(
        host=host, port=port, tls=tls, ca_file=ca_file, verify_certificate=verify,
        account_provisioning=provisioning, http_api_url=url,
        reconnect_min_delay=min_delay, reconnect_max_delay=max_delay,
        max_logins_per_second=logins,
    )


def _hypervisor_section(read: _Reader, domain: str) -> HypervisorConfig:
    section = "HYPERVISOR"
    jid = read.bare_jid(section, "hypervisor_xmpp_jid", read.raw(section, "hypervisor_xmpp_jid"))
    if jid.split("@", 1)[1] != domain:
        raise read.error(section, "hypervisor_xmpp_jid",
                         f"expected a JID in the domain {domain!r} (xmpp_server), found {jid!r}")
    name = read.raw(section, "hypervisor_name")
    if name.lower() == "auto":
        name = socket.gethostname()
    return HypervisorConfig(
        jid=jid,
        password=read.raw(section, "hypervisor_xmpp_password"),
        name=name,
        database_path=read.path_value(section, "hypervisor_database_path"),
        permissions_database_path=read.path_value(section,
                                                  "hypervisor_permissions_database_path"),
        peers_group=read.raw(section, "hypervisor_peers_group", optional=True) or "archipel-hypervisors",
        **_audit_keys(read, section),
    )


def _audit_keys(read: _Reader, section: str) -> dict:
    """``hypervisor_audit_*``: absent keys take their defaults (audit.sqlite3 in the lib folder)."""
    def present(key: str) -> bool:
        return read.parser.has_option(section, key)

    lib_dir = read.path_value(configparser.DEFAULTSECT, "archipel_folder_lib")
    return {
        "audit_database_path": (read.path_value(section, "hypervisor_audit_database_path")
                                if present("hypervisor_audit_database_path")
                                else lib_dir / "audit.sqlite3"),
        "audit_max_rows": (read.integer(section, "hypervisor_audit_max_rows", 0)
                           if present("hypervisor_audit_max_rows") else 100_000),
        "audit_max_days": (read.integer(section, "hypervisor_audit_max_days", 0)
                           if present("hypervisor_audit_max_days") else 90),
    }


def _vcard_section(read: _Reader) -> dict[str, str]:
    """The documented vCard fields (each may be empty) plus any extra key of [VCARD]."""
    section = "VCARD"
    if not read.parser.has_section(section):
        raise read.error(section, None, "section is missing")
    defaults = read.parser.defaults()
    keys = list(VCARD_KEYS) + [
        key for key in read.parser.options(section)
        if key not in VCARD_KEYS and key not in defaults
    ]
    return {key: read.raw(section, key, optional=True) for key in keys}


LDAP_SCHEMES = ("ldap", "ldaps")
_LDAP_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


def _ldap_section(read: _Reader) -> LdapConfig | None:
    """[LDAP] is optional; present without ``ldap_enabled`` it means enabled."""
    section = "LDAP"
    if not read.parser.has_section(section):
        return None
    if read.raw(section, "ldap_enabled", optional=True) and not read.boolean(section,
                                                                           "ldap_enabled"):
        return None

    def optional(key: str, default: str) -> str:
        return read.raw(section, key, optional=True) or default

    uri = read.raw(section, "ldap_uri")
    parts = urlsplit(uri)
    if parts.scheme.lower() not in LDAP_SCHEMES or not parts.hostname:
        raise read.error(section, "ldap_uri",
                         f"expected an ldap:// or ldaps:// URI with a host, found {uri!r}")
    base_dn = _dn(read, section, "ldap_base_dn", read.raw(section, "ldap_base_dn"))
    bind_dn = read.raw(section, "ldap_bind_dn", optional=True)
    if bind_dn:
        _dn(read, section, "ldap_bind_dn", bind_dn)
    bind_password = read.raw(section, "ldap_bind_password", optional=bool(not bind_dn))
    if bind_password and not bind_dn:
        raise read.error(section, "ldap_bind_password",
                         "expected ldap_bind_dn too (a password without a bind DN)")
    if bind_dn and parts.scheme.lower() == "ldap" and not is_loopback(parts.hostname):
        raise read.error(section, "ldap_uri",
                         f"the bind password may only travel in clear to a loopback address: "
                         f"use ldaps:// for {parts.hostname!r}")
    user_base = _dn(read, section, "ldap_user_base",
                    optional("ldap_user_base", f"ou=people,{base_dn}"))
    group_base = _dn(read, section, "ldap_group_base",
                     optional("ldap_group_base", f"ou=groups,{base_dn}"))
    user_filter = _filter(read, section, "ldap_user_filter",
                          optional("ldap_user_filter", "(objectClass=inetOrgPerson)"))
    group_filter = _filter(read, section, "ldap_group_filter",
                           optional("ldap_group_filter", "(objectClass=groupOfNames)"))
    uid_attribute = _attribute(read, section, "ldap_uid_attribute",
                               optional("ldap_uid_attribute", "uid"))
    member_attribute = _attribute(read, section, "ldap_group_member_attribute",
                                  optional("ldap_group_member_attribute", "member"))
    admin_text = read.raw(section, "ldap_admin_groups", optional=True)
    if not read.parser.has_option(section, "ldap_admin_groups"):
        admin_text = "admins"
    cache_ttl = 60.0
    if read.raw(section, "ldap_cache_ttl", optional=True):
        cache_ttl = read.convert(section, "ldap_cache_ttl", _non_negative,
                                 "a number of seconds >= 0")
    timeout = 5.0
    if read.raw(section, "ldap_timeout", optional=True):
        timeout = read.positive_float(section, "ldap_timeout")
    ca_file = read.path_value(section, "ldap_ca_file", optional=True)
    if ca_file is not None and not (ca_file.is_file() and os.access(ca_file, os.R_OK)):
        raise read.error(section, "ldap_ca_file",
                         f"expected a readable CA bundle, found {str(ca_file)!r} "
                         "(missing or unreadable)")
    federated = set()
    for name in read.raw(section, "ldap_federated_domains", optional=True).split():
        try:
            _check_domain(name)
        except ValueError:
            raise read.error(section, "ldap_federated_domains",
                             f"expected space-separated XMPP domain names, found {name!r}") from None
        federated.add(name.lower().rstrip("."))
    return LdapConfig(
        uri=uri, bind_dn=bind_dn, bind_password=bind_password, base_dn=base_dn,
        user_base=user_base, user_filter=user_filter, uid_attribute=uid_attribute,
        group_base=group_base, group_filter=group_filter,
        group_member_attribute=member_attribute,
        admin_groups=frozenset(name.lower() for name in admin_text.split()),
        cache_ttl=cache_ttl, timeout=timeout, ca_file=ca_file, federated_domains=frozenset(federated),
    )


def _non_negative(text: str) -> float:
    number = float(text)
    if not math.isfinite(number) or number < 0:
        raise ValueError
    return number


def _dn(read: _Reader, section: str, key: str, value: str) -> str:
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        if not parse_dn(value):
            raise LDAPInvalidDnError(value)
    except (LDAPInvalidDnError, ValueError, IndexError):
        raise read.error(section, key,
                         f"expected a DN such as dc=example,dc=org, found {value!r}") from None
    return value


def _filter(read: _Reader, section: str, key: str, value: str) -> str:
    depth = 0
    balanced = value.startswith("(") and value.endswith(")")
    for char in value:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            balanced = False
    if not balanced or depth != 0:
        raise read.error(section, key,
                         f"expected an LDAP filter in parentheses such as "
                         f"(objectClass=inetOrgPerson), found {value!r}")
    return value


def _attribute(read: _Reader, section: str, key: str, value: str) -> str:
    if not _LDAP_ATTRIBUTE.match(value):
        raise read.error(section, key, f"expected an LDAP attribute name, found {value!r}")
    return value

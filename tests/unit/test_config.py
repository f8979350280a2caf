"""Config loading: the sample loads, and every bad file stops us with a located error."""
from __future__ import annotations

import configparser
import dataclasses
import socket
from pathlib import Path

import pytest

from archipelagent.config import ConfigError, is_loopback, load_config

SAMPLE = Path(__file__).resolve().parents[2] / "conf" / "archipel.conf"

REQUIRED_KEYS = [
    ("DEFAULT", "xmpp_server"),
    ("DEFAULT", "archipel_folder_lib"),
    ("GLOBAL", "xmpp_pubsub_server"),
    ("GLOBAL", "archipel_root_admins"),
    ("GLOBAL", "machine_ip"),
    ("GLOBAL", "libvirt_uri"),
    ("XMPP", "xmpp_host"),
    ("XMPP", "xmpp_port"),
    ("XMPP", "xmpp_tls"),
    ("XMPP", "xmpp_verify_certificate"),
    ("XMPP", "account_provisioning"),
    ("XMPP", "xmpp_http_api_url"),
    ("XMPP", "reconnect_min_delay"),
    ("XMPP", "reconnect_max_delay"),
    ("HYPERVISOR", "hypervisor_xmpp_jid"),
    ("HYPERVISOR", "hypervisor_xmpp_password"),
    ("HYPERVISOR", "hypervisor_name"),
    ("HYPERVISOR", "hypervisor_database_path"),
    ("HYPERVISOR", "hypervisor_permissions_database_path"),
    ("VIRTUALMACHINE", "vm_base_path"),
    ("VIRTUALMACHINE", "xmpp_password_size"),
    ("LOGGING", "logging_level"),
    ("LOGGING", "logging_max_bytes"),
    ("LOGGING", "logging_backup_count"),
]


def sample_parser() -> configparser.RawConfigParser:
    raw = configparser.RawConfigParser()
    raw.read(SAMPLE, encoding="utf-8")
    return raw


def write(tmp_path: Path, raw: configparser.RawConfigParser) -> Path:
    path = tmp_path / "archipel.conf"
    with open(path, "w", encoding="utf-8") as handle:
        raw.write(handle)
    return path


def with_value(tmp_path: Path, section: str, key: str, value: str | None) -> Path:
    """The sample with one key changed (None removes it)."""
    raw = sample_parser()
    if value is None:
        raw.remove_option(section, key)
    else:
        raw.set(section, key, value)
    return write(tmp_path, raw)


def expect_error(path: Path, section: str | None, key: str | None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert (error.path, error.section, error.key) == (path, section, key), str(error)
    assert str(path) in str(error)
    return error


# -- the sample -----------------------------------------------------------------

def test_sample_loads_with_interpolation_and_types():
    config = load_config(SAMPLE)
    assert config.path == SAMPLE
    assert config.domain == "archipel.test"
    assert config.lib_dir == Path("/var/lib/archipel")
    assert config.pubsub_server == "pubsub.archipel.test"
    assert config.root_admins == frozenset({"admin@archipel.test"})
    assert config.libvirt_uri == "qemu:///system"
    assert config.xmpp.port == 5222 and config.xmpp.tls == "auto"
    assert config.xmpp.ca_file is None and config.xmpp.verify_certificate is True
    assert config.xmpp.account_provisioning == "ibr"
    assert (config.xmpp.reconnect_min_delay, config.xmpp.reconnect_max_delay) == (1.0, 60.0)
    assert config.hypervisor.jid == "hypervisor@archipel.test"
    assert config.hypervisor.name == socket.gethostname()
    assert config.hypervisor.permissions_database_path == Path(
        "/var/lib/archipel/permissions.sqlite3")
    assert config.vm.password_size == 32 and config.vm.base_path == Path("/vm/drives")
    assert config.vcard["orgname"] == "Archipel" and config.vcard["url"] == ""
    assert config.logging.level == "info" and config.logging.backup_count == 5


def test_config_is_frozen_and_hides_the_password():
    config = load_config(SAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.domain = "other"  # type: ignore[misc]
    assert "change-me" not in repr(config)


def test_interpolation_follows_the_default_section(tmp_path):
    raw = sample_parser()
    raw.set("DEFAULT", "xmpp_server", "Campus.Example.org")
    raw.set("DEFAULT", "archipel_folder_lib", str(tmp_path / "lib"))
    config = load_config(write(tmp_path, raw))
    assert config.domain == "campus.example.org"
    assert config.pubsub_server == "pubsub.campus.example.org"
    assert config.hypervisor.jid == "hypervisor@campus.example.org"
    assert config.hypervisor.database_path == tmp_path / "lib" / "hypervisor.sqlite3"


def test_parser_keeps_feature_sections(tmp_path):
    raw = sample_parser()
    if not raw.has_section("STORAGE"):  # the sample has one
        raw.add_section("STORAGE")
    raw.set("STORAGE", "pool_path", "%(archipel_folder_lib)s/pools")
    config = load_config(write(tmp_path, raw))
    assert config.parser.get("STORAGE", "pool_path") == "/var/lib/archipel/pools"


def test_root_admins_are_split_and_lowercased(tmp_path):
    path = with_value(tmp_path, "GLOBAL", "archipel_root_admins",
                      "Admin@%(xmpp_server)s  boss@Other.Example.org")
    assert load_config(path).root_admins == frozenset(
        {"admin@archipel.test", "boss@other.example.org"})


def test_explicit_hypervisor_name(tmp_path):
    path = with_value(tmp_path, "HYPERVISOR", "hypervisor_name", "hv-01")
    assert load_config(path).hypervisor.name == "hv-01"


def test_vcard_keeps_extra_keys_but_not_defaults(tmp_path):
    path = with_value(tmp_path, "VCARD", "title", "Lab")
    vcard = load_config(path).vcard
    assert vcard["title"] == "Lab"
    assert "xmpp_server" not in vcard


@pytest.mark.parametrize("section,key", [
    ("XMPP", "xmpp_ca_file"), ("LOGGING", "logging_file_path"),
    ("VCARD", "orgname"), ("VCARD", "url"),
])
@pytest.mark.parametrize("value", ["", None])
def test_optional_keys_may_be_empty_or_absent(tmp_path, section, key, value):
    config = load_config(with_value(tmp_path, section, key, value))
    if key == "xmpp_ca_file":
        assert config.xmpp.ca_file is None
    elif key == "logging_file_path":
        assert config.logging.file_path is None
    else:
        assert config.vcard[key] == ""


def test_existing_ca_file_is_accepted(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config(with_value(tmp_path, "XMPP", "xmpp_ca_file", str(ca)))
    assert config.xmpp.ca_file == ca


# -- file-level errors ----------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.conf"
    error = expect_error(path, None, None)
    assert str(error) == f"{path}: file not found"


def test_unreadable_file(tmp_path):
    error = expect_error(tmp_path, None, None)  # a directory cannot be read as a file
    assert "cannot read" in str(error)


def test_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "archipel.conf"
    path.write_text(SAMPLE.read_text() + "\nthis line has no equals sign\n")
    error = expect_error(path, None, None)
    assert error.line == len(SAMPLE.read_text().splitlines()) + 2
    assert f"line {error.line}" in str(error)


def test_missing_section_header(tmp_path):
    path = tmp_path / "archipel.conf"
    path.write_text("xmpp_server = x\n")
    assert expect_error(path, None, None).line == 1


def test_duplicate_key(tmp_path):
    path = tmp_path / "archipel.conf"
    path.write_text(SAMPLE.read_text().replace("xmpp_port = 5222",
                                               "xmpp_port = 5222\nxmpp_port = 5223"))
    error = expect_error(path, None, None)
    assert error.line is not None and "xmpp_port" in str(error)


# -- missing things -------------------------------------------------------------

@pytest.mark.parametrize("section", ["GLOBAL", "XMPP", "HYPERVISOR", "VIRTUALMACHINE",
                                     "VCARD", "LOGGING"])
def test_missing_section(tmp_path, section):
    raw = sample_parser()
    raw.remove_section(section)
    path = write(tmp_path, raw)
    error = expect_error(path, section, None)
    assert str(error) == f"{path}: [{section}]: section is missing"


@pytest.mark.parametrize("section,key", REQUIRED_KEYS)
def test_missing_key(tmp_path, section, key):
    path = with_value(tmp_path, section, key, None)
    error = expect_error(path, section, key)
    assert str(error) == f"{path}: [{section}] {key}: key is missing"


@pytest.mark.parametrize("section,key", REQUIRED_KEYS)
def test_empty_required_key(tmp_path, section, key):
    expect_error(with_value(tmp_path, section, key, "  "), section, key)


def test_interpolation_of_an_undefined_name(tmp_path):
    path = with_value(tmp_path, "GLOBAL", "xmpp_pubsub_server", "pubsub.%(nowhere)s")
    assert "nowhere" in str(expect_error(path, "GLOBAL", "xmpp_pubsub_server"))


def test_stray_percent_sign(tmp_path):
    path = with_value(tmp_path, "HYPERVISOR", "hypervisor_xmpp_password", "100%secret")
    error = expect_error(path, "HYPERVISOR", "hypervisor_xmpp_password")
    assert "%%" in str(error)
    assert "secret" not in str(error)


# -- bad values -----------------------------------------------------------------

@pytest.mark.parametrize("section,key,value", [
    ("XMPP", "xmpp_port", "abc"),
    ("XMPP", "xmpp_port", "0"),
    ("XMPP", "xmpp_port", "65536"),
    ("XMPP", "xmpp_port", "5222.5"),
    ("VIRTUALMACHINE", "xmpp_password_size", "31"),
    ("VIRTUALMACHINE", "xmpp_password_size", "thirty-two"),
    ("LOGGING", "logging_max_bytes", "-1"),
    ("LOGGING", "logging_backup_count", "five"),
    ("XMPP", "reconnect_min_delay", "0"),
    ("XMPP", "reconnect_min_delay", "-1"),
    ("XMPP", "reconnect_min_delay", "nan"),
    ("XMPP", "reconnect_max_delay", "soon"),
    ("XMPP", "reconnect_max_delay", "0.5"),
    ("XMPP", "xmpp_verify_certificate", "maybe"),
    ("XMPP", "xmpp_tls", "sometimes"),
    ("XMPP", "account_provisioning", "ldap"),
    ("XMPP", "xmpp_http_api_url", "ftp://127.0.0.1/api"),
    ("XMPP", "xmpp_http_api_url", "127.0.0.1:5280"),
    ("LOGGING", "logging_level", "verbose"),
    ("GLOBAL", "libvirt_uri", "qemu"),
    ("GLOBAL", "archipel_root_admins", "admin@%(xmpp_server)s/laptop"),
    ("GLOBAL", "archipel_root_admins", "%(xmpp_server)s"),
    ("GLOBAL", "archipel_root_admins", "admin@"),
    ("HYPERVISOR", "hypervisor_xmpp_jid", "%(xmpp_server)s"),
    ("HYPERVISOR", "hypervisor_xmpp_jid", "hyper visor@%(xmpp_server)s"),
    ("HYPERVISOR", "hypervisor_xmpp_jid", "hypervisor@other.example.org"),
    ("DEFAULT", "xmpp_server", "admin@archipel.test"),
    ("DEFAULT", "xmpp_server", "bad..domain"),
])
def test_bad_value(tmp_path, section, key, value):
    error = expect_error(with_value(tmp_path, section, key, value), section, key)
    assert "expected" in error.reason


def test_bad_value_says_what_was_found(tmp_path):
    error = expect_error(with_value(tmp_path, "XMPP", "xmpp_port", "abc"), "XMPP", "xmpp_port")
    assert error.reason == "expected an integer between 1 and 65535, found 'abc'"


@pytest.mark.parametrize("value,expected", [("yes", True), ("off", False), ("1", True),
                                            ("FALSE", False)])
def test_boolean_spellings(tmp_path, value, expected):
    path = with_value(tmp_path, "XMPP", "xmpp_verify_certificate", value)
    assert load_config(path).xmpp.verify_certificate is expected


def test_choices_are_case_insensitive(tmp_path):
    path = with_value(tmp_path, "LOGGING", "logging_level", "DEBUG")
    assert load_config(path).logging.level == "debug"


def test_plaintext_to_a_remote_host_is_refused(tmp_path):
    raw = sample_parser()
    raw.set("XMPP", "xmpp_tls", "never")
    raw.set("XMPP", "xmpp_host", "xmpp.example.org")
    error = expect_error(write(tmp_path, raw), "XMPP", "xmpp_tls")
    assert "loopback" in error.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost"])
def test_plaintext_to_loopback_is_allowed(tmp_path, host):
    raw = sample_parser()
    raw.set("XMPP", "xmpp_tls", "never")
    raw.set("XMPP", "xmpp_host", host)
    assert load_config(write(tmp_path, raw)).xmpp.tls == "never"


def test_missing_ca_file(tmp_path):
    path = with_value(tmp_path, "XMPP", "xmpp_ca_file", str(tmp_path / "missing.pem"))
    assert "missing.pem" in str(expect_error(path, "XMPP", "xmpp_ca_file"))


def test_ca_file_that_is_a_directory(tmp_path):
    path = with_value(tmp_path, "XMPP", "xmpp_ca_file", str(tmp_path))
    expect_error(path, "XMPP", "xmpp_ca_file")


@pytest.mark.parametrize("host,expected", [
    ("127.0.0.1", True), ("127.255.255.254", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("128.0.0.1", False), ("10.0.0.1", False),
    ("::2", False), ("localhost.example.org", False), ("xmpp.example.org", False), ("", False),
])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_config_error_format_without_section():
    assert str(ConfigError("/etc/a.conf", None, None, "file not found", line=3)) == (
        "/etc/a.conf: line 3: file not found")
    assert str(ConfigError("/etc/a.conf", "XMPP", "xmpp_port", "bad")) == (
        "/etc/a.conf: [XMPP] xmpp_port: bad")


# -- [LDAP] ---------------------------------------------------------------------

LDAP_MINIMAL = {
    "ldap_uri": "ldap://127.0.0.1:389",
    "ldap_bind_dn": "cn=admin,dc=archipel,dc=test",
    "ldap_bind_password": "s3cret-bind",
    "ldap_base_dn": "dc=archipel,dc=test",
}


def with_ldap(tmp_path: Path, **values: str | None) -> Path:
    raw = sample_parser()
    raw.add_section("LDAP")
    for key, value in {**LDAP_MINIMAL, **values}.items():
        if value is not None:
            raw.set("LDAP", key, value)
    return write(tmp_path, raw)


def test_ldap_is_off_without_the_section():
    assert load_config(SAMPLE).ldap is None


def test_ldap_defaults(tmp_path):
    ldap = load_config(with_ldap(tmp_path)).ldap
    assert ldap is not None
    assert ldap.uri == "ldap://127.0.0.1:389"
    assert ldap.bind_dn == "cn=admin,dc=archipel,dc=test"
    assert ldap.bind_password == "s3cret-bind"
    assert ldap.base_dn == "dc=archipel,dc=test"
    assert ldap.user_base == "ou=people,dc=archipel,dc=test"
    assert ldap.group_base == "ou=groups,dc=archipel,dc=test"
    assert ldap.user_filter == "(objectClass=inetOrgPerson)"
    assert ldap.group_filter == "(objectClass=groupOfNames)"
    assert (ldap.uid_attribute, ldap.group_member_attribute) == ("uid", "member")
    assert ldap.admin_groups == frozenset({"admins"})
    assert (ldap.cache_ttl, ldap.timeout) == (60.0, 5.0)
    assert ldap.ca_file is None


def test_ldap_explicit_values(tmp_path):
    ldap = load_config(with_ldap(
        tmp_path, ldap_enabled="yes", ldap_user_base="ou=staff,dc=archipel,dc=test",
        ldap_group_base="ou=teams,dc=archipel,dc=test",
        ldap_user_filter="(&(objectClass=person)(!(loginShell=/bin/false)))",
        ldap_group_filter="(objectClass=groupOfUniqueNames)", ldap_uid_attribute="sAMAccountName",
        ldap_group_member_attribute="uniqueMember", ldap_admin_groups="Admins  it-staff",
        ldap_cache_ttl="0", ldap_timeout="2.5")).ldap
    assert ldap.user_base == "ou=staff,dc=archipel,dc=test"
    assert ldap.group_base == "ou=teams,dc=archipel,dc=test"
    assert ldap.user_filter.startswith("(&(objectClass=person)")
    assert (ldap.uid_attribute, ldap.group_member_attribute) == ("sAMAccountName", "uniqueMember")
    assert ldap.admin_groups == frozenset({"admins", "it-staff"})
    assert (ldap.cache_ttl, ldap.timeout) == (0.0, 2.5)


def test_ldap_federated_domains(tmp_path):
    assert load_config(with_ldap(tmp_path)).ldap.federated_domains == frozenset()
    ldap = load_config(with_ldap(tmp_path, ldap_federated_domains="Campus.test  lab.example.org.")).ldap
    assert ldap.federated_domains == frozenset({"campus.test", "lab.example.org"})
    with pytest.raises(ConfigError, match=r"\[LDAP\] ldap_federated_domains.*'campus_test!'"):
        load_config(with_ldap(tmp_path, ldap_federated_domains="campus.test campus_test!"))


def test_ldap_disabled_section_is_ignored(tmp_path):
    assert load_config(with_ldap(tmp_path, ldap_enabled="false", ldap_uri="garbage")).ldap is None


def test_ldap_empty_admin_groups_means_none(tmp_path):
    assert load_config(with_ldap(tmp_path, ldap_admin_groups="")).ldap.admin_groups == frozenset()


def test_ldap_anonymous_bind(tmp_path):
    ldap = load_config(with_ldap(tmp_path, ldap_bind_dn=None, ldap_bind_password=None,
                                 ldap_uri="ldap://ldap.example.org")).ldap
    assert (ldap.bind_dn, ldap.bind_password) == ("", "")


def test_ldap_password_stays_out_of_repr_and_errors(tmp_path):
    config = load_config(with_ldap(tmp_path))
    assert "s3cret-bind" not in repr(config) and "s3cret-bind" not in repr(config.ldap)
    error = expect_error(with_ldap(tmp_path, ldap_bind_password="100%s3cret"), "LDAP",
                         "ldap_bind_password")
    assert "s3cret" not in str(error)


def test_ldap_ldaps_with_a_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ldap = load_config(with_ldap(tmp_path, ldap_uri="ldaps://ldap.example.org",
                                 ldap_ca_file=str(ca))).ldap
    assert ldap.uri == "ldaps://ldap.example.org" and ldap.ca_file == ca


@pytest.mark.parametrize("key", ["ldap_uri", "ldap_base_dn", "ldap_bind_password"])
def test_ldap_required_keys(tmp_path, key):
    error = expect_error(with_ldap(tmp_path, **{key: None}), "LDAP", key)
    assert "missing" in error.reason


@pytest.mark.parametrize("key,value", [
    ("ldap_enabled", "perhaps"),
    ("ldap_uri", "http://127.0.0.1"),
    ("ldap_uri", "127.0.0.1:389"),
    ("ldap_uri", "ldap://"),
    ("ldap_base_dn", "archipel.test"),
    ("ldap_bind_dn", "admin"),
    ("ldap_user_base", "people"),
    ("ldap_group_base", "=groups"),
    ("ldap_user_filter", "objectClass=inetOrgPerson"),
    ("ldap_user_filter", "(objectClass=inetOrgPerson))("),
    ("ldap_group_filter", "((objectClass=groupOfNames)"),
    ("ldap_uid_attribute", "uid)(cn=*"),
    ("ldap_group_member_attribute", "mem ber"),
    ("ldap_cache_ttl", "-1"),
    ("ldap_cache_ttl", "soon"),
    ("ldap_timeout", "0"),
    ("ldap_timeout", "inf"),
    ("ldap_ca_file", "/nonexistent/ca.pem"),
])
def test_ldap_bad_value(tmp_path, key, value):
    error = expect_error(with_ldap(tmp_path, **{key: value}), "LDAP", key)
    assert "expected" in error.reason


def test_ldap_clear_bind_to_a_remote_server_is_refused(tmp_path):
    error = expect_error(with_ldap(tmp_path, ldap_uri="ldap://ldap.example.org"), "LDAP", "ldap_uri")
    assert "ldaps://" in error.reason


def test_ldap_password_without_bind_dn(tmp_path):
    expect_error(with_ldap(tmp_path, ldap_bind_dn=None), "LDAP", "ldap_bind_password")


def test_vm_policy_keys(tmp_path):
    from archipelagent.config import ConfigError, load_config
    import pathlib
    sample = pathlib.Path(__file__).resolve().parents[2] / "conf" / "archipel.conf"
    text = sample.read_text()
    conf = tmp_path / "a.conf"
    conf.write_text(text.replace("vm_allowed_networks =\n", "vm_allowed_networks = lab1 lab2\n")
                    .replace("vm_allowed_bridges =", "vm_allowed_bridges = br-class")
                    .replace("/var/log/archipel/archipel.log", ""))
    cfg = load_config(conf)
    assert cfg.vm.allowed_networks == frozenset({"lab1", "lab2"}) and cfg.vm.allowed_bridges == frozenset({"br-class"})
    assert cfg.vm.enable_block_device_access is False
    conf.write_text(text.replace("enable_block_device_access = false", "enable_block_device_access = maybe"))
    import pytest
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert "[VIRTUALMACHINE] enable_block_device_access" in str(err.value)


def test_shipped_config_allows_no_network_and_caps_vm_sizes(tmp_path):
    cfg = load_config(with_value(tmp_path, "LOGGING", "logging_file_path", ""))
    assert cfg.vm.allowed_networks == frozenset()       # none: '*' must be an explicit choice
    assert (cfg.vm.max_memory_kib, cfg.vm.max_vcpus) == (16384 * 1024, 8)


@pytest.mark.parametrize("value, expected", [("", frozenset()), ("*", None), ("lab1", frozenset({"lab1"}))])
def test_vm_allowed_networks_values(tmp_path, value, expected):
    path = with_value(tmp_path, "VIRTUALMACHINE", "vm_allowed_networks", value)
    raw = configparser.RawConfigParser()
    raw.read(path)
    raw.set("LOGGING", "logging_file_path", "")
    assert load_config(write(tmp_path, raw)).vm.allowed_networks == expected


def test_absent_policy_keys_mean_no_network_and_host_capacity(tmp_path):
    raw = sample_parser()
    for key in ("vm_allowed_networks", "vm_max_memory", "vm_max_vcpus"):
        raw.remove_option("VIRTUALMACHINE", key)
    raw.set("LOGGING", "logging_file_path", "")
    cfg = load_config(write(tmp_path, raw))
    assert (cfg.vm.allowed_networks, cfg.vm.max_memory_kib, cfg.vm.max_vcpus) == (frozenset(), None, None)


@pytest.mark.parametrize("key, value", [
    ("vm_allowed_networks", "* lab1"), ("vm_allowed_networks", "lab/1"),
    ("vm_max_memory", "0"), ("vm_max_memory", "16G"), ("vm_max_memory", "-1"),
    ("vm_max_vcpus", "0"), ("vm_max_vcpus", "eight"), ("vm_max_vcpus", "4097"),
])
def test_vm_policy_bad_values(tmp_path, key, value):
    error = expect_error(with_value(tmp_path, "VIRTUALMACHINE", key, value), "VIRTUALMACHINE", key)
    assert "expected" in error.reason


def test_shipped_config_gives_the_policy_no_network(tmp_path):
    """The shipped config (and the demo, which uses it) lets no VM interface onto any network."""
    from archipelagent.virt.policy import PolicyContext, PolicyViolation, check_domain
    vm = load_config(with_value(tmp_path, "LOGGING", "logging_file_path", "")).vm
    uuid = "0b7e1c2a-3d4f-4a5b-8c6d-7e8f9a0b1c2d"
    ctx = PolicyContext(uuid=uuid, name="vm", vm_folder=tmp_path, allowed_networks=vm.allowed_networks,
                        allowed_bridges=vm.allowed_bridges)
    xml = (f"<domain type='kvm'><uuid>{uuid}</uuid><memory unit='MiB'>128</memory><os><type>hvm</type></os>"
           "<devices><interface type='network'><source network='default'/></interface></devices></domain>")
    with pytest.raises(PolicyViolation) as err:
        check_domain(xml, ctx)
    assert err.value.element == "devices/interface/source"
    assert err.value.reason.startswith("network 'default' is not granted to the VM's owner")


def test_migration_uri_defaults_to_empty_and_is_read(tmp_path):
    assert load_config(with_value(tmp_path, "GLOBAL", "migration_uri", None)).migration_uri == ""
    uri = "qemu+tcp://10.213.3.2/system"
    assert load_config(with_value(tmp_path, "GLOBAL", "migration_uri", uri)).migration_uri == uri


@pytest.mark.parametrize("value", ["qemu:///system", "10.0.0.5", "qemu+tcp://h/system x"])
def test_migration_uri_must_name_a_remote_host(tmp_path, value):
    expect_error(with_value(tmp_path, "GLOBAL", "migration_uri", value), "GLOBAL", "migration_uri")

"""Host networking: declaration, ifupdown/networkd rendering, and the offline check catching broken files."""
from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from archipelagent.admin import cli
from archipelagent.hostnet import check, render
from archipelagent.hostnet.model import HostNetError, load, parse

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "conf" / "net" / "hypervisor.toml"


def example_data() -> dict:
    with open(EXAMPLE, "rb") as f:
        return tomllib.load(f)


def generate(tmp_path, data=None, name="hv") -> tuple[Path, object]:
    net = parse(data or example_data())
    out = tmp_path / name
    for rel, text in render.render(net).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return out, net


def test_the_committed_example_matches_its_declaration():
    """conf/net/example/ is what `net generate` writes for conf/net/hypervisor.toml (docs stay true)."""
    net = load(EXAMPLE)
    for rel, text in render.render(net).items():
        assert (REPO / "conf" / "net" / "example" / rel).read_text() == text, rel
    assert check.check_dir(REPO / "conf" / "net" / "example", net) == []


@pytest.mark.parametrize("mode", ["active-backup", "802.3ad"])
def test_generated_files_pass_their_check(tmp_path, mode):
    data = example_data()
    data["bond"]["mode"] = mode
    if mode == "802.3ad":
        del data["bond"]["primary"]
    out, net = generate(tmp_path, data)
    assert check.check_dir(out, net) == []
    interfaces = (out / render.INTERFACES).read_text()
    assert f"bond-mode {mode}" in interfaces
    assert ("bond-xmit-hash-policy layer3+4" in interfaces) == (mode == "802.3ad")
    assert f"Mode={mode}" in (out / "networkd" / "10-bond0.netdev").read_text()
    assert "vm_allowed_bridges = br100\n" in (out / render.AGENT_SNIPPET).read_text()


def test_every_vlan_on_its_bridge_in_both_renderings(tmp_path):
    out, net = generate(tmp_path)
    topo_i = check.parse_interfaces((out / render.INTERFACES).read_text())
    topo_n = check.parse_networkd({p.name: p.read_text() for p in (out / "networkd").iterdir()})
    for topo in (topo_i, topo_n):
        assert topo.bonds["bond0"] == ("active-backup", ("eno1", "eno2"))
        assert {b: p for b, p in topo.bridges.items()} == {"br100": ("bond0.100",), "br200": ("bond0.200",),
                                                            "br300": ("bond0.300",)}
        assert topo.addresses["br200"] == ["10.200.0.21/24"] and topo.gateways == {"br100": ["192.0.2.1"]}


def test_storage_bridge_offered_to_vms_is_caught(tmp_path):
    out, net = generate(tmp_path)
    conf = tmp_path / "archipel.conf"
    conf.write_text("[VIRTUALMACHINE]\nvm_allowed_bridges = br100 br200\n")
    problems = check.check_dir(out, net, agent_config=conf)
    assert any("offers br200 to VMs" in p and "storage" in p for p in problems), problems
    (out / render.AGENT_SNIPPET).write_text("[VIRTUALMACHINE]\nvm_allowed_bridges = br100 br300 br999\n")
    problems = check.check_dir(out, net)
    assert any("offers br300" in p and "management" in p for p in problems)
    assert any("br999, which the declaration does not create" in p for p in problems)


def test_vlan_not_on_a_bridge_is_caught(tmp_path):
    out, net = generate(tmp_path)
    path = out / render.INTERFACES
    path.write_text(path.read_text().replace("    bridge-ports bond0.200\n", ""))
    (out / "networkd" / "30-bond0.100.network").unlink()  # networkd: bond0.100 enslaved to nothing
    problems = check.check_dir(out, net)
    assert any(p.startswith("ifupdown/interfaces: VLAN 200") and "not on a bridge" in p for p in problems), problems
    assert any(p.startswith("networkd: bridge br100 must have exactly the port bond0.100") for p in problems), problems


def test_syntax_errors_are_caught_with_their_line(tmp_path):
    out, net = generate(tmp_path)
    path = out / render.INTERFACES
    path.write_text(path.read_text().replace("    bridge-stp off\n", "    bridge-stpp off\n", 1) + "ifac br9 inet manual\n")
    unit = out / "networkd" / "40-br100.netdev"
    unit.write_text(unit.read_text() + "[Brige]\nSTP=no\nnonsense\n")
    problems = check.check_dir(out, net)
    assert any(p.startswith("ifupdown/interfaces:") and "unknown option 'bridge-stpp'" in p for p in problems)
    assert any("unknown stanza 'ifac'" in p for p in problems)
    assert any("40-br100.netdev" in p and "unknown section [Brige]" in p for p in problems)
    assert any("40-br100.netdev" in p and "expected KEY=VALUE" in p for p in problems)


def test_wrong_bond_and_stray_address_are_caught(tmp_path):
    out, net = generate(tmp_path)
    path = out / render.INTERFACES
    text = path.read_text().replace("bond-mode active-backup", "bond-mode balance-rr")
    text = text.replace("iface bond0.200 inet manual\n", "iface bond0.200 inet static\n    address 10.200.0.99/24\n")
    path.write_text(text)
    problems = check.check_dir(out, net)
    assert any("mode is balance-rr, declared active-backup" in p for p in problems)
    assert any("bond0.200 carries an address" in p for p in problems)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["bond"].update(mode="balance-rr"), "bond.mode"),
    (lambda d: d["bond"].update(slaves=["eno1"]), "bond.slaves"),
    (lambda d: d["bond"].update(colour="red"), "unknown key(s) colour"),
    (lambda d: d["vlan"][0].update(id=4095), "vlan[0].id"),
    (lambda d: d["vlan"][1].update(id=100), "same id"),
    (lambda d: d["vlan"][0].update(gateway="10.0.0.1"), "vlan[0].gateway"),
    (lambda d: d["vlan"][1].update(role="wifi"), "vlan[1].role"),
    (lambda d: d["vlan"][1].pop("address"), "storage VLAN needs"),
    (lambda d: d["vlan"][2].update(address="10.200.0.50/16"), "overlap"),
    (lambda d: d["vlan"][0].update(mtu=9216), "larger than bond.mtu"),
    (lambda d: d["vlan"][1].update(gateway="10.200.0.1"), "at most one VLAN has the default gateway"),
    (lambda d: d["bond"].update(name="averyveryverylongname"), "bond.name"),
])
def test_bad_declarations_name_the_key(change, message):
    data = example_data()
    change(data)
    with pytest.raises(HostNetError) as info:
        parse(data)
    assert message in str(info.value)


def test_cli_generate_check_and_exit_codes(tmp_path, capsys):
    out = tmp_path / "hv1"
    assert cli.main(["net", "generate", "--from", str(EXAMPLE), "--out", str(out)]) == 0
    assert (out / "hostnet.toml").read_text() == EXAMPLE.read_text()
    assert cli.main(["net", "generate", "--from", str(EXAMPLE), "--out", str(out)]) == 2  # no overwrite
    assert "use --force" in capsys.readouterr().err
    assert cli.main(["net", "check", str(out)]) == 0
    assert "offered to VMs: br100" in capsys.readouterr().out
    conf = tmp_path / "archipel.conf"
    conf.write_text("[VIRTUALMACHINE]\nvm_allowed_bridges = br200\n")
    assert cli.main(["net", "check", str(out), "--agent-config", str(conf), "--json"]) == 1
    assert '"ok": false' in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("hostname = 'hv1'\n[bond\n")
    assert cli.main(["net", "generate", "--from", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    shutil.rmtree(out / "networkd")
    assert cli.main(["net", "generate", "--from", str(EXAMPLE), "--out", str(out), "--force"]) == 0
    assert cli.main(["net", "check", str(out)]) == 0

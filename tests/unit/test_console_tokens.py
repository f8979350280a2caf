"""The console token store (archipelagent/console/tokens.py) and [VNC] (console/config.py)."""
from __future__ import annotations

import configparser
from types import SimpleNamespace

import pytest

from archipelagent.config import ConfigError
from archipelagent.console import TokenRefused, TokenStore, read_config
from archipelagent.console import tokens as tokens_module
from archipelagent.logs import redact

VM_A = "11111111-1111-4111-8111-111111111111"
VM_B = "22222222-2222-4222-8222-222222222222"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def refusal(store, token, vm) -> str:
    with pytest.raises(TokenRefused) as info:
        store.consume(token, vm)
    return info.value.reason


def test_a_token_opens_its_vm_once_for_the_user_it_was_issued_to():
    store = TokenStore(30, clock=Clock())
    token, grant = store.issue("alice@archipel.test", VM_A)
    assert len(token) >= 40 and token.isascii()
    assert store.consume(token, VM_A) == grant
    assert (grant.user, grant.vm) == ("alice@archipel.test", VM_A)
    assert refusal(store, token, VM_A) == "console token already used"
    assert len(store) == 0


def test_tokens_are_unique_and_unguessable():
    store = TokenStore(30, clock=Clock())
    issued = {store.issue("alice@archipel.test", VM_A)[0] for _ in range(20)}
    assert len(issued) == 20
    assert refusal(store, "x" * 43, VM_A).startswith("unknown console token")


def test_expired_token_is_refused_and_forgotten_later():
    clock = Clock()
    store = TokenStore(30, clock=clock)
    token, _ = store.issue("alice@archipel.test", VM_A)
    clock.now += 30
    assert refusal(store, token, VM_A) == "console token expired"
    assert refusal(store, token, VM_A) == "console token already used"
    late, _ = store.issue("alice@archipel.test", VM_A)
    clock.now += 61  # past one more lifetime: nothing is kept
    assert refusal(store, late, VM_A).startswith("unknown console token")
    assert store._grants == {} and store._spent == {}


def test_a_token_for_another_vm_is_refused_and_spent():
    store = TokenStore(30, clock=Clock())
    token, _ = store.issue("alice@archipel.test", VM_A)
    assert refusal(store, token, VM_B) == "console token is for another VM"
    assert refusal(store, token, VM_A) == "console token already used"  # one try, never a search


def test_no_token():
    store = TokenStore(30, clock=Clock())
    assert refusal(store, None, VM_A) == "no console token"
    assert refusal(store, "", VM_A) == "no console token"


def test_outstanding_tokens_are_bounded_per_user_and_in_all(monkeypatch):
    clock = Clock()
    store = TokenStore(30, clock=clock)
    for _ in range(tokens_module.MAX_PER_USER):
        store.issue("alice@archipel.test", VM_A)
    with pytest.raises(OverflowError, match="alice@archipel.test holds"):
        store.issue("alice@archipel.test", VM_A)
    store.issue("bob@archipel.test", VM_A)  # others are not held back
    clock.now += 30  # expired tokens no longer count
    store.issue("alice@archipel.test", VM_A)
    monkeypatch.setattr(tokens_module, "MAX_OUTSTANDING", 2)
    store.issue("bob@archipel.test", VM_B)
    with pytest.raises(OverflowError, match="too many console tokens"):
        store.issue("carol@archipel.test", VM_B)


def test_lifetime_must_be_positive():
    with pytest.raises(ValueError):
        TokenStore(0)


# ------------------------------------------------------------------ [VNC]
def config(tmp_path, machine_ip="127.0.0.1", **keys):
    parser = configparser.RawConfigParser()
    parser.add_section("VNC")
    for k, v in keys.items():
        parser.set("VNC", k, v)
    return SimpleNamespace(parser=parser, path=tmp_path / "archipel.conf", machine_ip=machine_ip)


def test_vnc_defaults_are_loopback_without_tls(tmp_path):
    cfg = read_config(config(tmp_path, machine_ip="auto"))
    assert (cfg.address, cfg.port, cfg.public_host, cfg.tls, cfg.token_lifetime) == ("127.0.0.1", 6900, "127.0.0.1", False, 30)
    assert read_config(SimpleNamespace(parser=None, path=tmp_path / "a.conf", machine_ip="10.0.0.5")).public_host == "10.0.0.5"
    assert read_config(config(tmp_path, vnc_proxy_port="0")).port == 0


def test_vnc_bad_values_name_their_key(tmp_path):
    pem = tmp_path / "vnc.pem"
    pem.write_text("x")
    for keys, key in (({"vnc_proxy_address": "hv1.example.org"}, "vnc_proxy_address"),
                      ({"vnc_proxy_address": "192.0.2.1"}, "vnc_proxy_address"),  # not loopback, no TLS
                      ({"vnc_proxy_port": "70000"}, "vnc_proxy_port"),
                      ({"vnc_proxy_port": "web"}, "vnc_proxy_port"),
                      ({"vnc_key_file": str(pem)}, "vnc_key_file"),
                      ({"vnc_certificate_file": str(tmp_path / "missing.pem")}, "vnc_certificate_file"),
                      ({"vnc_token_lifetime": "0"}, "vnc_token_lifetime"),
                      ({"vnc_token_lifetime": "3600"}, "vnc_token_lifetime"),
                      ({"vnc_proxy_address": "0.0.0.0", "vnc_certificate_file": str(pem)}, "vnc_proxy_public_host")):
        with pytest.raises(ConfigError) as info:
            read_config(config(tmp_path, machine_ip="auto", **keys))
        assert f"[VNC] {key}:" in str(info.value), keys
    cfg = read_config(config(tmp_path, vnc_proxy_address="0.0.0.0", vnc_certificate_file=str(pem),
                             vnc_proxy_public_host="hv1.example.org"))
    assert (cfg.tls, cfg.public_host) == (True, "hv1.example.org")


def test_tokens_never_reach_a_log_line():
    """websockets logs request lines at debug, slixmpp the display reply: both are redacted."""
    token = TokenStore(30).issue("alice@archipel.test", VM_A)[0]
    lines = (f"< GET /vnc/{VM_A}?token={token} HTTP/1.1",
             f'<display type="vnc" token="{token}" url="ws://127.0.0.1:6900/vnc/{VM_A}?token={token}" />')
    for line in lines:
        assert token not in redact(line) and "token=***" in redact(line).replace('"', "")

"""Feature modules are switched on and off by [MODULES]."""
import configparser

from archipelagent.modules import enabled


def test_modules_are_enabled_unless_switched_off():
    parser = configparser.ConfigParser()
    assert enabled(parser, "storage")
    parser.read_string("[MODULES]\nstorage = false\nsnapshots = true\n")
    assert not enabled(parser, "storage") and enabled(parser, "snapshots") and enabled(parser, "vnc")

# ---- rig: the real stack (owned by rig/, see docs/RIG.md) --------------------
import pytest


@pytest.fixture(scope="session")
def stack():
    """ejabberd + slapd + libvirtd of the "test" profile, fresh state, for the whole session."""
    try:
        from rig.stack import Stack
    except ImportError:  # `pytest` run without the repo root on sys.path
        import sys
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from rig.stack import Stack
    import os
    st = Stack(profile=os.environ.get("ARCHIPEL_RIG_PROFILE", "test"))
    st.start()
    try:
        yield st
    finally:
        st.stop()
# ---- end of rig part ---------------------------------------------------------

# ---- agent under test and real clients (see agent_fixtures.py) ---------------
from agent_fixtures import admin, agent, agent_is_serving, agent_process, new_user  # noqa: E402,F401

"""The VM console in the browser: one-time tokens and the WebSocket proxy to loopback VNC.

``tokens.py`` issues and consumes the tokens ``archipel:virtualmachine:vnc display``
hands out; ``proxy.py`` serves noVNC's WebSocket on the agent's event loop and
pipes an accepted connection to the VM's VNC server on 127.0.0.1; ``config.py``
reads ``[VNC]``.  The command itself is the feature module ``modules/vnc.py``.
"""
from .config import ConsoleConfig, read_config
from .proxy import ConsoleProxy, TargetRefused
from .tokens import Grant, TokenRefused, TokenStore

__all__ = ["ConsoleConfig", "read_config", "ConsoleProxy", "TargetRefused", "Grant", "TokenRefused", "TokenStore"]

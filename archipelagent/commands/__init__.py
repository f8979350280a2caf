"""The command registry and its three transports (ACP IQ, chat, ad-hoc)."""
from .registry import Arg, Command, CommandSet, Registry, element

__all__ = ["Arg", "Command", "CommandSet", "Registry", "element"]

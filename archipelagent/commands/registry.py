"""Command declarations: one declaration serves IQ, chat and ad-hoc.

A feature declares each command once with :func:`CommandSet.command`:
namespace, action, permission, arguments and chat words.  The transports
(:mod:`.acp`, :mod:`.chat`, :mod:`.adhoc`) never know about a particular
command; they look it up here and hand it to :mod:`.dispatch`, which is the
single place where permissions are checked and arguments parsed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator

from ..errors import InvalidArgument
from ..xmlns import element  # noqa: F401 - re-exported: handlers build payloads with it

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Arg:
    """One argument of a command.

    ``source`` says where it comes from in an ACP request: an attribute of
    ``<archipel>`` ("attr"), or the first child element with the tag ``name``
    ("element", e.g. a ``<domain>`` definition), or all children ("children").
    Chat passes attribute arguments positionally; ad-hoc shows them as fields.
    """

    name: str
    parse: Callable[[str], Any] = str
    required: bool = True
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    secret: bool = False
    source: str = "attr"
    rest: bool = False  # chat: this argument swallows the rest of the line

    def convert(self, raw: Any) -> Any:
        """Parse a raw value; failures become :class:`InvalidArgument`."""
        if self.source != "attr":
            return raw
        if self.choices and raw not in self.choices:
            raise InvalidArgument(self.name, f"expected one of {', '.join(self.choices)}, got {raw!r}")
        try:
            return self.parse(raw)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(self.name, str(exc) or f"cannot parse {raw!r}") from None


@dataclass(frozen=True)
class Command:
    namespace: str
    action: str
    permission: str | None
    handler: Handler
    kinds: frozenset[str]
    args: tuple[Arg, ...] = ()
    chat: tuple[str, ...] = ()
    help: str = ""
    chat_render: Callable[[Any], str] | None = None
    adhoc: bool = True
    permission_description: str = ""

    @property
    def node(self) -> str:
        """The XEP-0050 node of this command."""
        return f"{self.namespace}#{self.action}"

    @property
    def usage(self) -> str:
        words = self.chat[0] if self.chat else self.action
        parts = [words]
        for arg in self.args:
            if arg.source != "attr":
                continue
            parts.append(f"<{arg.name}>" if arg.required else f"[{arg.name}]")
        return " ".join(parts)


@dataclass
class CommandSet:
    """The commands one feature module declares, registered as a group."""

    commands: list[Command] = field(default_factory=list)

    def command(
        self,
        namespace: str,
        action: str,
        *,
        permission: str | None | type[Ellipsis] = ...,
        kinds: Iterable[str] = ("hypervisor", "vm"),
        args: Iterable[Arg] = (),
        chat: Iterable[str] = (),
        help: str = "",
        chat_render: Callable[[Any], str] | None = None,
        adhoc: bool = True,
        permission_description: str = "",
    ) -> Callable[[Handler], Handler]:
        """Declare a command.  The permission defaults to the action name.

        ``permission=None`` means the handler enforces its own rule (e.g.
        ``getown``, whose target must be the sender) and must say so in ``help``.
        """

        def decorate(handler: Handler) -> Handler:
            perm = action if permission is ... else permission
            self.commands.append(
                Command(
                    namespace=namespace,
                    action=action,
                    permission=perm,
                    handler=handler,
                    kinds=frozenset(kinds),
                    args=tuple(args),
                    chat=tuple(w.lower() for w in chat),
                    help=help or _first_line(handler.__doc__) or action,
                    chat_render=chat_render,
                    adhoc=adhoc,
                    permission_description=permission_description or help or action,
                )
            )
            return handler

        return decorate

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands)


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


class Registry:
    """All commands an entity kind serves, indexed for the transports."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str, str], Command] = {}
        self._order: list[Command] = []
        self._namespaces: dict[str, tuple[str, ...]] = {}  # by kind; every entity asks at its creation

    def add(self, command: Command) -> None:
        for kind in command.kinds:
            key = (kind, command.namespace, command.action)
            if key in self._by_key:
                raise ValueError(f"command {command.namespace} {command.action} declared twice for {kind}")
            self._by_key[key] = command
        self._order.append(command)
        self._namespaces.clear()

    def add_set(self, commands: CommandSet) -> None:
        for command in commands:
            self.add(command)

    def lookup(self, kind: str, namespace: str, action: str) -> Command | None:
        return self._by_key.get((kind, namespace, action))

    def for_kind(self, kind: str) -> list[Command]:
        return [c for c in self._order if kind in c.kinds]

    def namespaces(self, kind: str) -> tuple[str, ...]:
        """The namespaces served to ``kind``, in declaration order."""
        if kind not in self._namespaces:
            seen: dict[str, None] = {}
            for c in self.for_kind(kind):
                seen.setdefault(c.namespace)
            self._namespaces[kind] = tuple(seen)
        return self._namespaces[kind]

    def match_chat(self, kind: str, text: str) -> tuple[Command, list[str]] | None:
        """Find the command whose chat words start ``text`` (longest match wins).

        Archipel compared by raw prefix, so ``park list`` was shadowed by
        ``park``; we match whole words and prefer the longest phrase.
        """
        words = text.strip().split()
        lowered = [w.lower() for w in words]
        best: tuple[int, Command] | None = None
        for command in self.for_kind(kind):
            for phrase in command.chat:
                pw = phrase.split()
                if lowered[: len(pw)] == pw and (best is None or len(pw) > best[0]):
                    best = (len(pw), command)
        if best is None:
            return None
        return best[1], words[best[0]:]

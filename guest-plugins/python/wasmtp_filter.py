"""wasmtp_filter: write wasmtp filter plugins in Python (world ``wasmtp:filter/filter@0.2.0``).

A plugin is a module holding a class named ``WitWorld`` (componentize-py looks it up by that
name) that derives from :class:`Plugin`. The class attributes make the manifest; override only
the stages you list in ``stages``::

    import wasmtp_filter as wf

    class WitWorld(wf.Plugin):
        name = "hello"
        stages = ["data"]
        edits = ["add-header"]
        config_fields = {"greeting": (str, "hello")}

        def on_data(self, conn, envelope, message):
            return wf.decision(wf.cont(), [wf.add_header("X-Greeting", self.settings()["greeting"])])

Build it with ``componentize-py -d wit/0.2.0 -w filter componentize app -p <dir> -p
guest-plugins/python -o hello.wasm`` (``scripts/build-polyglot`` does this).

Every call runs in a fresh sandbox, and the module is imported once at *build* time (the
component is a snapshot taken after the import): do not call the host at import time, and keep
state in notes or the key-value store (``host.notes_get``, ``host.kv_get``..., re-exported).
"""

import json

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Address,
    BodyAccess,
    Decision,
    Edit_AddHeader,
    Edit_AddRecipient,
    Edit_ChangeHeader,
    Edit_InsertHeader,
    Edit_Quarantine,
    Edit_RemoveHeader,
    Edit_RemoveRecipient,
    Edit_ReplaceBody,
    Edit_SetSender,
    EditKind,
    Header,
    HeaderChange,
    HeaderInsert,
    HeaderRef,
    Manifest,
    Reply,
    Stage,
    Verdict_Accept,
    Verdict_Continue,
    Verdict_Disconnect,
    Verdict_Reject,
    Verdict_Tempfail,
)

__all__ = [
    "Plugin", "ConfigError", "REQUIRED", "Err", "host",
    "cont", "accept", "reject", "tempfail", "disconnect", "decision",
    "add_header", "insert_header", "change_header", "remove_header", "set_sender",
    "add_recipient", "remove_recipient", "replace_body", "quarantine",
    "config", "log", "trace", "debug", "info", "warn", "error", "domain_of",
]

# ---- verdicts ----------------------------------------------------------------------------


def cont():
    """No objection: the next plugin of the stage runs."""
    return Verdict_Continue()


def accept():
    """Accept at this stage: skip the remaining plugins of the stage."""
    return Verdict_Accept()


def _reply(code, enhanced, lines):
    if not lines:
        raise ValueError("a reply needs at least one line")
    return Reply(code=code, enhanced=enhanced, lines=list(lines))


def reject(code, enhanced, *lines):
    """Refuse permanently: ``reject(550, "5.7.1", "no thanks")`` (``enhanced`` may be None)."""
    return Verdict_Reject(_reply(code, enhanced, lines))


def tempfail(code, enhanced, *lines):
    """Refuse temporarily with a 4xx reply; the client will retry."""
    return Verdict_Tempfail(_reply(code, enhanced, lines))


def disconnect(code, enhanced, *lines):
    """Send the reply (4xx or 5xx) and close the connection."""
    return Verdict_Disconnect(_reply(code, enhanced, lines))


def decision(verdict, edits=()):
    """A stage's answer: a verdict plus a list of edits (applied all together or not at all)."""
    return Decision(verdict=verdict, edits=list(edits))


# ---- edits -------------------------------------------------------------------------------


def add_header(name, value):
    """Append a header field after the last one (data stage)."""
    return Edit_AddHeader(Header(name=name, value=value))


def insert_header(index, name, value):
    """Insert a header field at ``index`` (0 = before the first field; data stage)."""
    return Edit_InsertHeader(HeaderInsert(index=index, header=Header(name=name, value=value)))


def change_header(name, occurrence, value):
    """Set the value of the ``occurrence``-th (from 1, case-insensitive) field ``name``."""
    return Edit_ChangeHeader(HeaderChange(name=name, occurrence=occurrence, value=value))


def remove_header(name, occurrence):
    """Remove the ``occurrence``-th (from 1, case-insensitive) field ``name``."""
    return Edit_RemoveHeader(HeaderRef(name=name, occurrence=occurrence))


def set_sender(mailbox):
    """Replace the envelope sender (mail and data stages); "" is the null sender."""
    return Edit_SetSender(Address(mailbox=mailbox, params=[]))


def add_recipient(mailbox):
    """Add an envelope recipient (rcpt and data stages)."""
    return Edit_AddRecipient(Address(mailbox=mailbox, params=[]))


def remove_recipient(mailbox):
    """Remove an envelope recipient by mailbox (rcpt and data stages)."""
    return Edit_RemoveRecipient(mailbox)


def replace_body(body):
    """Replace the body (bytes, or str encoded as UTF-8): CRLF line endings, no NUL."""
    return Edit_ReplaceBody(body.encode() if isinstance(body, str) else bytes(body))


def quarantine(reason):
    """Deliver to the quarantine instead of the upstream, with this reason (data stage)."""
    return Edit_Quarantine(reason)


# ---- host helpers ------------------------------------------------------------------------


def config():
    """The plugin's ``config`` table from the host configuration, parsed (``{}`` when none)."""
    return json.loads(host.config())


def log(level, message):
    """Log a line in the host's log; ``level`` is "trace", "debug", "info", "warn" or "error"."""
    host.log(host.Level[level.upper()], str(message))


def trace(message):
    log("trace", message)


def debug(message):
    log("debug", message)


def info(message):
    log("info", message)


def warn(message):
    log("warn", message)


def error(message):
    log("error", message)


def domain_of(mailbox):
    """The domain after the last '@' of ``mailbox``, lowercased; None when there is no '@'."""
    if "@" not in mailbox:
        return None
    return mailbox.rpartition("@")[2].lower()


# ---- configuration checking --------------------------------------------------------------


class ConfigError(Exception):
    """A configuration the plugin cannot use; its text is what the operator sees."""


REQUIRED = object()
"""A ``config_fields`` default meaning "this key must be given"."""

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
               dict: "an object", list: "a list"}


def _json_kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{json.dumps(value)}`"
    if isinstance(value, (int, float)):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _type_ok(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check(key, value, kind):
    """Checks ``value`` against ``kind``: a type, or ``[T]`` for a list of T."""
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise ConfigError(f"invalid type for `{key}`: {_json_kind(value)}, expected a list")
        for i, item in enumerate(value):
            _check(f"{key}[{i}]", item, kind[0])
        return
    if not _type_ok(value, kind):
        raise ConfigError(f"invalid type for `{key}`: {_json_kind(value)}, expected {_TYPE_NAMES[kind]}")


def _expected(keys):
    quoted = [f"`{k}`" for k in keys]
    if not quoted:
        return "there are no fields"
    if len(quoted) == 1:
        return f"expected {quoted[0]}"
    if len(quoted) == 2:
        return f"expected {quoted[0]} or {quoted[1]}"
    return "expected one of " + ", ".join(quoted)


def parse_config(text, fields):
    """Parses JSON ``text`` against ``fields`` ({key: (type, default)}); returns the settings.

    Unknown keys, wrong types and missing REQUIRED keys raise ConfigError with messages in the
    style of the Rust plugins (serde): "unknown field `x`, expected one of `a`, `b`, `c`".
    """
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("expected a JSON object")
    settings = {}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown field `{key}`, {_expected(list(fields))}")
    for key, (kind, default) in fields.items():
        if key in raw:
            _check(key, raw[key], kind)
            settings[key] = raw[key]
        elif default is REQUIRED:
            raise ConfigError(f"missing field `{key}`")
        else:
            settings[key] = json.loads(json.dumps(default))  # a fresh copy
    return settings


# ---- the base class ----------------------------------------------------------------------


def _enum(enum, name):
    return enum[name.upper().replace("-", "_")]


class Plugin:
    """Base class of a plugin; name the subclass ``WitWorld``.

    Class attributes: ``name``, ``version``, ``stages`` (e.g. ``["rcpt", "data"]``), ``body``
    ("none", "headers" or "full"), ``edits`` (e.g. ``["add-header"]``) and ``config_fields``
    ({key: (type, default)}, type being str, int, float, bool, dict or ``[T]`` for a list of T;
    default REQUIRED for a mandatory key). Override :meth:`validate` for further checks.
    """

    name = "python-plugin"
    version = "0.1.0"
    stages = ()
    body = "none"
    edits = ()
    config_fields = {}

    def validate(self, settings):
        """Further checks of the parsed settings; raise ConfigError to refuse them."""

    def settings(self, text=None):
        """The checked configuration (``host.config()`` unless ``text`` is given) as a dict."""
        try:
            settings = parse_config(host.config() if text is None else text, self.config_fields)
            self.validate(settings)
        except ConfigError as e:
            raise ConfigError(f"invalid plugin config: {e}") from None
        return settings

    # The exports called by the host.

    def manifest(self):
        return Manifest(
            name=self.name,
            version=self.version,
            stages=[_enum(Stage, s) for s in self.stages],
            body=_enum(BodyAccess, self.body),
            edits=[_enum(EditKind, e) for e in self.edits],
        )

    def init(self, config):
        """Refuses (``result::err``) a configuration that :meth:`settings` rejects."""
        try:
            self.settings(config)
        except ConfigError as e:
            raise Err(str(e)) from None

    def on_connect(self, conn):
        return decision(cont())

    def on_ehlo(self, conn, helo):
        return decision(cont())

    def on_mail(self, conn, sender):
        return decision(cont())

    def on_rcpt(self, conn, envelope, recipient):
        return decision(cont())

    def on_data(self, conn, envelope, message):
        return decision(cont())

"""probe-py: a test fixture that tries what the sandbox must deny, or raises.

Config: {"mode": "file" | "socket" | "http" | "raise"} (required). At the data stage it tries
the operation and answers continue with ``X-Probe: <mode> denied: <why>`` when it failed, or
``X-Probe: <mode> ALLOWED`` when it worked; "raise" raises an uncaught RuntimeError.
"""

import wasmtp_filter as wf

# Modules must be imported at build time (the component is a snapshot taken after import): the
# standard library is not there at run time. `socket` and `urllib` load the idna codec lazily,
# which would fail before the sandbox is even asked, so it is loaded here.
import encodings.idna  # noqa: F401

try:
    import socket
except ImportError as e:  # a CPython without sockets: the probe reports this as a denial
    socket = e
try:
    import urllib.request as urllib_request
except ImportError as e:
    urllib_request = e

MODES = ("file", "socket", "http", "raise")


def _attempt(mode):
    if mode == "file":
        with open("/etc/passwd", "rb") as f:
            f.read(1)
    elif mode == "socket":
        if isinstance(socket, ImportError):
            raise socket
        socket.create_connection(("127.0.0.1", 25), timeout=1).close()
    elif mode == "http":
        if isinstance(urllib_request, ImportError):
            raise urllib_request
        urllib_request.urlopen("http://127.0.0.1:1/", timeout=1).close()


def _why(exc):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = "".join(c if 0x20 <= ord(c) < 0x7F else " " for c in text)
    return text[:100]


class WitWorld(wf.Plugin):
    name = "probe-py"
    version = "0.1.0"
    stages = ["data"]
    body = "none"
    edits = ["add-header"]
    config_fields = {"mode": (str, wf.REQUIRED)}

    def validate(self, settings):
        if settings["mode"] not in MODES:
            raise wf.ConfigError(f"unknown variant `{settings['mode']}` for `mode`, expected one of "
                                 + ", ".join(f"`{m}`" for m in MODES))

    def on_data(self, conn, envelope, message):
        mode = self.settings()["mode"]
        if mode == "raise":
            raise RuntimeError("probe exception: boom")
        try:
            _attempt(mode)
        except Exception as e:  # noqa: BLE001 - every failure is the sandbox saying no
            value = f"{mode} denied: {_why(e)}"
        else:
            value = f"{mode} ALLOWED"
        return wf.decision(wf.cont(), [wf.add_header("X-Probe", value)])

"""external-tagger-py: marks mail from outside the organisation.

Config (all optional):
    internal_domains   list of domains whose senders are internal (case-insensitive)   []
    reject_recipients  mailboxes refused at RCPT with 550 5.7.1 (case-insensitive)     []
    tag                prefixed to the Subject of external mail                        "[EXTERNAL]"
    header             header field added to external mail, with the value "yes"       "X-External-Sender"

A sender is external when its domain (after the last '@') is not in ``internal_domains``; the
null sender and a mailbox without '@' are external.
"""

import wasmtp_filter as wf


def _printable_ascii(text):
    return all(0x21 <= ord(c) <= 0x7E for c in text)


class WitWorld(wf.Plugin):
    name = "external-tagger-py"
    version = "0.1.0"
    stages = ["rcpt", "data"]
    body = "headers"
    edits = ["change-header", "add-header"]
    config_fields = {
        "internal_domains": ([str], []),
        "reject_recipients": ([str], []),
        "tag": (str, "[EXTERNAL]"),
        "header": (str, "X-External-Sender"),
    }

    def validate(self, settings):
        header = settings["header"]
        if not header or not _printable_ascii(header) or ":" in header:
            raise wf.ConfigError(f"`header` must be a header field name (printable ASCII, no ':'), not {header!r}")
        tag = settings["tag"]
        if not tag.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in tag):
            raise wf.ConfigError("`tag` must be non-empty text without control characters")

    def on_rcpt(self, conn, envelope, recipient):
        refused = {m.lower() for m in self.settings()["reject_recipients"]}
        if recipient.mailbox.lower() in refused:
            return wf.decision(wf.reject(550, "5.7.1", "recipient refused by policy"))
        return wf.decision(wf.cont())

    def on_data(self, conn, envelope, message):
        settings = self.settings()
        sender = envelope.sender.mailbox if envelope.sender is not None else ""
        internal = {d.lower() for d in settings["internal_domains"]}
        if wf.domain_of(sender) in internal:
            return wf.decision(wf.cont())
        tag = settings["tag"]
        edits = []
        subject = next((h for h in message.headers if h.name.lower() == "subject"), None)
        if subject is None:
            edits.append(wf.add_header("Subject", tag))
        elif not subject.value.startswith(tag):
            value = f"{tag} {subject.value}" if subject.value else tag
            edits.append(wf.change_header(subject.name, 1, value))
        edits.append(wf.add_header(settings["header"], "yes"))
        return wf.decision(wf.cont(), edits)

"""Native unit tests of wasmtp_filter and the external tagger, without componentize-py.

Run with `python3 guest-plugins/python/test_external_tagger.py` (or pytest). The modules that
componentize-py generates at build time (`wit_world`, `componentize_py_types`) are replaced by
small stubs with the same names and shapes (componentize-py 0.25).
"""

import dataclasses
import enum
import json
import os
import sys
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def _install_stubs():
    def record(name, *fields):
        return dataclasses.make_dataclass(name, fields)

    cpt = types.ModuleType("componentize_py_types")

    @dataclasses.dataclass(frozen=True)
    class Err(Exception):
        value: object

    cpt.Err = Err

    t = types.ModuleType("wit_world.imports.types")
    t.Stage = enum.Enum("Stage", "CONNECT EHLO MAIL RCPT DATA", start=0)
    t.BodyAccess = enum.Enum("BodyAccess", "NONE HEADERS FULL", start=0)
    t.EditKind = enum.Enum(
        "EditKind",
        "SET_SENDER ADD_RECIPIENT REMOVE_RECIPIENT ADD_HEADER INSERT_HEADER CHANGE_HEADER "
        "REMOVE_HEADER REPLACE_BODY QUARANTINE",
        start=0,
    )
    for name, fields in {
        "Reply": ("code", "enhanced", "lines"),
        "Manifest": ("name", "version", "stages", "body", "edits"),
        "Param": ("name", "value"),
        "Address": ("mailbox", "params"),
        "Envelope": ("sender", "recipients"),
        "Header": ("name", "value"),
        "HeaderRef": ("name", "occurrence"),
        "HeaderChange": ("name", "occurrence", "value"),
        "HeaderInsert": ("index", "header"),
        "Message": ("headers", "body", "body_truncated", "size"),
        "Decision": ("verdict", "edits"),
    }.items():
        setattr(t, name, record(name, *fields))
    for name in ("Continue", "Accept"):
        setattr(t, f"Verdict_{name}", record(f"Verdict_{name}"))
    for name in ("Reject", "Tempfail", "Disconnect"):
        setattr(t, f"Verdict_{name}", record(f"Verdict_{name}", "value"))
    for name in ("SetSender", "AddRecipient", "RemoveRecipient", "AddHeader", "InsertHeader",
                 "ChangeHeader", "RemoveHeader", "ReplaceBody", "Quarantine"):
        setattr(t, f"Edit_{name}", record(f"Edit_{name}", "value"))

    h = types.ModuleType("wit_world.imports.host")
    h.Level = enum.Enum("Level", "TRACE DEBUG INFO WARN ERROR", start=0)
    h.CONFIG = "{}"
    h.LOG = []
    h.config = lambda: h.CONFIG
    h.log = lambda level, message: h.LOG.append((level, message))

    imports = types.ModuleType("wit_world.imports")
    imports.types, imports.host = t, h
    world = types.ModuleType("wit_world")
    world.imports = imports
    sys.modules.update({
        "componentize_py_types": cpt, "wit_world": world, "wit_world.imports": imports,
        "wit_world.imports.types": t, "wit_world.imports.host": h,
    })
    return t, h


T, HOST = _install_stubs()
sys.path[:0] = [HERE, os.path.join(HERE, "external_tagger")]
import wasmtp_filter as wf  # noqa: E402
import app  # noqa: E402  (external_tagger/app.py)

CONFIG = {"internal_domains": ["Corp.Example"], "reject_recipients": ["NoReply@corp.example"]}


def addr(mailbox):
    return T.Address(mailbox=mailbox, params=[])


def envelope(sender):
    return T.Envelope(sender=None if sender is None else addr(sender), recipients=[addr("bob@corp.example")])


def message(*headers):
    return T.Message(headers=[T.Header(name=n, value=v) for n, v in headers], body=None,
                     body_truncated=False, size=100)


class TaggerTest(unittest.TestCase):
    def setUp(self):
        HOST.CONFIG = json.dumps(CONFIG)
        self.plugin = app.WitWorld()

    def data(self, sender, *headers):
        return self.plugin.on_data(None, envelope(sender), message(*headers))

    def test_manifest(self):
        m = self.plugin.manifest()
        self.assertEqual(m.name, "external-tagger-py")
        self.assertEqual(m.stages, [T.Stage.RCPT, T.Stage.DATA])
        self.assertEqual(m.body, T.BodyAccess.HEADERS)
        self.assertEqual(m.edits, [T.EditKind.CHANGE_HEADER, T.EditKind.ADD_HEADER])

    def test_init_accepts_valid_and_empty_config(self):
        self.assertIsNone(self.plugin.init(json.dumps(CONFIG)))
        self.assertIsNone(self.plugin.init("{}"))

    def test_init_rejects_unknown_key(self):
        with self.assertRaises(wf.Err) as e:
            self.plugin.init('{"forbidden_extensionz": []}')
        self.assertEqual(
            e.exception.value,
            "invalid plugin config: unknown field `forbidden_extensionz`, expected one of "
            "`internal_domains`, `reject_recipients`, `tag`, `header`",
        )

    def test_init_rejects_wrong_types(self):
        for config, why in [
            ('{"tag": 5}', "invalid type for `tag`: number `5`, expected a string"),
            ('{"internal_domains": "corp.example"}', "invalid type for `internal_domains`"),
            ('{"reject_recipients": ["a", null]}', "`reject_recipients[1]`: null, expected a string"),
            ('{"header": "X Bad"}', "`header` must be a header field name"),
            ('{"tag": ""}', "`tag` must be non-empty"),
            ("[]", "expected a JSON object"),
            ("{", "not JSON"),
        ]:
            with self.subTest(config=config), self.assertRaises(wf.Err) as e:
                self.plugin.init(config)
            self.assertIn(why, e.exception.value)

    def test_rcpt(self):
        d = self.plugin.on_rcpt(None, envelope("a@x"), addr("noreply@CORP.example"))
        self.assertEqual(d.verdict, T.Verdict_Reject(T.Reply(550, "5.7.1", ["recipient refused by policy"])))
        self.assertEqual(d.edits, [])
        d = self.plugin.on_rcpt(None, envelope("a@x"), addr("bob@corp.example"))
        self.assertEqual(d, T.Decision(T.Verdict_Continue(), []))

    def test_internal_sender_untouched(self):
        self.assertEqual(self.data("jane@corp.EXAMPLE", ("Subject", "hi")), T.Decision(T.Verdict_Continue(), []))
        # The domain is what follows the last '@'.
        self.assertEqual(self.data('"a@evil"@corp.example', ("Subject", "hi")).edits, [])

    def test_external_sender_tagged(self):
        d = self.data("eve@evil.example", ("From", "x"), ("subject", "hi"), ("Subject", "two"))
        self.assertEqual(d.verdict, T.Verdict_Continue())
        self.assertEqual(d.edits, [
            T.Edit_ChangeHeader(T.HeaderChange("subject", 1, "[EXTERNAL] hi")),
            T.Edit_AddHeader(T.Header("X-External-Sender", "yes")),
        ])

    def test_already_tagged_subject_kept(self):
        d = self.data("eve@evil.example", ("Subject", "[EXTERNAL] hi"))
        self.assertEqual(d.edits, [T.Edit_AddHeader(T.Header("X-External-Sender", "yes"))])

    def test_missing_subject_added_and_null_sender_is_external(self):
        for sender in ("", None, "postmaster"):
            with self.subTest(sender=sender):
                self.assertEqual(self.data(sender, ("From", "x")).edits, [
                    T.Edit_AddHeader(T.Header("Subject", "[EXTERNAL]")),
                    T.Edit_AddHeader(T.Header("X-External-Sender", "yes")),
                ])

    def test_custom_tag_and_header(self):
        HOST.CONFIG = '{"tag": "[EXT]", "header": "X-Outside"}'
        self.assertEqual(self.data("jane@corp.example", ("Subject", "hi")).edits, [
            T.Edit_ChangeHeader(T.HeaderChange("Subject", 1, "[EXT] hi")),
            T.Edit_AddHeader(T.Header("X-Outside", "yes")),
        ])


class HelperTest(unittest.TestCase):
    def test_verdicts_and_defaults(self):
        self.assertEqual(wf.tempfail(451, None, "a", "b"), T.Verdict_Tempfail(T.Reply(451, None, ["a", "b"])))
        with self.assertRaises(ValueError):
            wf.reject(550, "5.7.1")
        plugin = wf.Plugin()
        self.assertEqual(plugin.on_connect(None), T.Decision(T.Verdict_Continue(), []))

    def test_expected_lists_like_serde(self):
        one = {"a": (str, "")}
        two = {"a": (str, ""), "b": (int, 0)}
        with self.assertRaisesRegex(wf.ConfigError, r"unknown field `x`, expected `a`$"):
            wf.parse_config('{"x": 1}', one)
        with self.assertRaisesRegex(wf.ConfigError, r"expected `a` or `b`$"):
            wf.parse_config('{"x": 1}', two)
        with self.assertRaisesRegex(wf.ConfigError, r"`b`: boolean `true`, expected an integer"):
            wf.parse_config('{"b": true}', two)
        with self.assertRaisesRegex(wf.ConfigError, r"missing field `m`"):
            wf.parse_config("{}", {"m": (str, wf.REQUIRED)})

    def test_defaults_are_copies(self):
        fields = {"l": ([str], [])}
        wf.parse_config("{}", fields)["l"].append("x")
        self.assertEqual(wf.parse_config("{}", fields)["l"], [])

    def test_log(self):
        HOST.LOG.clear()
        wf.warn("careful")
        self.assertEqual(HOST.LOG, [(HOST.Level.WARN, "careful")])


if __name__ == "__main__":
    unittest.main()

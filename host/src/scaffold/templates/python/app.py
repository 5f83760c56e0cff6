"""{{name}}: a wasmtp filter plugin.

Refuses a message whose Subject contains one of the configured words (in any case) with
``550 5.7.1``, and stamps every other message with ``X-Checked-By: {{name}}``. Make it yours:
implement the stages you need and list each in ``stages`` -- the host calls a plugin only at
the stages, and accepts only the edits, that its manifest declares.

Config (``[plugins.config]``):
    blocked_words   words that get a message refused when its Subject contains one   []
"""

import wasmtp_filter as wf


class WitWorld(wf.Plugin):
    name = "{{name}}"
    version = "0.1.0"
    stages = ["data"]
    body = "headers"
    edits = ["add-header"]
    config_fields = {"blocked_words": ([str], [])}

    def on_data(self, conn, envelope, message):
        subject = next((h.value for h in message.headers if h.name.lower() == "subject"), "").lower()
        for word in self.settings()["blocked_words"]:
            if word.lower() in subject:
                return wf.decision(wf.reject(550, "5.7.1", f'Messages about "{word}" are not accepted'))
        return wf.decision(wf.cont(), [wf.add_header("X-Checked-By", "{{name}}")])

/**
 * {{name}}: a wasmtp filter plugin.
 *
 * Refuses a message whose Subject contains one of the configured words (in any case) with
 * `550 5.7.1`, and stamps every other message with `X-Checked-By: {{name}}`. Make it yours:
 * implement the stages you need and list each in `stages` -- the host calls a plugin only at
 * the stages, and accepts only the edits, that its manifest declares.
 *
 * Config (`[plugins.config]`):
 *   blocked_words   words that get a message refused when its Subject contains one   []
 */

import * as wf from './wasmtp-filter.js';

export const { manifest, init, onConnect, onEhlo, onMail, onRcpt, onData } = wf.definePlugin({
  name: '{{name}}',
  version: '0.1.0',
  stages: ['data'],
  body: 'headers',
  edits: ['add-header'],
  configFields: { blocked_words: [['string'], []] },

  onData(conn, envelope, message) {
    const header = message.headers.find((h) => h.name.toLowerCase() === 'subject');
    const subject = header ? header.value.toLowerCase() : '';
    const word = this.settings().blocked_words.find((w) => subject.includes(w.toLowerCase()));
    if (word !== undefined) {
      return wf.decision(wf.reject(550, '5.7.1', `Messages about "${word}" are not accepted`));
    }
    return wf.decision(wf.cont(), [wf.addHeader('X-Checked-By', '{{name}}')]);
  },
});

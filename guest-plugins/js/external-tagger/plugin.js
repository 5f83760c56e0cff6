/**
 * external-tagger-js: marks mail from outside the organisation.
 *
 * Config (all optional):
 *   internal_domains   domains whose senders are internal (case-insensitive)        []
 *   reject_recipients  mailboxes refused at RCPT with 550 5.7.1 (case-insensitive)  []
 *   tag                prefixed to the Subject of external mail                     "[EXTERNAL]"
 *   header             header field added to external mail, with the value "yes"    "X-External-Sender"
 *
 * A sender is external when its domain (after the last '@') is not in `internal_domains`; the
 * null sender and a mailbox without '@' are external.
 */

import * as wf from '../wasmtp-filter.js';

const printableAscii = (s) => [...s].every((c) => c.charCodeAt(0) >= 0x21 && c.charCodeAt(0) <= 0x7e);
const hasControl = (s) => [...s].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);

export const { manifest, init, onConnect, onEhlo, onMail, onRcpt, onData } = wf.definePlugin({
  name: 'external-tagger-js',
  version: '0.1.0',
  stages: ['rcpt', 'data'],
  body: 'headers',
  edits: ['change-header', 'add-header'],
  configFields: {
    internal_domains: [['string'], []],
    reject_recipients: [['string'], []],
    tag: ['string', '[EXTERNAL]'],
    header: ['string', 'X-External-Sender'],
  },

  validate({ header, tag }) {
    if (!header || !printableAscii(header) || header.includes(':')) {
      throw new wf.ConfigError(`\`header\` must be a header field name (printable ASCII, no ':'), not ${JSON.stringify(header)}`);
    }
    if (!tag.trim() || hasControl(tag)) {
      throw new wf.ConfigError('`tag` must be non-empty text without control characters');
    }
  },

  onRcpt(conn, envelope, recipient) {
    const refused = new Set(this.settings().reject_recipients.map((m) => m.toLowerCase()));
    if (refused.has(recipient.mailbox.toLowerCase())) {
      return wf.decision(wf.reject(550, '5.7.1', 'recipient refused by policy'));
    }
    return wf.decision(wf.cont());
  },

  onData(conn, envelope, message) {
    const settings = this.settings();
    const sender = envelope.sender ? envelope.sender.mailbox : '';
    const internal = new Set(settings.internal_domains.map((d) => d.toLowerCase()));
    if (internal.has(wf.domainOf(sender))) return wf.decision(wf.cont());
    const { tag } = settings;
    const edits = [];
    const subject = message.headers.find((h) => h.name.toLowerCase() === 'subject');
    if (subject === undefined) {
      edits.push(wf.addHeader('Subject', tag));
    } else if (!subject.value.startsWith(tag)) {
      edits.push(wf.changeHeader(subject.name, 1, subject.value ? `${tag} ${subject.value}` : tag));
    }
    edits.push(wf.addHeader(settings.header, 'yes'));
    return wf.decision(wf.cont(), edits);
  },
});

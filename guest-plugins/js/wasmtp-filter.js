/**
 * wasmtp-filter: write wasmtp filter plugins in JavaScript (world `wasmtp:filter/filter@0.2.0`,
 * built with componentize-js).
 *
 * A plugin module must export every function of the world, named in camelCase: `manifest`,
 * `init`, `onConnect`, `onEhlo`, `onMail`, `onRcpt`, `onData`. `definePlugin` makes them from
 * the stages you write, with defaults that let the message through:
 *
 *     import * as wf from '../wasmtp-filter.js';
 *     export const { manifest, init, onConnect, onEhlo, onMail, onRcpt, onData } = wf.definePlugin({
 *       name: 'hello', version: '0.1.0', stages: ['data'], body: 'none', edits: ['add-header'],
 *       configFields: { greeting: ['string', 'hello'] },
 *       onData(conn, envelope, message) {
 *         return wf.decision(wf.cont(), [wf.addHeader('X-Greeting', this.settings().greeting)]);
 *       },
 *     });
 *
 * How the WIT types look in JS (componentize-js / jco conventions): records are objects with
 * camelCase fields (`conn.clientIp`, `message.bodyTruncated`); variants are `{ tag, val }` with
 * kebab-case tags (`{ tag: 'add-header', val: { name, value } }`); enums are kebab-case strings
 * (`'change-header'`); an absent option is `undefined`; `list<u8>` is a Uint8Array; u64/s64 are
 * BigInt (`message.size`, ttl-ms, kv-incr). `init` returning normally is `ok`; throwing a
 * string (or an Error, whose message is used) is `err`.
 *
 * Every call runs in a fresh sandbox, and the module's top level runs once at *build* time (the
 * component is a snapshot): do not call the host at top level; keep state in notes or the
 * key-value store (`host.notesGet`, `host.kvGet`..., re-exported as `host`).
 */

import * as host from 'wasmtp:filter/host@0.2.0';

export { host };

// ---- verdicts ---------------------------------------------------------------------------

/** No objection: the next plugin of the stage runs. */
export const cont = () => ({ tag: 'continue' });

/** Accept at this stage: skip the remaining plugins of the stage. */
export const accept = () => ({ tag: 'accept' });

function reply(code, enhanced, lines) {
  if (lines.length === 0) throw new Error('a reply needs at least one line');
  return { code, enhanced: enhanced ?? undefined, lines };
}

/** Refuse permanently: `reject(550, '5.7.1', 'no thanks')` (`enhanced` may be null). */
export const reject = (code, enhanced, ...lines) => ({ tag: 'reject', val: reply(code, enhanced, lines) });

/** Refuse temporarily with a 4xx reply; the client will retry. */
export const tempfail = (code, enhanced, ...lines) => ({ tag: 'tempfail', val: reply(code, enhanced, lines) });

/** Send the reply (4xx or 5xx) and close the connection. */
export const disconnect = (code, enhanced, ...lines) => ({ tag: 'disconnect', val: reply(code, enhanced, lines) });

/** A stage's answer: a verdict plus edits (applied all together or not at all). */
export const decision = (verdict, edits = []) => ({ verdict, edits: [...edits] });

// ---- edits ------------------------------------------------------------------------------

/** Append a header field after the last one (data stage). */
export const addHeader = (name, value) => ({ tag: 'add-header', val: { name, value } });

/** Insert a header field at `index` (0 = before the first field; data stage). */
export const insertHeader = (index, name, value) => ({ tag: 'insert-header', val: { index, header: { name, value } } });

/** Set the value of the `occurrence`-th (from 1, case-insensitive) field `name`. */
export const changeHeader = (name, occurrence, value) => ({ tag: 'change-header', val: { name, occurrence, value } });

/** Remove the `occurrence`-th (from 1, case-insensitive) field `name`. */
export const removeHeader = (name, occurrence) => ({ tag: 'remove-header', val: { name, occurrence } });

/** Replace the envelope sender (mail and data stages); '' is the null sender. */
export const setSender = (mailbox) => ({ tag: 'set-sender', val: { mailbox, params: [] } });

/** Add an envelope recipient (rcpt and data stages). */
export const addRecipient = (mailbox) => ({ tag: 'add-recipient', val: { mailbox, params: [] } });

/** Remove an envelope recipient by mailbox (rcpt and data stages). */
export const removeRecipient = (mailbox) => ({ tag: 'remove-recipient', val: mailbox });

/** Replace the body (Uint8Array, or a string encoded as UTF-8): CRLF line endings, no NUL. */
export const replaceBody = (body) => ({
  tag: 'replace-body',
  val: typeof body === 'string' ? new TextEncoder().encode(body) : body,
});

/** Deliver to the quarantine instead of the upstream, with this reason (data stage). */
export const quarantine = (reason) => ({ tag: 'quarantine', val: reason });

// ---- host helpers -----------------------------------------------------------------------

/** The plugin's `config` table from the host configuration, parsed (`{}` when none). */
export const config = () => JSON.parse(host.config());

/** Log a line in the host's log; `level` is 'trace', 'debug', 'info', 'warn' or 'error'. */
export const log = (level, message) => host.log(level, String(message));
export const trace = (m) => log('trace', m);
export const debug = (m) => log('debug', m);
export const info = (m) => log('info', m);
export const warn = (m) => log('warn', m);
export const error = (m) => log('error', m);

/** The domain after the last '@' of `mailbox`, lowercased; null when there is no '@'. */
export function domainOf(mailbox) {
  const at = mailbox.lastIndexOf('@');
  return at < 0 ? null : mailbox.slice(at + 1).toLowerCase();
}

// ---- configuration checking -------------------------------------------------------------

/** A configuration the plugin cannot use; its message is what the operator sees. */
export class ConfigError extends Error {}

/** A `configFields` default meaning "this key must be given". */
export const REQUIRED = Symbol('required');

const TYPE_NAMES = {
  string: 'a string', boolean: 'a boolean', integer: 'an integer', number: 'a number', object: 'an object',
};

function jsonKind(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return `string ${JSON.stringify(v)}`;
  if (typeof v === 'number') return `number \`${v}\``;
  if (typeof v === 'boolean') return `boolean \`${v}\``;
  return 'an object';
}

function typeOk(v, kind) {
  switch (kind) {
    case 'integer': return Number.isInteger(v);
    case 'object': return v !== null && typeof v === 'object' && !Array.isArray(v);
    default: return typeof v === kind;
  }
}

function check(key, value, kind) {
  if (Array.isArray(kind)) {
    if (!Array.isArray(value)) throw new ConfigError(`invalid type for \`${key}\`: ${jsonKind(value)}, expected a list`);
    value.forEach((item, i) => check(`${key}[${i}]`, item, kind[0]));
  } else if (!typeOk(value, kind)) {
    throw new ConfigError(`invalid type for \`${key}\`: ${jsonKind(value)}, expected ${TYPE_NAMES[kind]}`);
  }
}

function expected(keys) {
  const q = keys.map((k) => `\`${k}\``);
  if (q.length === 0) return 'there are no fields';
  if (q.length === 1) return `expected ${q[0]}`;
  if (q.length === 2) return `expected ${q[0]} or ${q[1]}`;
  return `expected one of ${q.join(', ')}`;
}

/**
 * Parses JSON `text` against `fields` ({ key: [type, default] }, type being 'string',
 * 'integer', 'number', 'boolean', 'object' or ['string'] for a list of strings; default
 * REQUIRED for a mandatory key) and returns the settings. Throws ConfigError with messages in
 * the style of the Rust plugins (serde): "unknown field `x`, expected one of `a`, `b`, `c`".
 */
export function parseConfig(text, fields) {
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`not JSON: ${e.message}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError('expected a JSON object');
  for (const key of Object.keys(raw)) {
    if (!Object.hasOwn(fields, key)) throw new ConfigError(`unknown field \`${key}\`, ${expected(Object.keys(fields))}`);
  }
  const settings = {};
  for (const [key, [kind, dflt]] of Object.entries(fields)) {
    if (Object.hasOwn(raw, key)) {
      check(key, raw[key], kind);
      settings[key] = raw[key];
    } else if (dflt === REQUIRED) {
      throw new ConfigError(`missing field \`${key}\``);
    } else {
      settings[key] = structuredCloneJson(dflt);
    }
  }
  return settings;
}

const structuredCloneJson = (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));

// ---- the plugin -------------------------------------------------------------------------

const pass = () => decision(cont());

/**
 * Makes the world's exports from a plugin description: `name`, `version`, `stages` (e.g.
 * ['rcpt', 'data']), `body` ('none', 'headers' or 'full'), `edits` (e.g. ['add-header']),
 * `configFields` (see parseConfig), an optional `validate(settings)` that throws ConfigError,
 * and the stage handlers `onConnect(conn)`, `onEhlo(conn, helo)`, `onMail(conn, sender)`,
 * `onRcpt(conn, envelope, recipient)`, `onData(conn, envelope, message)`. Handlers are called
 * with `this` = the description, which gains `settings()`: the checked configuration.
 */
export function definePlugin(plugin) {
  const p = Object.assign(
    {
      version: '0.1.0', stages: [], body: 'none', edits: [], configFields: {}, validate() {},
      onConnect: pass, onEhlo: pass, onMail: pass, onRcpt: pass, onData: pass,
    },
    plugin,
  );
  p.settings = (text) => {
    try {
      const settings = parseConfig(text ?? host.config(), p.configFields);
      p.validate(settings);
      return settings;
    } catch (e) {
      if (e instanceof ConfigError) throw new ConfigError(`invalid plugin config: ${e.message}`);
      throw e;
    }
  };
  return {
    manifest: () => ({ name: p.name, version: p.version, stages: [...p.stages], body: p.body, edits: [...p.edits] }),
    init(text) {
      try {
        p.settings(text);
      } catch (e) {
        // A thrown string is the `err` of `result<_, string>`; anything else is a bug (a trap).
        if (e instanceof ConfigError) throw e.message;
        throw e;
      }
    },
    onConnect: (conn) => p.onConnect(conn),
    onEhlo: (conn, helo) => p.onEhlo(conn, helo),
    onMail: (conn, sender) => p.onMail(conn, sender),
    onRcpt: (conn, envelope, recipient) => p.onRcpt(conn, envelope, recipient),
    onData: (conn, envelope, message) => p.onData(conn, envelope, message),
  };
}

// Native tests of wasmtp-filter.js and the external tagger, without componentize-js:
// `node --test guest-plugins/js/test/`. The host import `wasmtp:filter/host@0.2.0` is
// resolved to the stub ./host-stub.mjs.
import { register } from 'node:module';
import { test } from 'node:test';
import assert from 'node:assert/strict';

register(
  'data:text/javascript,' +
    encodeURIComponent(`
      export async function resolve(specifier, context, next) {
        if (specifier === 'wasmtp:filter/host@0.2.0') {
          return { url: new URL('./host-stub.mjs', ${JSON.stringify(import.meta.url)}).href, shortCircuit: true };
        }
        return next(specifier, context);
      }`),
);

const host = await import('./host-stub.mjs');
const plugin = await import('../external-tagger/plugin.js');
const wf = await import('../wasmtp-filter.js');

const CONFIG = { internal_domains: ['Corp.Example'], reject_recipients: ['NoReply@corp.example'] };
const addr = (mailbox) => ({ mailbox, params: [] });
const env = (sender) => ({ sender: sender === null ? undefined : addr(sender), recipients: [] });
const msg = (...headers) => ({ headers: headers.map(([name, value]) => ({ name, value })), bodyTruncated: false, size: 100n });
const data = (sender, ...headers) => plugin.onData({}, env(sender), msg(...headers));
const cont = { verdict: { tag: 'continue' }, edits: [] };
const tagged = { tag: 'add-header', val: { name: 'X-External-Sender', value: 'yes' } };

test('manifest', () => {
  assert.deepEqual(plugin.manifest(), {
    name: 'external-tagger-js', version: '0.1.0', stages: ['rcpt', 'data'], body: 'headers',
    edits: ['change-header', 'add-header'],
  });
});

test('init accepts a valid config and throws strings for bad ones', () => {
  assert.equal(plugin.init(JSON.stringify(CONFIG)), undefined);
  assert.equal(plugin.init('{}'), undefined);
  const err = (config) => { try { plugin.init(config); } catch (e) { return e; } return null; };
  assert.equal(err('{"forbidden_extensionz":[]}'),
    'invalid plugin config: unknown field `forbidden_extensionz`, expected one of `internal_domains`, `reject_recipients`, `tag`, `header`');
  assert.equal(err('{"tag":5}'), 'invalid plugin config: invalid type for `tag`: number `5`, expected a string');
  assert.match(err('{"reject_recipients":["a",null]}'), /`reject_recipients\[1\]`: null, expected a string/);
  assert.match(err('{"header":"X Bad"}'), /`header` must be a header field name/);
  assert.match(err('[]'), /expected a JSON object/);
  assert.match(err('{'), /not JSON/);
});

test('rcpt refuses listed recipients case-insensitively', () => {
  host.state.config = JSON.stringify(CONFIG);
  assert.deepEqual(plugin.onRcpt({}, env('a@x'), addr('noreply@CORP.example')), {
    verdict: { tag: 'reject', val: { code: 550, enhanced: '5.7.1', lines: ['recipient refused by policy'] } }, edits: [],
  });
  assert.deepEqual(plugin.onRcpt({}, env('a@x'), addr('bob@corp.example')), cont);
});

test('data tags external mail only', () => {
  host.state.config = JSON.stringify(CONFIG);
  assert.deepEqual(data('jane@corp.EXAMPLE', ['Subject', 'hi']), cont);
  assert.deepEqual(data('eve@evil.example', ['From', 'x'], ['subject', 'hi'], ['Subject', 'two']).edits, [
    { tag: 'change-header', val: { name: 'subject', occurrence: 1, value: '[EXTERNAL] hi' } }, tagged,
  ]);
  assert.deepEqual(data('eve@evil.example', ['Subject', '[EXTERNAL] hi']).edits, [tagged]);
  for (const sender of ['', null, 'postmaster']) {
    assert.deepEqual(data(sender, ['From', 'x']).edits, [
      { tag: 'add-header', val: { name: 'Subject', value: '[EXTERNAL]' } }, tagged,
    ]);
  }
});

test('custom tag and header', () => {
  host.state.config = '{"tag":"[EXT]","header":"X-Outside"}';
  assert.deepEqual(data('jane@corp.example', ['Subject', 'hi']).edits, [
    { tag: 'change-header', val: { name: 'Subject', occurrence: 1, value: '[EXT] hi' } },
    { tag: 'add-header', val: { name: 'X-Outside', value: 'yes' } },
  ]);
});

test('helpers', () => {
  assert.deepEqual(wf.tempfail(451, null, 'a', 'b'), { tag: 'tempfail', val: { code: 451, enhanced: undefined, lines: ['a', 'b'] } });
  assert.throws(() => wf.reject(550, '5.7.1'));
  assert.throws(() => wf.parseConfig('{"x":1}', { a: ['string', ''] }), /unknown field `x`, expected `a`$/);
  assert.throws(() => wf.parseConfig('{"b":1.5}', { a: ['string', ''], b: ['integer', 0] }), /expected an integer/);
  assert.throws(() => wf.parseConfig('{}', { m: ['string', wf.REQUIRED] }), /missing field `m`/);
  wf.warn('careful');
  assert.deepEqual(host.state.logs.at(-1), ['warn', 'careful']);
});

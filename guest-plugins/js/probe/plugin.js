/**
 * probe-js: a test fixture that tries what the sandbox must deny, or throws.
 *
 * Config: {"mode": "http" | "raise"} (required). JavaScript has no file or socket API here, so
 * "file" and "socket" are refused by init. At the data stage "http" tries
 * fetch("http://127.0.0.1:1/") and answers continue with `X-Probe: http denied: <why>` when it
 * throws (or `fetch` is missing) or `X-Probe: http ALLOWED`; "raise" throws an Error.
 *
 * Built with `--disable http` (scripts/build-polyglot), the component has no wasi:http import at
 * all and `fetch`, though defined, traps (`unreachable`, nothing printed) when called: the
 * "http" mode then ends in a trap, not in a header.
 */

import * as wf from '../wasmtp-filter.js';

const MODES = ['http', 'raise'];

function why(e) {
  const text = e instanceof Error ? (e.message ? `${e.name}: ${e.message}` : e.name) : String(e);
  return text.replace(/[^\x20-\x7e]/g, ' ').slice(0, 100);
}

export const { manifest, init, onConnect, onEhlo, onMail, onRcpt, onData } = wf.definePlugin({
  name: 'probe-js',
  version: '0.1.0',
  stages: ['data'],
  body: 'none',
  edits: ['add-header'],
  configFields: { mode: ['string', wf.REQUIRED] },

  validate({ mode }) {
    if (mode === 'file' || mode === 'socket') {
      throw new wf.ConfigError(`mode \`${mode}\` is not supported in JavaScript (no ${mode} API), expected \`http\` or \`raise\``);
    }
    if (!MODES.includes(mode)) {
      throw new wf.ConfigError(`unknown variant \`${mode}\` for \`mode\`, expected \`http\` or \`raise\``);
    }
  },

  async onData(conn, envelope, message) {
    const { mode } = this.settings();
    if (mode === 'raise') throw new Error('probe exception: boom');
    let value;
    try {
      if (typeof fetch !== 'function') throw new ReferenceError('fetch is not defined');
      const response = await fetch('http://127.0.0.1:1/');
      await response.arrayBuffer();
      value = "http ALLOWED";
    } catch (e) {
      value = `http denied: ${why(e)}`;
    }
    return wf.decision(wf.cont(), [wf.addHeader('X-Probe', value)]);
  },
});

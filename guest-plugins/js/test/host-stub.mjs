// A stand-in for the host interface `wasmtp:filter/host@0.2.0`, for the native tests.
export const state = { config: '{}', logs: [], notes: new Map() };
export const log = (level, message) => state.logs.push([level, message]);
export const config = () => state.config;
export const notesGet = (key) => state.notes.get(key);
export const notesSet = (key, value) => state.notes.set(key, value);
export const kvGet = () => undefined;
export const kvSet = () => {};
export const kvIncr = (key, delta) => delta;

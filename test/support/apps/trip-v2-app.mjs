// A test app for `dw status --app`: saga `trip` in version 2 only, the layout of
// test/integration/saga-versioning.test.ts's v2 (the code does not matter to `dw status`).
import { defineApp, defineSaga } from '../../../dist/index.js';

const pair = [() => {}, () => {}];

export default defineApp({
  name: 'versioning',
  sagas: [defineSaga('trip', { version: 2 }).step('a', pair).step('m', pair).step('b', pair).step('d', pair)],
});

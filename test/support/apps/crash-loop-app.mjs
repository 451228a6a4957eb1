// A test app for `dw worker --app`: `Crash` kills the process each time it is handled (a crash loop).
import { z } from 'zod';
import { defineApp, defineHandler } from '../../../dist/index.js';

export default defineApp({
  name: 'test',
  handlers: [
    defineHandler('Crash', z.object({}), () => {
      process.kill(process.pid, 'SIGKILL');
    }),
  ],
});

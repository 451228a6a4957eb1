import { afterAll } from 'vitest';

/**
 * Fails the file when it leaves network handles open (a worker, relay, pool or client it forgot to
 * close). Registered from setupFiles, so it runs after the file's own afterAll hooks.
 */
afterAll(async () => {
  const open = () =>
    process
      .getActiveResourcesInfo()
      .filter((r) => r === 'TCPSocketWrap' || r === 'TCPWrap' || r === 'TCPServerWrap');
  const deadline = Date.now() + 5000;
  while (open().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const left = open();
  if (left.length > 0)
    throw new Error(`the test file left ${left.length} network handle(s) open: ${left.join(', ')}`);
});

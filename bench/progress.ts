/** One progress line on stderr, rewritten in place on a terminal and appended otherwise. */
const tty = process.stderr.isTTY;
const started = Date.now();

export function progress(message: string): void {
  const elapsed = ((Date.now() - started) / 1000).toFixed(0).padStart(4);
  if (tty) process.stderr.write(`\r\x1b[2K[bench ${elapsed}s] ${message}`);
  else process.stderr.write(`[bench ${elapsed}s] ${message}\n`);
}

export function progressDone(): void {
  if (tty) process.stderr.write('\n');
}

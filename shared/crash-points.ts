/**
 * Test-only fault injection for the reliability suite. When DW_CRASH_POINTS lists a point's name,
 * reaching that point kills the process with SIGKILL (with probability DW_CRASH_PROBABILITY,
 * default 1, or the point's own as in `saga:during-compensation=0.3`), exactly at the risky
 * instant. Unset in production, where this is a no-op.
 */
const defaultProbability = Number(process.env.DW_CRASH_PROBABILITY ?? '1');
const points = new Map(
  (process.env.DW_CRASH_POINTS ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => {
      const [name = '', probability] = p.split('=');
      return [name, probability === undefined ? defaultProbability : Number(probability)] as const;
    }),
);

export type CrashPoint =
  | 'worker:after-commit-before-ack'
  | 'worker:batch-after-commit-before-ack'
  | 'worker:after-dead-letter-before-ack'
  | 'relay:after-add-before-mark'
  | 'relay:after-add-before-seq'
  | 'saga:after-step-commit'
  /** Between two steps of a batch, before its commit. */
  | 'saga:inside-batch'
  /** After a batch of steps committed, before its jobs are acked and its eager steps run. */
  | 'saga:after-batch-commit'
  | 'saga:during-compensation';

export function crashPoint(name: CrashPoint): void {
  const probability = points.get(name);
  if (probability === undefined) return;
  if (Math.random() < probability) {
    process.stderr.write(`crash point ${name}: SIGKILL\n`);
    process.kill(process.pid, 'SIGKILL');
  }
}

const hooks = new Map<CrashPoint, () => Promise<void>>();

/**
 * Test-only, in process: runs `hook` when a component reaches `name` (e.g. to make Redis lose its
 * data exactly there); `undefined` removes it. Unused in production.
 */
export function setFaultHook(name: CrashPoint, hook: (() => Promise<void>) | undefined): void {
  if (hook) hooks.set(name, hook);
  else hooks.delete(name);
}

/** The hook set for `name`, if any; callers await it only when set, so production adds no tick. */
export function faultHook(name: CrashPoint): (() => Promise<void>) | undefined {
  return hooks.get(name);
}

import { AsyncLocalStorage } from 'node:async_hooks';
import type { Clock } from '../shared/time.js';

/** One piece of work the harness runs: a message delivery or a saga job. */
export interface Task {
  /** Virtual timers (step timeouts) this task set that have neither fired nor been cleared. */
  timers: number;
  done: boolean;
}

interface Timer {
  dueAt: number;
  seq: number;
  fn: () => void;
  task: Task | undefined;
}

/**
 * The harness's clock: the system time plus an offset that only `advance` moves, so virtual time
 * never runs behind the real one (jobs written with a real due time are due in virtual time too).
 * Its timers (the step runner's step timeouts) fire only when the time is moved past them.
 */
export class VirtualClock implements Clock {
  private offset = 0;
  private seq = 0;
  private readonly timers = new Map<number, Timer>();
  /** The task whose code runs now, so that a timer it sets marks it as waiting for the time to move. */
  readonly tasks = new AsyncLocalStorage<Task>();

  constructor(private readonly onChange: () => void) {}

  now(): number {
    return Date.now() + this.offset;
  }

  /** Moves the time forward to `time` (never back). */
  moveTo(time: number): void {
    this.offset = Math.max(this.offset, time - Date.now());
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const seq = ++this.seq;
    const task = this.tasks.getStore();
    if (task) task.timers++;
    this.timers.set(seq, { dueAt: this.now() + Math.max(0, ms), seq, fn, task });
    this.onChange();
    return seq;
  }

  clearTimeout(handle: unknown): void {
    const timer = this.timers.get(handle as number);
    if (!timer) return;
    this.timers.delete(timer.seq);
    if (timer.task) timer.task.timers--;
    this.onChange();
  }

  /** The earliest timer due at or before `time`. */
  nextTimer(time: number): Timer | undefined {
    let next: Timer | undefined;
    for (const timer of this.timers.values()) {
      if (timer.dueAt <= time && (!next || timer.dueAt < next.dueAt)) next = timer;
    }
    return next;
  }

  fire(timer: Timer): void {
    if (!this.timers.delete(timer.seq)) return;
    if (timer.task) timer.task.timers--;
    timer.fn();
    this.onChange();
  }

  /** Fires every timer (closing: the tasks waiting on them end). */
  fireAll(): void {
    for (const timer of [...this.timers.values()]) this.fire(timer);
  }
}

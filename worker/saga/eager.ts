import type { Knex } from 'knex';
import pLimit from 'p-limit';
import type { Logger } from '../../shared/logger.js';
import { endLeases, markLeasedDelivered, type OutboxMessage } from '../../shared/outbox.js';
import { type SagaStepJob, sagaStepType } from '../../shared/saga/jobs.js';
import { settledWithin } from '../../shared/time.js';

export interface EagerStepsOptions {
  /** How long a leased step is held back from the relay. */
  leaseMs: number;
  /** Eager steps run at once. */
  concurrency: number;
  log: Logger;
}

/**
 * Eager saga steps: the process that commits a step (or starts a saga) runs the next steps itself
 * right after the commit, instead of waiting for the relay and BullMQ to hand them to some worker.
 * Their outbox rows still commit with the step, leased (held back from the relay); once run, they
 * are marked delivered. If the process dies first, the lease runs out and the relay delivers them
 * as usual; the step records absorb any repeat. A saga thus moves at the speed of its transactions
 * while keeping the outbox as its durable record.
 */
export class EagerSteps {
  private readonly limit;
  private stopping = false;
  private readonly running = new Set<Promise<void>>();
  private released: string[] = [];
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly knex: Knex,
    private readonly options: EagerStepsOptions,
    /**
     * `headers`: the outbox message's, with the context of the span that scheduled the step;
     * `leased`: the step's outbox row, `marked` when the step's own transaction marked it delivered.
     */
    private readonly runStep: (
      job: SagaStepJob,
      headers: Record<string, string>,
      leased: { messageId: string; marked?: boolean },
    ) => Promise<unknown>,
  ) {
    this.limit = pLimit(options.concurrency);
  }

  /**
   * Leases the undelayed step messages among `messages` to this process (before they are written),
   * unless it is stopping or already has a backlog: then the relay takes them as usual.
   */
  lease(messages: readonly OutboxMessage[]): OutboxMessage[] {
    if (this.stopping || this.limit.pendingCount >= this.options.concurrency * 4) return [...messages];
    return messages.map((m) =>
      m.type === sagaStepType && !m.options?.delay ? { ...m, leaseMs: this.options.leaseMs } : m,
    );
  }

  /** After the commit that wrote them: runs the leased messages here. */
  run(messages: readonly OutboxMessage[]): void {
    for (const message of messages) {
      if (!message.leaseMs) continue;
      const task = this.limit(() => this.runOne(message));
      const tracked: Promise<void> = task.finally(() => this.running.delete(tracked));
      this.running.add(tracked);
    }
  }

  /** Lets started steps finish (up to `graceMs`); steps not started go to the relay at once. */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    await settledWithin(Promise.all([...this.running]), graceMs);
    // Bounded too: a database that stopped answering must not hold the stop (a lost mark costs a repeat).
    await settledWithin(this.flush(), 1000);
  }

  private async runOne(message: OutboxMessage): Promise<void> {
    if (this.stopping) {
      await endLeases(this.knex, [message.messageId]).catch(() => {});
      return;
    }
    try {
      const leased: { messageId: string; marked?: boolean } = { messageId: message.messageId };
      const outcome = await this.runStep(message.payload as SagaStepJob, message.headers, leased);
      // Not due yet (cannot happen for an undelayed message; the relay would add its delay), or a
      // saga version this process lacks: the relay hands it to BullMQ, for a worker that has it.
      if (outcome === 'early' || outcome === 'unknown-version')
        await endLeases(this.knex, [message.messageId]);
      // A completed step's own transaction marked its row; the other outcomes wrote no record of it.
      else if (!leased.marked) this.release(message.messageId);
    } catch (error) {
      // The relay takes over at once instead of after the lease.
      this.options.log.warn({ err: error, messageId: message.messageId }, 'eager saga step failed to run');
      await endLeases(this.knex, [message.messageId]).catch(() => {});
    }
  }

  /** Marks run messages delivered in batches: off the saga's path, and a lost mark only costs a repeat. */
  private release(messageId: string): void {
    this.released.push(messageId);
    if (this.released.length >= 200) void this.flush();
    else this.flushTimer ??= setTimeout(() => void this.flush(), 20);
  }

  private async flush(): Promise<void> {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const ids = this.released;
    this.released = [];
    await markLeasedDelivered(this.knex, ids).catch((error) =>
      this.options.log.debug(
        { err: error },
        'could not mark eager steps delivered; the relay will repeat them',
      ),
    );
  }
}

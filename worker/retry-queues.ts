import { publishMandatory, type ResilientAmqpConnection } from '../shared/amqp.js';
import { retryQueueName } from '../shared/defaults.js';
import { UnroutableError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { declareQueue, type QueueType, resolveQueueType, retryQueueOptions } from '../shared/queue-type.js';

/**
 * Delayed retries without a broker plugin: one queue per delay tier (`<queue>.retry.<ms>ms`), with
 * no consumer; a copy published there with a per-message expiration is dead-lettered back to the
 * work queue through the default exchange when it expires. RabbitMQ expires messages at the head
 * of a queue only, so one queue per tier keeps delays in order; the jitter within a tier (±10% by
 * default) can hold a message back behind its predecessor by at most that spread.
 *
 * A retry queue has the work queue's type unless asked otherwise; when no type was asked for, a
 * retry queue that exists keeps its own (see resolveQueueType). Quorum retry queues dead-letter at
 * least once (retryQueueOptions).
 */
export class RetryQueues {
  private readonly declared = new Set<string>();

  constructor(
    private readonly amqp: ResilientAmqpConnection,
    private readonly workQueue: string,
    private readonly queueType: { requested: QueueType | undefined; workQueue: QueueType; log?: Logger },
  ) {
    amqp.on('disconnected', () => this.declared.clear());
  }

  queueName(tierMs: number): string {
    return retryQueueName(this.workQueue, tierMs);
  }

  /**
   * Publishes `content` to the tier's retry queue, to come back after `delayMs`; resolves when
   * confirmed. Published as mandatory: the default exchange drops a message for a queue that does
   * not exist and still confirms it, which would lose the message once the original is acked. A
   * queue deleted after we declared it rejects with UnroutableError and is declared on the next attempt.
   */
  async schedule(
    tierMs: number,
    delayMs: number,
    content: Buffer,
    properties: Parameters<ResilientAmqpConnection['publish']>[3] & { messageId: string },
  ): Promise<void> {
    const channel = await this.amqp.confirmChannel();
    const name = this.queueName(tierMs);
    if (!this.declared.has(name)) {
      const { requested, workQueue, log } = this.queueType;
      const connection = this.amqp.current;
      const optionsFor = (type: QueueType) => retryQueueOptions(type, this.workQueue);
      const type = connection
        ? await resolveQueueType(connection, name, requested, optionsFor, { fallback: workQueue, log })
        : (requested ?? workQueue);
      await declareQueue(channel, name, type, optionsFor, { explicit: requested !== undefined, connection });
      this.declared.add(name);
    }
    try {
      await publishMandatory(channel, '', name, content, { ...properties, expiration: String(delayMs) });
    } catch (error) {
      if (error instanceof UnroutableError) this.declared.delete(name);
      throw error;
    }
  }
}

import type { Message } from 'amqplib';
import type { ResilientAmqpConnection } from '../shared/amqp.js';
import { publishConfirmed } from '../shared/amqp.js';
import { retryQueueName } from '../shared/defaults.js';
import { DurableWorkerError } from '../shared/errors.js';

/** The retry queue vanished (deleted by hand, or by a broker reset) after we declared it. */
export class RetryQueueMissingError extends DurableWorkerError {
  override readonly code = 'DW_RETRY_QUEUE_MISSING';
  constructor(readonly queue: string) {
    super(`retry queue ${queue} does not exist; it is declared again on the next attempt`);
  }
}

/**
 * Delayed retries without a broker plugin: one queue per delay tier (`<queue>.retry.<ms>ms`), with
 * no consumer; a copy published there with a per-message expiration is dead-lettered back to the
 * work queue through the default exchange when it expires. RabbitMQ expires messages at the head
 * of a queue only, so one queue per tier keeps delays in order; the jitter within a tier (±10% by
 * default) can hold a message back behind its predecessor by at most that spread.
 */
export class RetryQueues {
  private readonly declared = new Set<string>();

  constructor(
    private readonly amqp: ResilientAmqpConnection,
    private readonly workQueue: string,
  ) {
    amqp.on('disconnected', () => this.declared.clear());
  }

  queueName(tierMs: number): string {
    return retryQueueName(this.workQueue, tierMs);
  }

  /**
   * Publishes `content` to the tier's retry queue, to come back after `delayMs`; resolves when
   * confirmed. Published as mandatory: the default exchange drops a message for a queue that does
   * not exist and still confirms it, which would lose the message once the original is acked.
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
      await channel.assertQueue(name, {
        durable: true,
        arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': this.workQueue },
      });
      this.declared.add(name);
    }
    let returned = false;
    const onReturn = (msg: Message) => {
      if (msg.fields.routingKey === name && msg.properties.messageId === properties.messageId)
        returned = true;
    };
    // The broker sends a return before the confirm of the same message.
    channel.on('return', onReturn);
    try {
      await publishConfirmed(channel, '', name, content, {
        ...properties,
        expiration: String(delayMs),
        mandatory: true,
      });
    } finally {
      channel.removeListener('return', onReturn);
    }
    if (returned) {
      this.declared.delete(name);
      throw new RetryQueueMissingError(name);
    }
  }
}

import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import pLimit from 'p-limit';
import type { ResilientAmqpConnection } from '../shared/amqp.js';
import { readIncoming } from '../shared/envelope.js';
import type { Logger } from '../shared/logger.js';
import { messagesTotal } from '../shared/metrics.js';
import { sleep } from '../shared/time.js';
import { declareTopology, type Topology } from '../shared/topology.js';
import type { MessageProcessor } from './message-processor.js';

export interface ConsumerOptions {
  topology: Topology;
  concurrency: number;
  prefetch: number;
}

/**
 * Declares the topology and feeds deliveries to the processor, at most `concurrency` at once, with
 * manual acks. After a reconnection it declares and consumes again; deliveries of the lost channel
 * are not acked (the broker redelivers them, the inbox absorbs the repeat).
 */
export class Consumer {
  private channel: Channel | undefined;
  private consumerTag: string | undefined;
  private stopping = false;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly limit;

  constructor(
    private readonly amqp: ResilientAmqpConnection,
    private readonly options: ConsumerOptions,
    private readonly processor: MessageProcessor,
    private readonly log: Logger,
  ) {
    this.limit = pLimit(options.concurrency);
  }

  get consuming(): boolean {
    return this.channel !== undefined && !this.stopping;
  }

  async start(): Promise<void> {
    await this.amqp.onConnected((connection) => this.setup(connection));
  }

  /** Stops taking messages, lets started ones finish for up to `graceMs`; true if all finished. */
  async stop(graceMs: number): Promise<boolean> {
    this.stopping = true;
    const channel = this.channel;
    if (channel && this.consumerTag) await channel.cancel(this.consumerTag).catch(() => {});
    const drained = Promise.all([...this.inFlight]).then(() => true);
    return Promise.race([drained, sleep(graceMs).then(() => false)]);
  }

  private async setup(connection: ChannelModel): Promise<void> {
    if (this.stopping) return;
    const { topology, prefetch } = this.options;
    const channel = await connection.createChannel();
    channel.on('error', (error) => this.log.warn({ err: error }, 'AMQP channel error'));
    channel.on('close', () => {
      if (this.channel === channel) this.channel = undefined;
    });
    await channel.prefetch(prefetch);
    await declareTopology(channel, topology);
    this.channel = channel;
    const { consumerTag } = await channel.consume(
      topology.queue,
      (msg) => msg && this.onDelivery(channel, msg),
      {
        noAck: false,
      },
    );
    this.consumerTag = consumerTag;
    this.log.info({ ...topology, prefetch }, 'consuming');
  }

  private onDelivery(channel: Channel, msg: ConsumeMessage): void {
    const work = this.limit(async () => {
      if (this.stopping) {
        settle(channel, msg, 'requeue');
        return;
      }
      let outcome: Awaited<ReturnType<MessageProcessor['process']>>;
      try {
        outcome = await this.processor.process(readIncoming(msg));
      } catch (error) {
        // A bug or an unexpected failure outside the handler: never lose the message, never spin.
        this.log.error(
          { err: error, messageId: msg.properties.messageId, type: msg.properties.type },
          'unexpected failure while processing; the message will be redelivered',
        );
        messagesTotal.inc({ outcome: 'requeue' });
        await sleep(1000);
        outcome = 'requeue';
      }
      settle(channel, msg, outcome);
    });
    const tracked: Promise<void> = work.finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }
}

function settle(channel: Channel, msg: ConsumeMessage, outcome: string): void {
  try {
    if (outcome === 'requeue') channel.nack(msg, false, true);
    else channel.ack(msg);
  } catch {
    // The channel is gone; the broker redelivers the message on the next connection.
  }
}

import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import type { OutgoingMessage } from '../shared/envelope.js';
import { publishOptions } from '../shared/envelope.js';
import { publishMessages } from '../shared/publisher.js';
import type { QueueType } from '../shared/queue-type.js';
import { appTopology, declareTopology } from '../shared/topology.js';
import { app } from './app.js';

/** Publishes bench messages the way `dw publish` does (persistent, confirmed), from the bench process. */
export class BenchPublisher {
  private constructor(
    private readonly connection: ChannelModel,
    private readonly channel: ConfirmChannel,
    private readonly exchange: string,
  ) {}

  /** Connects and declares the bench app's exchange and queue, so messages queue up before a worker runs. */
  static async open(amqpUrl: string, exchange: string, queueType: QueueType): Promise<BenchPublisher> {
    const connection = await amqp.connect(amqpUrl, { clientProperties: { connection_name: 'dw bench' } });
    connection.on('error', () => {});
    const channel = await connection.createConfirmChannel();
    // Failures surface as rejected publishes and confirms; the events must not crash the run.
    channel.on('error', () => {});
    await declareTopology(
      channel,
      appTopology(app, exchange, undefined, { type: queueType, explicit: true }),
    );
    return new BenchPublisher(connection, channel, exchange);
  }

  /** Publishes all of them and waits for every confirm. */
  async publishAll(messages: Iterable<OutgoingMessage>): Promise<void> {
    await publishMessages(this.channel, this.exchange, messages);
  }

  /** Publishes one message without waiting for its confirm (paced, light-load publishing). */
  publishNow(message: OutgoingMessage): Promise<void> {
    return new Promise((resolve, reject) => {
      this.channel.publish(
        this.exchange,
        message.type,
        Buffer.from(JSON.stringify(message.payload)),
        publishOptions(message),
        (error) => (error ? reject(error) : resolve()),
      );
    });
  }

  async close(): Promise<void> {
    await this.channel.close().catch(() => {});
    await this.connection.close().catch(() => {});
  }
}

/** A payload note of a realistic size (about 100 bytes), the same for the worker and its baseline. */
export const NOTE = 'x'.repeat(96);

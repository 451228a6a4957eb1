import { EventEmitter } from 'node:events';
import amqp, { type ChannelModel, type ConfirmChannel, type Options } from 'amqplib';
import { redactUrl } from './config.js';
import { ConnectionClosingError, PublishNotConfirmedError, ServiceUnavailableError } from './errors.js';
import { type Logger, silentLogger } from './logger.js';
import { sleep } from './time.js';

export interface AmqpConnectionOptions {
  /** Shown in the RabbitMQ management UI. */
  connectionName?: string;
  logger?: Logger;
  /** Longest pause between reconnection attempts in ms. Default 5000. */
  maxReconnectDelayMs?: number;
}

/**
 * One AMQP connection that comes back by itself. `onConnected` callbacks (topology, consumers) run
 * after every (re)connection; a lost connection is retried with capped exponential backoff and
 * logged once per outage, not once per attempt.
 */
export class ResilientAmqpConnection extends EventEmitter {
  private connection: ChannelModel | undefined;
  private publishChannel: ConfirmChannel | undefined;
  private readonly setups: Array<(connection: ChannelModel) => Promise<void>> = [];
  private closing = false;
  private reconnecting: Promise<void> | undefined;
  private readonly log: Logger;

  constructor(
    readonly url: string,
    private readonly options: AmqpConnectionOptions = {},
  ) {
    super();
    this.log = options.logger ?? silentLogger;
  }

  get connected(): boolean {
    return this.connection !== undefined;
  }

  /** First connection: fails with a message naming RabbitMQ and its URL. */
  async start(): Promise<void> {
    try {
      await this.open();
    } catch (error) {
      throw new ServiceUnavailableError('RabbitMQ', redactUrl(this.url), error);
    }
  }

  /** Registers a setup that runs now (if connected) and after each reconnection. */
  async onConnected(setup: (connection: ChannelModel) => Promise<void>): Promise<void> {
    this.setups.push(setup);
    if (this.connection) await setup(this.connection);
  }

  /** A confirm channel for publishing; waits for the connection to come back if it is down. */
  async confirmChannel(): Promise<ConfirmChannel> {
    for (;;) {
      if (this.closing)
        throw new ConnectionClosingError('the AMQP connection is closing (the process is stopping)');
      if (this.publishChannel) return this.publishChannel;
      if (this.connection) {
        const channel = await this.connection.createConfirmChannel();
        channel.setMaxListeners(0);
        channel.on('error', () => {});
        channel.on('close', () => {
          if (this.publishChannel === channel) this.publishChannel = undefined;
        });
        this.publishChannel = channel;
        return channel;
      }
      await new Promise<void>((resolve) => this.once('connected', resolve));
    }
  }

  /** Publishes and resolves once the broker confirmed the message (rejects on nack or lost channel). */
  async publish(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options: Options.Publish,
  ): Promise<void> {
    const channel = await this.confirmChannel();
    await publishConfirmed(channel, exchange, routingKey, content, options);
  }

  async close(): Promise<void> {
    this.closing = true;
    const connection = this.connection;
    this.connection = undefined;
    this.publishChannel = undefined;
    if (connection) await connection.close().catch(() => {});
  }

  private async open(): Promise<void> {
    const connection = await amqp.connect(this.url, {
      clientProperties: { connection_name: this.options.connectionName ?? 'durable-worker' },
    });
    connection.on('error', (error) => this.log.debug({ err: error }, 'AMQP connection error'));
    connection.on('close', () => {
      if (this.connection !== connection) return;
      this.connection = undefined;
      this.publishChannel = undefined;
      this.emit('disconnected');
      if (!this.closing) void this.reconnect();
    });
    this.connection = connection;
    for (const setup of this.setups) await setup(connection);
    this.emit('connected');
  }

  private reconnect(): Promise<void> {
    this.reconnecting ??= (async () => {
      const maxDelay = this.options.maxReconnectDelayMs ?? 5000;
      this.log.warn({ url: redactUrl(this.url) }, 'lost the RabbitMQ connection; reconnecting');
      for (let attempt = 0; !this.closing; attempt++) {
        await sleep(Math.min(maxDelay, 100 * 2 ** attempt));
        if (this.closing) return;
        try {
          await this.open();
          this.log.info({ attempts: attempt + 1 }, 'RabbitMQ connection restored');
          return;
        } catch (error) {
          if (attempt === 0) this.log.warn({ err: error }, 'RabbitMQ still unreachable; retrying');
          const stale = this.connection;
          this.connection = undefined;
          await stale?.close().catch(() => {});
        }
      }
    })().finally(() => {
      this.reconnecting = undefined;
    });
    return this.reconnecting;
  }
}

export function publishConfirmed(
  channel: ConfirmChannel,
  exchange: string,
  routingKey: string,
  content: Buffer,
  options: Options.Publish,
): Promise<void> {
  return new Promise((resolve, reject) => {
    // The broker says why it closed the channel (a missing exchange: 404 NOT_FOUND) in 'error'.
    let brokerError: Error | undefined;
    const onError = (error: Error) => {
      brokerError = error;
    };
    const onClose = () => {
      cleanup();
      reject(
        brokerError ??
          new PublishNotConfirmedError('the AMQP channel closed before the broker confirmed the publish'),
      );
    };
    const cleanup = () => {
      channel.removeListener('close', onClose);
      channel.removeListener('error', onError);
    };
    channel.on('error', onError);
    channel.once('close', onClose);
    try {
      channel.publish(exchange, routingKey, content, options, (error) => {
        if (!error) {
          cleanup();
          resolve();
        } else if (!brokerError) {
          // Let a pending 'error' event name the cause before we give up.
          setImmediate(() => {
            cleanup();
            reject(
              brokerError ??
                (error instanceof Error
                  ? error
                  : new PublishNotConfirmedError('the broker refused (nacked) the publish')),
            );
          });
        } else {
          cleanup();
          reject(brokerError);
        }
      });
    } catch (error) {
      cleanup();
      reject(error);
    }
  });
}

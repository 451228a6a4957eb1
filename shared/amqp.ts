import { EventEmitter } from 'node:events';
import amqp, { type ChannelModel, type ConfirmChannel, type Message, type Options } from 'amqplib';
import { backoffMs } from './backoff.js';
import { redactUrl } from './config.js';
import {
  ConnectionClosingError,
  PublishNotConfirmedError,
  ServiceUnavailableError,
  UnroutableError,
} from './errors.js';
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
  /** The publish channel being opened: concurrent first callers share it rather than each opening one. */
  private openingPublishChannel: Promise<ConfirmChannel> | undefined;
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

  /** The live connection, if any (a consumer tells a lost channel from a lost connection by it). */
  get current(): ChannelModel | undefined {
    return this.connection;
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
      const connection = this.connection;
      if (connection) {
        this.openingPublishChannel ??= this.openPublishChannel(connection).finally(() => {
          this.openingPublishChannel = undefined;
        });
        return this.openingPublishChannel;
      }
      await new Promise<void>((resolve) => this.once('connected', resolve));
    }
  }

  private async openPublishChannel(connection: ChannelModel): Promise<ConfirmChannel> {
    const channel = await connection.createConfirmChannel();
    channel.setMaxListeners(0);
    channel.on('error', () => {});
    channel.on('close', () => {
      if (this.publishChannel === channel) this.publishChannel = undefined;
    });
    this.publishChannel = channel;
    return channel;
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

  /**
   * Publishes as mandatory and resolves once confirmed; rejects with UnroutableError when the broker
   * returned the message because no queue is bound for it (see publishMandatory).
   */
  async publishMandatory(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options: MandatoryPublishOptions,
  ): Promise<void> {
    const channel = await this.confirmChannel();
    await publishMandatory(channel, exchange, routingKey, content, options);
  }

  async close(): Promise<void> {
    this.closing = true;
    const connection = this.connection;
    this.connection = undefined;
    this.publishChannel = undefined;
    this.openingPublishChannel = undefined;
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
        await sleep(backoffMs(attempt, { baseMs: 100, maxMs: maxDelay }));
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
  return sendConfirmed(channel, exchange, routingKey, content, options).confirmed;
}

/** Publishes; `confirmed` settles like publishConfirmed, `writable` is false when the channel asks to wait for 'drain'. */
function sendConfirmed(
  channel: ConfirmChannel,
  exchange: string,
  routingKey: string,
  content: Buffer,
  options: Options.Publish,
): { confirmed: Promise<void>; writable: boolean } {
  let writable = true;
  const confirmed = new Promise<void>((resolve, reject) => {
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
      writable = channel.publish(exchange, routingKey, content, options, (error) => {
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
  return { confirmed, writable };
}

/** A mandatory publish carries a message id: the broker's return is matched to its publish by it. */
export type MandatoryPublishOptions = Options.Publish & { messageId: string };

/**
 * Mandatory publishes awaiting their confirm on one channel, by exchange, routing key and message
 * id; each key holds a FIFO, as the broker returns and confirms in publish order.
 */
interface ReturnTracker {
  pending: Map<string, Array<{ returned: boolean }>>;
}
const trackers = new WeakMap<ConfirmChannel, ReturnTracker>();

const returnKey = (exchange: string, routingKey: string, messageId: string | undefined) =>
  `${exchange}\u0000${routingKey}\u0000${messageId ?? ''}`;

function returnTracker(channel: ConfirmChannel): ReturnTracker {
  let tracker = trackers.get(channel);
  if (!tracker) {
    const created: ReturnTracker = { pending: new Map() };
    channel.on('return', (msg: Message) => {
      const key = returnKey(msg.fields.exchange, msg.fields.routingKey, msg.properties.messageId);
      const waiting = created.pending.get(key)?.find((p) => !p.returned);
      if (waiting) waiting.returned = true;
    });
    trackers.set(channel, created);
    tracker = created;
  }
  return tracker;
}

/**
 * The one way durable-worker publishes something that must reach a queue: as mandatory, waiting
 * for the confirm. Without `mandatory` the broker confirms and silently drops a message no queue is
 * bound for (a topic nobody binds, or, through the default exchange, a queue that does not exist);
 * with it the broker sends a return before the confirm, which makes `confirmed` reject with
 * UnroutableError. `writable` is false when the caller should wait for the channel's 'drain'.
 */
export function sendMandatory(
  channel: ConfirmChannel,
  exchange: string,
  routingKey: string,
  content: Buffer,
  options: MandatoryPublishOptions,
): { confirmed: Promise<void>; writable: boolean } {
  const tracker = returnTracker(channel);
  const key = returnKey(exchange, routingKey, options.messageId);
  const entry = { returned: false };
  const list = tracker.pending.get(key) ?? [];
  list.push(entry);
  tracker.pending.set(key, list);
  const forget = () => {
    const at = list.indexOf(entry);
    if (at >= 0) list.splice(at, 1);
    if (list.length === 0 && tracker.pending.get(key) === list) tracker.pending.delete(key);
  };
  const sent = sendConfirmed(channel, exchange, routingKey, content, { ...options, mandatory: true });
  const confirmed = sent.confirmed.then(
    () => {
      forget();
      if (entry.returned) throw new UnroutableError(exchange, routingKey);
    },
    (error: unknown) => {
      forget();
      throw error;
    },
  );
  return { confirmed, writable: sent.writable };
}

/** sendMandatory, resolved once confirmed (rejects with UnroutableError when returned). */
export function publishMandatory(
  channel: ConfirmChannel,
  exchange: string,
  routingKey: string,
  content: Buffer,
  options: MandatoryPublishOptions,
): Promise<void> {
  return sendMandatory(channel, exchange, routingKey, content, options).confirmed;
}

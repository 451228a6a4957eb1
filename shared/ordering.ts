import amqp, { type Channel, type ConsumeMessage } from 'amqplib';
import { maxOrderingKeyBytes, queueDefaults } from './defaults.js';
import { Headers } from './envelope.js';
import {
  InvalidOrderingKeyError,
  OrderedPartitionsChangedError,
  OrderingPluginMissingError,
} from './errors.js';
import type { Logger } from './logger.js';
import { unorderedKeyedTotal } from './metrics.js';
import { type ChannelSource, declareConsumedQueue } from './queue-type.js';
import { isStorableText } from './storable.js';
import type { Topology } from './topology.js';

/**
 * Ordered processing by key, built from what RabbitMQ offers (README, "Ordered processing by key"):
 *
 *   <exchange>.ordered            topic exchange keyed messages are published to (routing key = type)
 *     → <queue>.ordered           consistent-hash exchange per work queue, hashing the x-ordering-key
 *                                 header, bound from the former once per message type
 *       → <queue>.ordered.<i>     N partition queues with single active consumer
 *
 * One key always hashes to one partition, and a partition has one active consumer among all
 * workers (the broker fails over to another when it goes), so the worker holding a partition sees
 * each key's messages in publish order and runs them one after the other (worker/ordered-consumer.ts).
 */

/** The topic exchange keyed messages are published to. */
export function orderedExchangeName(exchange: string): string {
  return `${exchange}.ordered`;
}

/** The consistent-hash exchange that spreads a work queue's keyed messages over its partitions. */
export function orderedHashExchangeName(workQueue: string): string {
  return `${workQueue}.ordered`;
}

export function partitionQueueName(workQueue: string, partition: number): string {
  return `${workQueue}.ordered.${partition}`;
}

/** Arguments of a partition queue; `base` carries the queue type and the like of the work queue. */
export function partitionQueueArguments(base: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...base, 'x-single-active-consumer': true };
}

/**
 * Why `key` cannot be an ordering key, or null. Refused where a key is given (CLI, ctx.publish):
 * it travels in an AMQP header (one frame: a megabyte key would close the connection) and is stored
 * in the outbox and the dead letters (PostgreSQL text: no NUL, well-formed UTF-16).
 */
export function orderingKeyProblem(key: unknown): string | null {
  if (typeof key !== 'string') return 'an ordering key must be a string';
  if (key.length === 0) return 'an ordering key must not be empty';
  const bytes = Buffer.byteLength(key);
  if (bytes > maxOrderingKeyBytes)
    return `an ordering key is at most ${maxOrderingKeyBytes} bytes of UTF-8; this one has ${bytes}`;
  if (!isStorableText(key)) return 'an ordering key must not contain NUL or unpaired surrogates';
  return null;
}

/** Throws InvalidOrderingKeyError when `key` cannot be an ordering key. */
export function assertOrderingKey(key: unknown): string {
  const problem = orderingKeyProblem(key);
  if (problem) throw new InvalidOrderingKeyError(`${problem} (got ${describeKey(key)})`);
  return key as string;
}

function describeKey(key: unknown): string {
  if (typeof key !== 'string') return typeof key;
  return JSON.stringify(key.length > 40 ? `${key.slice(0, 40)}…` : key);
}

/**
 * The identity of a delivery's ordering key as the consumer compares keys, or undefined when it has
 * none. Whatever a client put in the header is accepted (the broker hashed it already): a string
 * as is, bytes by their hex, anything else by its JSON; the type prefix keeps them apart.
 */
export function deliveryOrderingKey(msg: Pick<ConsumeMessage, 'properties'>): string | undefined {
  const value = (msg.properties.headers as Record<string, unknown> | undefined)?.[Headers.orderingKey];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return `s:${value}`;
  if (Buffer.isBuffer(value)) return `b:${value.toString('hex')}`;
  try {
    return `j:${JSON.stringify(value)}`;
  } catch {
    return `o:${String(value)}`;
  }
}

/**
 * Declares the ordered path of a work queue and returns the partition queue names. Idempotent
 * (every worker and `dw migrate` run it). Fails with OrderingPluginMissingError when the broker
 * lacks the consistent-hash exchange, and OrderedPartitionsChangedError when the queue has more
 * partitions than `partitions` (their messages would be stranded).
 */
export async function declareOrderedTopology(
  amqpUrl: string,
  openChannel: () => Promise<Channel>,
  channel: Channel,
  topology: Topology,
  partitions: number,
  /** Lets a refused declaration be looked into, for a clear QueueTypeMismatchError. */
  connection?: ChannelSource,
): Promise<string[]> {
  const ordered = orderedExchangeName(topology.exchange);
  const hash = orderedHashExchangeName(topology.queue);
  await declareOnOwnConnection(amqpUrl, hash, 'x-consistent-hash', hashExchangeArguments);
  await channel.assertExchange(ordered, 'topic', { durable: true });
  await channel.assertExchange(hash, 'x-consistent-hash', {
    durable: true,
    arguments: hashExchangeArguments,
  });
  if (await queueExists(openChannel, partitionQueueName(topology.queue, partitions))) {
    throw new OrderedPartitionsChangedError(topology.queue, partitions);
  }
  for (const type of topology.types) {
    await channel.bindExchange(hash, ordered, type);
    // A worker that ran without the plugin bound the work queue directly (declareUnorderedFallback):
    // that path would hand keyed messages to the ordinary queue too, out of order.
    await channel.unbindQueue(topology.queue, ordered, type);
  }
  const names: string[] = [];
  for (let i = 0; i < partitions; i++) {
    const name = partitionQueueName(topology.queue, i);
    // The work queue's type (and, for quorum, its delivery limit and limit queue) plus single active consumer.
    await declareConsumedQueue(channel, name, topology.queueType ?? queueDefaults.queueType, {
      explicit: topology.queueTypeExplicit ?? false,
      connection,
      extra: partitionQueueArguments(),
    });
    // The binding key of a consistent-hash exchange is the partition's weight: all equal.
    await channel.bindQueue(name, hash, '1');
    names.push(name);
  }
  return names;
}

const hashExchangeArguments = { 'hash-header': Headers.orderingKey };

/**
 * Whether the broker has the consistent-hash exchange (the plugin `rabbitmq_consistent_hash_exchange`),
 * asked by declaring the work queue's hash exchange on a connection of its own.
 */
export async function orderingPluginAvailable(amqpUrl: string, topology: Topology): Promise<boolean> {
  try {
    await declareOnOwnConnection(
      amqpUrl,
      orderedHashExchangeName(topology.queue),
      'x-consistent-hash',
      hashExchangeArguments,
    );
    return true;
  } catch (error) {
    if (error instanceof OrderingPluginMissingError) return false;
    throw error;
  }
}

/**
 * Without the plugin, when the partition count was not asked for: keyed messages published to
 * `<exchange>.ordered` reach the ordinary work queue and are handled without ordering, so nothing
 * published with a key is unroutable or lost. The ordered topology removes these bindings once the
 * plugin is there.
 */
export async function declareUnorderedFallback(channel: Channel, topology: Topology): Promise<void> {
  const ordered = orderedExchangeName(topology.exchange);
  await channel.assertExchange(ordered, 'topic', { durable: true });
  for (const type of topology.types) await channel.bindQueue(topology.queue, ordered, type);
}

/**
 * Declares an exchange of a plugin's type on a connection of its own: an unknown exchange type is
 * a connection error (503 COMMAND_INVALID), which would close the worker's connection and send it
 * reconnecting for ever; here it closes this one and becomes OrderingPluginMissingError.
 */
export async function declareOnOwnConnection(
  amqpUrl: string,
  exchange: string,
  type: string,
  args: Record<string, unknown>,
): Promise<void> {
  const connection = await amqp.connect(amqpUrl, {
    clientProperties: { connection_name: 'durable-worker ordered topology' },
  });
  let closedBecause: Error | undefined;
  connection.on('error', (error: Error) => {
    closedBecause = error;
  });
  try {
    const channel = await connection.createChannel();
    channel.on('error', () => {});
    await channel.assertExchange(exchange, type, { durable: true, arguments: args });
  } catch (error) {
    const why = `${String((error as Error).message)} ${closedBecause?.message ?? ''}`;
    if (/(unknown|invalid) exchange type/i.test(why))
      throw new OrderingPluginMissingError(closedBecause ?? error);
    throw error;
  } finally {
    await connection.close().catch(() => {});
  }
}

/** checkQueue on a channel of its own: a missing queue closes the channel it is asked on. */
async function queueExists(openChannel: () => Promise<Channel>, name: string): Promise<boolean> {
  const channel = await openChannel();
  let missing = false;
  channel.on('error', (error: Error) => {
    if (/NOT_FOUND/.test(error.message)) missing = true;
  });
  try {
    await channel.checkQueue(name);
    return true;
  } catch (error) {
    if (missing || /NOT_FOUND|404/.test(String((error as Error).message))) return false;
    throw error;
  } finally {
    await channel.close().catch(() => {});
  }
}

/** Log once per type, count every one: a keyed message on the ordinary queue runs without ordering. */
const warnedTypes = new Set<string>();

/**
 * A message carrying an ordering key reached the ordinary work queue (a client published it to the
 * main exchange rather than to `<exchange>.ordered`): it is handled like any other, without
 * ordering, never dropped; counted in dw_ordering_key_unordered_total and logged once per type.
 */
export function noteUnorderedKey(msg: ConsumeMessage, log: Logger): void {
  if (deliveryOrderingKey(msg) === undefined) return;
  unorderedKeyedTotal.inc();
  const type = String(msg.properties.type ?? msg.fields.routingKey);
  if (warnedTypes.has(type) || warnedTypes.size >= 1000) return;
  warnedTypes.add(type);
  log.warn(
    { type, queue: msg.fields.routingKey, exchange: msg.fields.exchange },
    `a message with an ${Headers.orderingKey} header arrived on the ordinary work queue: handled without ordering; publish keyed messages to the ordered exchange (<exchange>.ordered) to have them ordered`,
  );
}

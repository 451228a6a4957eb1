import type { Channel, Options } from 'amqplib';
import { queueDefaults } from './defaults.js';
import { QueueTypeMismatchError } from './errors.js';
import type { Logger } from './logger.js';

/**
 * The RabbitMQ queue type of the work queue and its retry queues (DW_QUEUE_TYPE). Quorum queues
 * are replicated (Raft) and count deliveries themselves; classic queues are what installations
 * made before DW_QUEUE_TYPE existed have.
 */
export type QueueType = 'quorum' | 'classic';
export const queueTypes: readonly QueueType[] = ['quorum', 'classic'];

/** What opens channels: a probe that RabbitMQ refuses closes its channel, so each gets its own. */
export interface ChannelSource {
  createChannel(): Promise<Channel>;
}

/**
 * Where a quorum queue puts a message that reached its delivery limit: `<queue>.delivery-limit`, a
 * quorum queue without consumers. Only a message the crash-loop guard could not dead-letter in
 * time ends up there (the database refused the dead letter again and again); it waits there for
 * an operator (management UI, shovel back) instead of being dropped.
 */
export function deliveryLimitQueueName(queue: string): string {
  return `${queue}.delivery-limit`;
}

/**
 * The declaration of `queue`, a queue that consumers take work from: the work queue, and any queue
 * like it (ordering-key partitions pass `x-single-active-consumer` in `extra`; declare it with
 * declareConsumedQueue, which declares its delivery-limit queue too). Quorum: the delivery limit
 * is set explicitly (RabbitMQ 4 drops a message after 20 returns by default); it is far above
 * `maxDeliveries`, so the worker's crash-loop guard dead-letters a poison message into the
 * dead-letter store long before, and a message that reaches it anyway is dead-lettered (at least
 * once) to deliveryLimitQueueName, never dropped. Classic: `x-queue-type` is sent too (RabbitMQ
 * takes it as equal to a classic queue declared without it, as older versions did), so a vhost
 * whose default queue type is quorum still gets a classic queue.
 */
export function consumedQueueOptions(
  type: QueueType,
  queue: string,
  extra: Options.AssertQueue['arguments'] = {},
) {
  const typed =
    type === 'quorum'
      ? {
          'x-queue-type': 'quorum',
          'x-delivery-limit': queueDefaults.quorumDeliveryLimit,
          'x-dead-letter-exchange': '',
          'x-dead-letter-routing-key': deliveryLimitQueueName(queue),
          'x-dead-letter-strategy': 'at-least-once',
          'x-overflow': 'reject-publish',
        }
      : { 'x-queue-type': 'classic' };
  return { durable: true, arguments: { ...typed, ...extra } } satisfies Options.AssertQueue;
}

/**
 * Declares `queue` (consumedQueueOptions) and, for a quorum queue, first its delivery-limit queue.
 * A queue of another type: QueueTypeMismatchError (see declareQueue).
 */
export async function declareConsumedQueue(
  channel: Channel,
  queue: string,
  type: QueueType,
  options: { explicit: boolean; connection?: ChannelSource; extra?: Options.AssertQueue['arguments'] },
): Promise<void> {
  if (type === 'quorum') {
    await channel.assertQueue(deliveryLimitQueueName(queue), {
      durable: true,
      arguments: { 'x-queue-type': 'quorum' },
    });
  }
  await declareQueue(channel, queue, type, (t) => consumedQueueOptions(t, queue, options.extra), options);
}

/**
 * The declaration of a retry queue: no consumer; a copy expires back into `workQueue` through the
 * default exchange. Quorum: dead-lettered at least once (`x-dead-letter-strategy`, which RabbitMQ
 * only allows with `x-overflow: reject-publish`), so a copy is not lost if the broker fails
 * between dropping it here and storing it in the work queue.
 */
export function retryQueueOptions(type: QueueType, workQueue: string) {
  const deadLetter = { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': workQueue };
  const typed =
    type === 'quorum'
      ? {
          'x-queue-type': 'quorum',
          'x-dead-letter-strategy': 'at-least-once',
          'x-overflow': 'reject-publish',
        }
      : { 'x-queue-type': 'classic' };
  return { durable: true, arguments: { ...typed, ...deadLetter } } satisfies Options.AssertQueue;
}

/** The declaration of one queue for either type (consumedQueueOptions, retryQueueOptions). */
export type QueueOptionsFor = (type: QueueType) => Options.AssertQueue;

/**
 * The type of the existing queue named in RabbitMQ's refusal of a declaration (406
 * PRECONDITION_FAILED, "inequivalent arg 'x-queue-type' … but current is …"), or undefined when
 * the refusal is about something else. A queue declared without the argument is classic.
 */
export function existingQueueType(error: unknown): string | undefined {
  const match = /inequivalent arg 'x-queue-type'.* but current is (?:the value )?(?:'([^']*)'|none)/.exec(
    messageOf(error),
  );
  if (!match) return undefined;
  return match[1] ?? 'classic';
}

/**
 * Declares `queue` as `optionsFor(type)` says. RabbitMQ refuses to redeclare a queue of another
 * type (closing the channel); that refusal becomes a QueueTypeMismatchError saying how to migrate.
 * RabbitMQ compares some arguments (dead-lettering, overflow) before the type and names the first
 * that differs, so with `connection` another refusal is looked into (probeQueueType). `explicit`
 * says whether the type was asked for (DW_QUEUE_TYPE, an option, a flag).
 */
export async function declareQueue(
  channel: Channel,
  queue: string,
  type: QueueType,
  optionsFor: QueueOptionsFor,
  { explicit, connection }: { explicit: boolean; connection?: ChannelSource },
): Promise<void> {
  try {
    await channel.assertQueue(queue, optionsFor(type));
  } catch (error) {
    let existing = existingQueueType(error);
    if (existing === undefined && connection && inequivalent(error)) {
      existing = await probeQueueType(connection, queue, optionsFor).catch(() => undefined);
    }
    if (existing !== undefined && existing !== type) {
      throw new QueueTypeMismatchError(queue, existing, type, explicit, error);
    }
    throw error;
  }
}

/**
 * Which type to declare `queue` with. An explicit type is used as asked (a queue of another type
 * then fails its declaration with QueueTypeMismatchError). Without one, a queue that exists keeps
 * its type, so an installation made before quorum queues became the default keeps working
 * (logged, with the way to migrate); a new queue gets `fallback`. Creates and changes nothing.
 */
export async function resolveQueueType(
  connection: ChannelSource,
  queue: string,
  requested: QueueType | undefined,
  optionsFor: QueueOptionsFor,
  options: { fallback?: QueueType; log?: Logger } = {},
): Promise<QueueType> {
  if (requested) return requested;
  const fallback = options.fallback ?? queueDefaults.queueType;
  const existing = await probeQueueType(connection, queue, optionsFor);
  if (existing === undefined) return fallback;
  if (existing !== 'quorum' && existing !== 'classic') {
    throw new QueueTypeMismatchError(queue, existing, fallback, false);
  }
  if (existing !== fallback) {
    options.log?.info(
      { queue, queueType: existing },
      `queue ${queue} exists as a ${existing} queue and DW_QUEUE_TYPE is not set: keeping it ${existing}. Set DW_QUEUE_TYPE=${existing} to say so, or see the README ("Queue types") to migrate`,
    );
  }
  return existing;
}

/**
 * The type of an existing queue, or undefined if there is none (or it matches neither declaration
 * in arguments other than its type). AMQP 0-9-1 cannot ask for a queue's arguments: a passive
 * declare says whether it exists, then the queue is declared as each type would declare it, each
 * on a channel of its own. RabbitMQ accepts the one that is equivalent, and names the current type
 * when the type is the first argument that differs. Neither creates or changes anything.
 */
async function probeQueueType(
  connection: ChannelSource,
  queue: string,
  optionsFor: QueueOptionsFor,
): Promise<string | undefined> {
  const exists = await onThrowawayChannel(connection, (channel) => channel.checkQueue(queue)).then(
    () => true,
    (error: unknown) => {
      if ((error as { code?: unknown }).code === 404) return false;
      throw error;
    },
  );
  if (!exists) return undefined;
  for (const type of queueTypes) {
    try {
      await onThrowawayChannel(connection, (channel) => channel.assertQueue(queue, optionsFor(type)));
      return type;
    } catch (error) {
      const existing = existingQueueType(error);
      if (existing !== undefined) return existing;
      if (!inequivalent(error)) throw error;
    }
  }
  return undefined;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : '';
}

/** RabbitMQ's refusal to redeclare a queue with other arguments. */
function inequivalent(error: unknown): boolean {
  return /PRECONDITION_FAILED - inequivalent arg/.test(messageOf(error));
}

async function onThrowawayChannel<T>(
  connection: ChannelSource,
  fn: (channel: Channel) => Promise<T>,
): Promise<T> {
  const channel = await connection.createChannel();
  let closed = false;
  channel.on('error', () => {});
  channel.on('close', () => {
    closed = true;
  });
  try {
    return await fn(channel);
  } finally {
    if (!closed) await channel.close().catch(() => {});
  }
}

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
 * The declaration of a queue that consumers take work from, for `type`: the work queue, and any
 * queue like it (ordering-key partitions pass `x-single-active-consumer` in `extra`). Quorum: the
 * delivery limit is set explicitly (RabbitMQ 4 drops a message after 20 redeliveries by default);
 * it is far above `maxDeliveries`, so the worker's crash-loop guard dead-letters a poison message
 * into the dead-letter store long before the broker would act. Classic: `x-queue-type` is sent
 * too (RabbitMQ takes it as equal to a classic queue declared without it, as older versions did),
 * so a vhost whose default queue type is quorum still gets a classic queue.
 */
export function consumedQueueOptions(type: QueueType, extra: Options.AssertQueue['arguments'] = {}) {
  const typed =
    type === 'quorum'
      ? { 'x-queue-type': 'quorum', 'x-delivery-limit': queueDefaults.quorumDeliveryLimit }
      : { 'x-queue-type': 'classic' };
  return { durable: true, arguments: { ...typed, ...extra } } satisfies Options.AssertQueue;
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

/**
 * The type of the existing queue named in RabbitMQ's refusal of a declaration (406
 * PRECONDITION_FAILED, "inequivalent arg 'x-queue-type' … but current is …"), or undefined when
 * the refusal is about something else. A queue declared without the argument is classic.
 */
export function existingQueueType(error: unknown): string | undefined {
  const message = error instanceof Error ? error.message : '';
  const match = /inequivalent arg 'x-queue-type'.* but current is (?:the value )?(?:'([^']*)'|none)/.exec(
    message,
  );
  if (!match) return undefined;
  return match[1] ?? 'classic';
}

/**
 * Declares `queue` as `options` say (of type `type`); a queue that exists with another type is
 * refused by RabbitMQ (closing the channel), which becomes a QueueTypeMismatchError saying how to
 * migrate. `explicit` says whether the type was asked for (DW_QUEUE_TYPE, an option, a flag).
 */
export async function declareQueue(
  channel: Channel,
  queue: string,
  type: QueueType,
  options: Options.AssertQueue,
  explicit = true,
): Promise<void> {
  try {
    await channel.assertQueue(queue, options);
  } catch (error) {
    const existing = existingQueueType(error);
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
 * (logged, with the way to migrate); a new queue gets `fallback`. Reads only: nothing is declared.
 */
export async function resolveQueueType(
  connection: ChannelSource,
  queue: string,
  requested: QueueType | undefined,
  options: { fallback?: QueueType; log?: Logger } = {},
): Promise<QueueType> {
  if (requested) return requested;
  const fallback = options.fallback ?? queueDefaults.queueType;
  const existing = await probeQueueType(connection, queue);
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
 * The type of an existing queue, or undefined if there is none. AMQP 0-9-1 has no way to ask for a
 * queue's arguments: a passive declare says whether it exists, then a quorum declaration is tried
 * on a channel of its own (RabbitMQ accepts it for a quorum queue, and names the type it has
 * otherwise). Neither creates or changes anything.
 */
async function probeQueueType(connection: ChannelSource, queue: string): Promise<string | undefined> {
  const exists = await onThrowawayChannel(connection, (channel) => channel.checkQueue(queue)).then(
    () => true,
    (error: unknown) => {
      if ((error as { code?: unknown }).code === 404) return false;
      throw error;
    },
  );
  if (!exists) return undefined;
  return onThrowawayChannel(connection, (channel) =>
    channel.assertQueue(queue, consumedQueueOptions('quorum')),
  ).then(
    () => 'quorum',
    (error: unknown) => {
      const existing = existingQueueType(error);
      // Refused for another argument (another delivery limit): it is a quorum queue all the same.
      if (existing === undefined && /inequivalent arg/.test((error as Error).message)) return 'quorum';
      if (existing === undefined) throw error;
      return existing;
    },
  );
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

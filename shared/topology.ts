import type { Channel } from 'amqplib';
import type { App } from './app.js';
import { queueDefaults, workQueueName } from './defaults.js';
import { type ChannelSource, declareConsumedQueue, type QueueType } from './queue-type.js';

export interface Topology {
  exchange: string;
  queue: string;
  /** Message types bound to the queue (routing keys on the topic exchange). */
  types: readonly string[];
  /**
   * The work queue's type, resolved (resolveQueueType) before declaring.
   * @defaultValue 'quorum'
   */
  queueType?: QueueType;
  /** Whether `queueType` was asked for (DW_QUEUE_TYPE, an option, a flag), for the mismatch error. */
  queueTypeExplicit?: boolean;
}

/** The work queue of an app: `<exchange>.<app name>`, unless the worker is told otherwise. */
export function appTopology(
  app: App,
  exchange: string,
  queue?: string,
  queueType?: { type: QueueType; explicit: boolean },
): Topology {
  return {
    exchange,
    queue: queue ?? workQueueName(exchange, app.name),
    types: [...app.handlers.keys()],
    ...(queueType ? { queueType: queueType.type, queueTypeExplicit: queueType.explicit } : {}),
  };
}

/**
 * Declares the topic exchange, the durable work queue and its bindings. Idempotent; run by every
 * worker at (re)connection and by `dw migrate`, so that messages published before the first worker
 * starts are queued rather than dropped as unroutable. A work queue of another type than
 * `queueType` fails with QueueTypeMismatchError (closing the channel).
 */
export async function declareTopology(
  channel: Channel,
  topology: Topology,
  /** Lets a refused declaration be looked into, for a clear QueueTypeMismatchError. */
  connection?: ChannelSource,
): Promise<void> {
  const type = topology.queueType ?? queueDefaults.queueType;
  await channel.assertExchange(topology.exchange, 'topic', { durable: true });
  await declareConsumedQueue(channel, topology.queue, type, {
    explicit: topology.queueTypeExplicit ?? false,
    connection,
  });
  for (const type of topology.types) await channel.bindQueue(topology.queue, topology.exchange, type);
}

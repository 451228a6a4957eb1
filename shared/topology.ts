import type { Channel } from 'amqplib';
import type { App } from './app.js';
import { workQueueName } from './defaults.js';

export interface Topology {
  exchange: string;
  queue: string;
  /** Message types bound to the queue (routing keys on the topic exchange). */
  types: readonly string[];
}

/** The work queue of an app: `<exchange>.<app name>`, unless the worker is told otherwise. */
export function appTopology(app: App, exchange: string, queue?: string): Topology {
  return { exchange, queue: queue ?? workQueueName(exchange, app.name), types: [...app.handlers.keys()] };
}

/**
 * Declares the topic exchange, the durable work queue and its bindings. Idempotent; run by every
 * worker at (re)connection and by `dw migrate`, so that messages published before the first worker
 * starts are queued rather than dropped as unroutable.
 */
export async function declareTopology(channel: Channel, topology: Topology): Promise<void> {
  await channel.assertExchange(topology.exchange, 'topic', { durable: true });
  await channel.assertQueue(topology.queue, { durable: true });
  for (const type of topology.types) await channel.bindQueue(topology.queue, topology.exchange, type);
}

import amqp from 'amqplib';
import type { App } from '../../shared/app.js';
import { appTopology, declareTopology } from '../../shared/topology.js';
import { waitUntil } from '../../shared/wait.js';
import type { Worker } from '../../worker/worker.js';
import { type TestEnv, urls } from './services.js';

/**
 * Declares and binds the app's work queue before anything is published, so messages wait there for
 * a worker that starts later (batches then form from the prefetch at once).
 */
export async function declareWorkQueue(app: App, env: TestEnv): Promise<void> {
  const connection = await amqp.connect(urls.amqp);
  try {
    const topology = appTopology(app, env.config.exchange, undefined, {
      type: env.config.queueType ?? 'quorum',
      explicit: false,
    });
    await declareTopology(await connection.createChannel(), topology);
  } finally {
    await connection.close();
  }
}

/** Every delivery settled: nothing ready or unacked in the work queue (nothing loops). */
export async function drained(worker: Worker): Promise<void> {
  await waitUntil(async () => {
    const { ready, unacked } = await worker.scrapeSources().workQueue!();
    return ready === 0 && unacked === 0;
  }, 'the work queue to be empty and every delivery settled');
}

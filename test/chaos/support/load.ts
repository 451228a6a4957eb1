import amqp from 'amqplib';
import { urls } from '../../support/services.js';
import type { Random } from './random.js';

export interface JoinMeetingLoad {
  /** Message ids published (each once or more) and the userId each one carries. */
  readonly messages: ReadonlyMap<string, string>;
  /** Resolves when every message was confirmed by the broker (republished across outages). */
  readonly done: Promise<void>;
  /** Confirmed publishes, duplicates included. */
  confirmed(): number;
}

/**
 * Publishes `count` JoinMeeting messages from an independent AMQP client (raw amqplib, the way any
 * other service would), with about `duplicateShare` of them published a second time with the same
 * message id: the inbox must absorb those. A chunk whose confirms are lost to an outage is
 * published again on a new connection; the ids stay the same, so that is only more duplicates.
 */
export function publishJoinMeetings(
  exchange: string,
  runId: string,
  count: number,
  random: Random,
  { chunk = 50, duplicateShare = 0.05 } = {},
): JoinMeetingLoad {
  const messages = new Map<string, string>();
  const plan: Array<{ id: string; userId: string }> = [];
  for (let i = 0; i < count; i++) {
    const id = `${runId}-jm-${i}`;
    const userId = `${runId}-u${i}`;
    messages.set(id, userId);
    plan.push({ id, userId });
    if (random.next() < duplicateShare) plan.splice(random.int(0, plan.length), 0, { id, userId });
  }
  let confirmed = 0;
  const done = (async () => {
    for (let start = 0; start < plan.length; start += chunk) {
      const slice = plan.slice(start, start + chunk);
      await publishChunk(exchange, runId, slice);
      confirmed += slice.length;
    }
  })();
  return { messages, done, confirmed: () => confirmed };
}

let connection: amqp.ChannelModel | undefined;
let channel: amqp.ConfirmChannel | undefined;

async function publishChunk(
  exchange: string,
  meetingId: string,
  slice: Array<{ id: string; userId: string }>,
) {
  const deadline = Date.now() + 120_000;
  for (let attempt = 0; ; attempt++) {
    try {
      if (!channel) {
        connection = await amqp.connect(urls.amqp, { clientProperties: { connection_name: 'chaos-load' } });
        connection.on('error', () => {});
        connection.on('close', () => {
          connection = undefined;
          channel = undefined;
        });
        channel = await connection.createConfirmChannel();
        channel.on('error', () => {});
      }
      for (const m of slice) {
        channel.publish(
          exchange,
          'JoinMeeting',
          Buffer.from(JSON.stringify({ userId: m.userId, meetingId })),
          {
            messageId: m.id,
            type: 'JoinMeeting',
            contentType: 'application/json',
            persistent: true,
          },
        );
      }
      await channel.waitForConfirms();
      return;
    } catch (error) {
      await closeLoadConnection();
      if (Date.now() > deadline) throw error;
      // The broker is away (a restart scenario): back off, then publish the whole chunk again.
      await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
    }
  }
}

export async function closeLoadConnection(): Promise<void> {
  const c = connection;
  connection = undefined;
  channel = undefined;
  await c?.close().catch(() => {});
}

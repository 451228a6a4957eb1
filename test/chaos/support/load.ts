import amqp from 'amqplib';
import { Headers } from '../../../shared/envelope.js';
import { orderedExchangeName } from '../../../shared/ordering.js';
import { urls } from '../../support/services.js';
import type { Random } from './random.js';

export interface Publication {
  id: string;
  type: string;
  body: unknown;
  /**
   * Ordering key: published to `<exchange>.ordered` with an `x-ordering-key` header, as any client
   * publishing keyed messages does (README, "Ordered processing by key").
   */
  orderingKey?: string;
}

export interface Load {
  /** Message ids published (each once or more) with what each one carries. */
  readonly messages: ReadonlyMap<string, Publication>;
  /** Every publish in publish order, duplicates included (the first of an id is its place in the order). */
  readonly sequence: readonly Publication[];
  /** Resolves when every message was confirmed by the broker (republished across outages). */
  readonly done: Promise<void>;
  /** Confirmed publishes, duplicates included. */
  confirmed(): number;
}

/**
 * Publishes `messages` from an independent AMQP client (raw amqplib, the way any other service
 * would), about `duplicateShare` of them a second time with the same message id: the inbox must
 * absorb those. A chunk whose confirms are lost to an outage is published again on a new
 * connection; the ids stay the same, so that only makes more duplicates.
 */
export function publishLoad(
  exchange: string,
  messages: readonly Publication[],
  random: Random,
  { chunk = 50, duplicateShare = 0.05 } = {},
): Load {
  const plan: Publication[] = [];
  for (const m of messages) {
    plan.push(m);
    if (random.next() < duplicateShare) plan.splice(random.int(0, plan.length), 0, m);
  }
  let confirmed = 0;
  const done = (async () => {
    for (let start = 0; start < plan.length; start += chunk) {
      const slice = plan.slice(start, start + chunk);
      await publishChunk(exchange, slice);
      confirmed += slice.length;
    }
  })();
  return {
    messages: new Map(messages.map((m) => [m.id, m])),
    sequence: plan,
    done,
    confirmed: () => confirmed,
  };
}

/** `count` JoinMeeting messages, one user each, all in meeting `runId`. */
export function joinMeetings(runId: string, count: number): Publication[] {
  return Array.from({ length: count }, (_, i) => ({
    id: `${runId}-jm-${i}`,
    type: 'JoinMeeting',
    body: { userId: `${runId}-u${i}`, meetingId: runId },
  }));
}

/**
 * `meetings` meetings of `usersPerMeeting` JoinMeeting messages each, keyed by meeting id: within a
 * meeting, users u0, u1, … in that order.
 */
export function keyedJoinMeetings(runId: string, meetings: number, usersPerMeeting: number): Publication[][] {
  return Array.from({ length: meetings }, (_, m) =>
    Array.from({ length: usersPerMeeting }, (_, i) => ({
      id: `${runId}-km${m}-${i}`,
      type: 'JoinMeeting',
      body: { userId: `${runId}-km${m}-u${i}`, meetingId: `${runId}-m${m}` },
      orderingKey: `${runId}-m${m}`,
    })),
  );
}

let connection: amqp.ChannelModel | undefined;
let channel: amqp.ConfirmChannel | undefined;

async function publishChunk(exchange: string, slice: readonly Publication[]) {
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
        const keyed = m.orderingKey !== undefined;
        channel.publish(
          keyed ? orderedExchangeName(exchange) : exchange,
          m.type,
          Buffer.from(JSON.stringify(m.body)),
          {
            messageId: m.id,
            type: m.type,
            contentType: 'application/json',
            persistent: true,
            ...(keyed ? { headers: { [Headers.orderingKey]: m.orderingKey } } : {}),
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

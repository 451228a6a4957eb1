import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { createRedis, waitUntil } from '../../index.js';
import type { DemoContext } from './context.js';

/** JoinMeeting: three joins plus one redelivered duplicate; one row each, two jobs each. */
export async function joinMeetingDemo(ctx: DemoContext): Promise<void> {
  ctx.say('\n== JoinMeeting: one transaction writes the participant, the inbox row and two outbox rows');
  const meetingId = `meeting-${randomUUID().slice(0, 8)}`;
  const ids = [randomUUID(), randomUUID(), randomUUID()];
  await ctx.publish(
    ids.map((id, i) => ({ id, type: 'JoinMeeting', payload: { userId: `user-${i + 1}`, meetingId } })),
  );
  // The same message id again, as a redelivery or a careless republish would: no second effect.
  await ctx.publish([{ id: ids[0], type: 'JoinMeeting', payload: { userId: 'user-1', meetingId } }]);
  ctx.say(`published 4 JoinMeeting messages for ${meetingId} (the 4th repeats the 1st's id)`);

  const rows: Array<{ user_id: string }> = await waitUntil(async () => {
    const r = await ctx.knex('meeting_participants').where({ meeting_id: meetingId }).orderBy('id');
    const pending = await ctx.knex('dw_outbox').whereNull('delivered_at').count<{ c: number }[]>('* as c');
    return r.length >= 3 && Number(pending[0]?.c) === 0 ? r : undefined;
  }, 'the participants to be written and the outbox drained');
  ctx.say(`meeting_participants rows: ${rows.length} (${rows.map((r) => r.user_id).join(', ')})`);

  // Whatever REDIS_MODE says (one server, a cluster, sentinels): the connection the relay uses.
  const connection = createRedis(ctx.config, { bullmqPrefix: ctx.config.bullmqPrefix });
  connection.on('error', () => {});
  for (const name of ['user_notification_events', 'user_ecst_events']) {
    const queue = new Queue(name, { connection, prefix: ctx.config.bullmqPrefix });
    const jobs = await queue.getJobs(['waiting', 'prioritized', 'delayed', 'active', 'completed']);
    const ours = jobs.filter(
      (j) => (j.data as { payload?: { meetingId?: string } }).payload?.meetingId === meetingId,
    );
    ctx.say(`BullMQ queue ${name}: ${ours.length} job(s) for this meeting`);
    await queue.close();
  }
  connection.disconnect();
}

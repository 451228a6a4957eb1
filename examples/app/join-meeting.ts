import { z } from 'zod';
import { defineBatchHandler } from '../../index.js';

/** Ids may come as strings or numbers from other systems; they are stored as text. */
const id = z.union([z.string().min(1).max(200), z.number().int()]).transform(String);

export const JoinMeeting = z.object({ userId: id, meetingId: id });

/**
 * Joins come in bursts (a meeting starts): a batch handler writes the joins at hand in one insert.
 * Each entry still sends its own events, caused by its own message.
 */
export const joinMeeting = defineBatchHandler('JoinMeeting', JoinMeeting, async (batch) => {
  await batch[0].ctx
    .trx('meeting_participants')
    .insert(batch.map(({ message }) => ({ user_id: message.userId, meeting_id: message.meetingId })));
  for (const { message, ctx } of batch) {
    const event = {
      userId: message.userId,
      meetingId: message.meetingId,
      joinedAt: new Date().toISOString(),
    };
    // Consumed by other services (notifications, event-carried state transfer), not by this app.
    ctx.send('user_notification_events', 'UserJoinedMeeting', event);
    ctx.send('user_ecst_events', 'UserJoinedMeeting', event);
  }
});

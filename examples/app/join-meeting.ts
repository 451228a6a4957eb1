import { z } from 'zod';
import { defineHandler } from '../../index.js';

/** Ids may come as strings or numbers from other systems; they are stored as text. */
const id = z.union([z.string().min(1).max(200), z.number().int()]).transform(String);

export const JoinMeeting = z.object({ userId: id, meetingId: id });

export const joinMeeting = defineHandler('JoinMeeting', JoinMeeting, async (message, ctx) => {
  await ctx.trx('meeting_participants').insert({ user_id: message.userId, meeting_id: message.meetingId });
  const event = { userId: message.userId, meetingId: message.meetingId, joinedAt: new Date().toISOString() };
  // Consumed by other services (notifications, event-carried state transfer), not by this app.
  ctx.send('user_notification_events', 'UserJoinedMeeting', event);
  ctx.send('user_ecst_events', 'UserJoinedMeeting', event);
});

import { z } from 'zod';
import { defineHandler, defineSaga, type StepContext } from '../../index.js';

export const tripSteps = ['debit-customer', 'book-flight', 'book-hotel', 'email-customer'] as const;
export type TripStep = (typeof tripSteps)[number];

export const BookTrip = z.object({
  tripId: z.uuid(),
  customerId: z.union([z.string().min(1).max(200), z.number().int()]).transform(String),
  amount: z.number().positive(),
  /** A step that throws (demo and tests of compensation). */
  failAt: z.enum(tripSteps).optional(),
  /** How many attempts of `failAt` throw; absent: every attempt. */
  failTimes: z.number().int().min(0).optional(),
});

export interface TripState {
  tripId: string;
  customerId: string;
  amount: number;
  failAt?: TripStep;
  failTimes?: number;
  flightRef?: string;
  hotelRef?: string;
}

type Ctx = StepContext<TripState>;

/** Every committed step run and compensation leaves one ledger row, in the same transaction. */
async function ledger(ctx: Ctx, action: 'execute' | 'compensate'): Promise<void> {
  await ctx.trx('trip_ledger').insert({ trip_id: ctx.sagaId, step: ctx.step, action });
}

function failIfAsked(ctx: Ctx): void {
  const { failAt, failTimes } = ctx.state;
  if (failAt === ctx.step && (failTimes === undefined || ctx.attempt <= failTimes)) {
    throw new Error(`${ctx.step} failed (attempt ${ctx.attempt}, as the message asked)`);
  }
}

function execute(result?: (ctx: Ctx) => Partial<TripState>) {
  return async (ctx: Ctx) => {
    failIfAsked(ctx);
    await ledger(ctx, 'execute');
    return result?.(ctx);
  };
}

const compensate = (ctx: Ctx) => ledger(ctx, 'compensate');

/** BookTrip (docs/contracts.md, "Example app"): debit, flight, hotel, email; each but the email undone on failure. */
export const bookTripSaga = defineSaga<TripState>('book-trip', { retry: { attempts: 3, backoffMs: 100 } })
  .step('debit-customer', [execute(), compensate])
  .step('book-flight', {
    run: execute((ctx) => ({ flightRef: `FL-${ctx.idempotencyKey.slice(0, 8)}` })),
    compensate,
  })
  .step('book-hotel', {
    run: execute((ctx) => ({ hotelRef: `HT-${ctx.idempotencyKey.slice(0, 8)}` })),
    compensate,
  })
  .step('email-customer', execute());

export const bookTrip = defineHandler('BookTrip', BookTrip, async (message, ctx) => {
  await ctx.startSaga(bookTripSaga, message, { id: message.tripId });
});

export const bookTripHandlers = [bookTrip];

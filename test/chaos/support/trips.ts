import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import type { Publication } from './load.js';
import type { Random } from './random.js';

const steps = ['debit-customer', 'book-flight', 'book-hotel', 'email-customer'] as const;
type Step = (typeof steps)[number];

export interface TripPlan {
  tripId: string;
  /** Every attempt of this step throws: the saga compensates. */
  failAt?: Step;
  /** Only the first attempt of this step throws: the retry succeeds. */
  failOnceAt?: Step;
}

/** A seeded mix: trips that complete, that complete after a retry, that fail at each step. */
export function planTrips(count: number, random: Random): TripPlan[] {
  return Array.from({ length: count }, () => {
    const tripId = randomUUID();
    const kind = random.next();
    if (kind < 0.4) return { tripId };
    if (kind < 0.6) return { tripId, failOnceAt: random.pick(steps) };
    return { tripId, failAt: random.pick(steps) };
  });
}

export function tripMessages(runId: string, trips: readonly TripPlan[]): Publication[] {
  return trips.map((t, i) => ({
    id: `${runId}-bt-${i}`,
    type: 'BookTrip',
    body: {
      tripId: t.tripId,
      customerId: `${runId}-c${i}`,
      amount: 10 + i,
      ...(t.failAt ? { failAt: t.failAt } : {}),
      ...(t.failOnceAt ? { failAt: t.failOnceAt, failTimes: 1 } : {}),
    },
  }));
}

/** What the ledger of a trip must say, in order, and the saga's final status. */
export function expectedLedger(trip: TripPlan): { entries: string[]; status: string } {
  if (!trip.failAt) return { entries: steps.map((s) => `execute:${s}`), status: 'completed' };
  const done = steps.slice(0, steps.indexOf(trip.failAt));
  return {
    entries: [...done.map((s) => `execute:${s}`), ...[...done].reverse().map((s) => `compensate:${s}`)],
    status: 'compensated',
  };
}

export interface SagaCounters {
  /** Trips not terminal, or missing a ledger entry they should have. */
  sagasLost: number;
  /** Ledger entries (step, action) recorded more than once. */
  sagasDuplicated: number;
  /** Ledger entries no plan asked for, sagas of unknown trips, wrong final statuses. */
  sagasUnexpected: number;
  /** Trips whose ledger has the right entries in the wrong order (compensations not in reverse). */
  sagasOutOfOrder: number;
  /** Step-failed dead letters missing or extra, compensation-failed dead letters. */
  sagaDeadLettersWrong: number;
}

/** Sagas still running or compensating. */
export async function sagasInFlight(knex: Knex): Promise<number> {
  const row = await knex('dw_sagas')
    .whereIn('status', ['running', 'compensating'])
    .count<{ n: number }[]>('* as n')
    .first();
  return Number(row?.n ?? 0);
}

export async function sagaCounters(knex: Knex, trips: readonly TripPlan[]): Promise<SagaCounters> {
  const byId = new Map(trips.map((t) => [t.tripId, t]));
  const counters: SagaCounters = {
    sagasLost: 0,
    sagasDuplicated: 0,
    sagasUnexpected: 0,
    sagasOutOfOrder: 0,
    sagaDeadLettersWrong: 0,
  };
  const sagas = new Map<string, string>(
    (await knex('dw_sagas').select('id', 'status')).map((r: { id: string; status: string }) => [
      r.id,
      r.status,
    ]),
  );
  const ledger = new Map<string, string[]>();
  for (const row of await knex('trip_ledger').select('trip_id', 'step', 'action').orderBy('id')) {
    const list = ledger.get(row.trip_id) ?? [];
    list.push(`${row.action}:${row.step}`);
    ledger.set(row.trip_id, list);
  }
  for (const id of sagas.keys()) if (!byId.has(id)) counters.sagasUnexpected++;
  for (const id of ledger.keys()) if (!byId.has(id)) counters.sagasUnexpected++;
  for (const trip of trips) {
    const want = expectedLedger(trip);
    const status = sagas.get(trip.tripId);
    if (status === undefined || status === 'running' || status === 'compensating') counters.sagasLost++;
    else if (status !== want.status) counters.sagasUnexpected++;
    const got = ledger.get(trip.tripId) ?? [];
    const seen = new Map<string, number>();
    for (const entry of got) seen.set(entry, (seen.get(entry) ?? 0) + 1);
    for (const [entry, n] of seen) {
      if (!want.entries.includes(entry)) counters.sagasUnexpected += n;
      else counters.sagasDuplicated += n - 1;
    }
    for (const entry of want.entries) if (!seen.has(entry)) counters.sagasLost++;
    const distinct = got.filter((e, i) => got.indexOf(e) === i);
    if (
      distinct.length === want.entries.length &&
      seen.size === want.entries.length &&
      distinct.some((e, i) => e !== want.entries[i])
    ) {
      counters.sagasOutOfOrder++;
    }
  }
  const dead = await knex('dw_dead_letters').where({ source: 'saga' }).select('saga_id', 'reason');
  const failing = new Set(trips.filter((t) => t.failAt).map((t) => t.tripId));
  const stepFailed = new Set<string>();
  for (const d of dead as Array<{ saga_id: string; reason: string }>) {
    if (d.reason === 'step-failed' && failing.has(d.saga_id) && !stepFailed.has(d.saga_id))
      stepFailed.add(d.saga_id);
    else counters.sagaDeadLettersWrong++;
  }
  counters.sagaDeadLettersWrong += failing.size - stepFailed.size;
  return counters;
}

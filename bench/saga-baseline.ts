import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { type BenchEnv, truncateRunTables } from './env.js';
import { countRows } from './wait.js';

export interface SagaBaselineSettings {
  sagas: number;
  /** Sagas per transaction. */
  batchSize: number;
  /** Loops, each on its own connection, each carrying one batch of sagas at a time. */
  loops: number;
}

const STEPS = ['one', 'two', 'three'] as const;
/** How long a step's outbox row is held back from the relay while the writer runs it (eager steps). */
const LEASE_SECONDS = 10;

/**
 * The physical limit of the saga part: what our runtime writes for a 3-step saga, as raw `pg`
 * transactions batching `batchSize` sagas each, with nothing else around (no RabbitMQ, no BullMQ, no
 * runtime). Per batch, one start transaction (inbox rows, saga rows, the first step's leased outbox
 * rows), then per step one transaction: lock the saga rows, the ledger rows (the step's work), the
 * step records with the saga update (version, state, completed at the last step) in one statement,
 * the next step's leased outbox rows, and the run step's outbox rows marked delivered. Every
 * statement is multi-row. Returns sagas per second, first start to the last saga completed.
 */
export async function measureSagaBaseline(env: BenchEnv, settings: SagaBaselineSettings): Promise<number> {
  await truncateRunTables(env.knex);
  const pool = new pg.Pool({
    connectionString: env.databaseUrl,
    max: settings.loops,
    application_name: 'dw-bench-saga-baseline',
  });
  let next = 0;
  const loop = async () => {
    const client = await pool.connect();
    try {
      while (next < settings.sagas) {
        const count = Math.min(settings.batchSize, settings.sagas - next);
        next += count;
        await runBatch(
          client,
          Array.from({ length: count }, () => randomUUID()),
        );
      }
    } finally {
      client.release();
    }
  };
  const start = performance.now();
  try {
    await Promise.all(Array.from({ length: settings.loops }, loop));
  } finally {
    await pool.end();
  }
  const seconds = (performance.now() - start) / 1000;
  const done = await countRows(
    env.knex,
    "select count(*)::int as n from dw_sagas where status = 'completed'",
  );
  if (done !== settings.sagas)
    throw new Error(`bench: the saga baseline completed ${done} of ${settings.sagas}`);
  return settings.sagas / seconds;
}

async function runBatch(client: pg.PoolClient, ids: readonly string[]): Promise<void> {
  let outboxIds = ids.map(() => randomUUID());
  await transaction(client, async () => {
    // Inbox rows of the starting messages (the saga id is the message id, as in the bench app).
    await client.query(
      `insert into dw_inbox (consumer, message_id) select 'saga-baseline', id from unnest($1::text[]) as id
       on conflict do nothing returning message_id`,
      [ids],
    );
    await client.query(
      `insert into dw_sagas (id, name, status, state, correlation_id)
       select id, 'bench-saga', 'running', jsonb_build_object('seq', 0), id from unnest($1::text[]) as id
       on conflict (id) do nothing`,
      [ids],
    );
    await insertStepJobs(client, ids, outboxIds, STEPS[0]);
  });
  for (const [stage, step] of STEPS.entries()) {
    const last = stage === STEPS.length - 1;
    const nextIds = last ? [] : ids.map(() => randomUUID());
    await transaction(client, async () => {
      await client.query('select id, state, version from dw_sagas where id = any($1::text[]) for update', [
        ids,
      ]);
      await client.query(
        'insert into bench_ledger (saga_id, step) select id, $2 from unnest($1::text[]) as id',
        [ids, step],
      );
      // The step records and the saga update in one statement, as recordStepCompleted does.
      await client.query(
        `with saga as (
           update dw_sagas set version = version + 1, updated_at = now(),
                  status = case when $4 then 'completed' else status end
            where id = any($1::text[]) returning id)
         insert into dw_saga_steps (saga_id, step, stage, phase, status, attempts, finished_at, error)
         select id, $2, $3, 'execute', 'completed', 1, now(), null from saga
         on conflict (saga_id, step, phase) do update
            set status = 'completed', attempts = excluded.attempts, finished_at = now(), error = null
          where dw_saga_steps.status <> 'completed'
         returning id`,
        [ids, step, stage, last],
      );
      if (!last) await insertStepJobs(client, ids, nextIds, STEPS[stage + 1]!);
      await client.query(
        'update dw_outbox set delivered_at = now() where message_id = any($1::text[]) and delivered_at is null',
        [outboxIds],
      );
    });
    outboxIds = nextIds;
  }
}

/** The step jobs (BullMQ destination) as leased outbox rows, like an eager step's next job. */
async function insertStepJobs(
  client: pg.PoolClient,
  sagaIds: readonly string[],
  outboxIds: readonly string[],
  step: string,
): Promise<void> {
  await client.query(
    `insert into dw_outbox
       (message_id, destination_kind, destination, routing_key, type, payload, headers, options, available_at)
     select m, 'bullmq', 'dw_saga_steps_bench', null, 'SagaStep',
            jsonb_build_object('sagaId', s, 'step', $3::text, 'phase', 'execute'),
            jsonb_build_object('correlationId', s), '{}', now() + make_interval(secs => $4)
       from unnest($1::text[], $2::text[]) as x(m, s)
     on conflict (message_id) do nothing returning message_id`,
    [outboxIds, sagaIds, step, LEASE_SECONDS],
  );
}

async function transaction(client: pg.PoolClient, work: () => Promise<void>): Promise<void> {
  await client.query('begin');
  try {
    await work();
    await client.query('commit');
  } catch (error) {
    await client.query('rollback').catch(() => {});
    throw error;
  }
}

import { randomUUID } from 'node:crypto';
import { DBOS } from '@dbos-inc/dbos-sdk';
import pg from 'pg';

/**
 * The DBOS Transact side of the saga comparison, run as its own process (like our worker): a
 * workflow of three steps, each inserting one ledger row, started `concurrency` at a time.
 * Input: one JSON argument; output: one JSON line on stdout.
 */
interface Input {
  databaseUrl: string;
  concurrency: number;
  workflows: number;
  warmup: number;
  repetitions: number;
  poolSize: number;
}

const input = JSON.parse(process.argv[2] ?? '{}') as Input;

const business = new pg.Pool({
  connectionString: input.databaseUrl,
  max: input.concurrency,
  application_name: 'dw-bench-dbos-app',
});
await business.query(`create table if not exists bench_ledger (
  id bigserial primary key, saga_id text not null, step text not null,
  created_at timestamptz not null default clock_timestamp())`);

const ledger = (sagaId: string, step: string) => async () => {
  await business.query('insert into bench_ledger (saga_id, step) values ($1, $2)', [sagaId, step]);
};

async function threeSteps(sagaId: string): Promise<void> {
  await DBOS.runStep(ledger(sagaId, 'one'), { name: 'one' });
  await DBOS.runStep(ledger(sagaId, 'two'), { name: 'two' });
  await DBOS.runStep(ledger(sagaId, 'three'), { name: 'three' });
}
const benchWorkflow = DBOS.registerWorkflow(threeSteps, { name: 'bench-saga' });

DBOS.setConfig({
  name: 'dw-bench',
  systemDatabaseUrl: input.databaseUrl,
  systemDatabasePoolSize: input.poolSize,
  logLevel: 'error',
});
await DBOS.launch();

/** Starts `count` workflows, `concurrency` in flight; resolves with workflows per second. */
async function run(count: number): Promise<number> {
  let started = 0;
  const begin = performance.now();
  await Promise.all(
    Array.from({ length: input.concurrency }, async () => {
      while (started < count) {
        started++;
        const id = randomUUID();
        const handle = await DBOS.startWorkflow(benchWorkflow, { workflowID: id })(id);
        await handle.getResult();
      }
    }),
  );
  return (count * 1000) / (performance.now() - begin);
}

const rates: number[] = [];
try {
  await run(input.warmup);
  for (let i = 0; i < input.repetitions; i++) {
    rates.push(await run(input.workflows));
    process.stderr.write(`dbos repetition ${i + 1}: ${rates[i]!.toFixed(0)}/s\n`);
  }
  const { rows } = await business.query<{ n: number }>('select count(*)::int as n from bench_ledger');
  const expected = 3 * (input.warmup + input.repetitions * input.workflows);
  if (rows[0]!.n !== expected) throw new Error(`DBOS wrote ${rows[0]!.n} ledger rows, expected ${expected}`);
} finally {
  await DBOS.shutdown();
  await business.end();
}
process.stdout.write(`${JSON.stringify({ rates, peakRssMb: process.resourceUsage().maxRSS / 1024 })}\n`);

import os from 'node:os';
import { Command, InvalidArgumentError, Option } from 'commander';
import { queueDefaults } from '../shared/defaults.js';
import type { QueueType } from '../shared/queue-type.js';
import { measureDbos } from './dbos.js';
import { createBenchEnv, servicesFromEnv, truncateRunTables } from './env.js';
import { measureHandlerLatency, measureSagaLatency } from './latency.js';
import { startLive } from './live.js';
import {
  measurePipelineBaseline,
  measurePipelineBatchedBaseline,
  measureWorker,
  type PipelineSettings,
  type WorkerRun,
} from './pipeline.js';
import { progress, progressDone } from './progress.js';
import { measureRelay, measureRelayBaseline, type RelaySettings } from './relay.js';
import { type BenchReport, checkGoals, type RelayBacklog, relayBacklogMet, table } from './report.js';
import { measureSagas, sagasWork } from './saga.js';
import { measureSagaBaseline } from './saga-baseline.js';
import { runSoak } from './soak.js';
import { median, round, roundOrNull } from './stats.js';
import { startNoopOtlpReceiver } from './tracing.js';
import { peakRssMb, probeWorkerCli } from './workers.js';

interface Options {
  json?: boolean;
  soak?: boolean;
  soakMinutes: number;
  concurrency: number;
  workers: number;
  batchSize?: number;
  scaling: number[];
  repetitions: number;
  messages: number;
  relayRows: number[];
  relayBatchSize: number;
  relayConcurrency: number;
  sagas: number;
  latencySeconds: number;
  latencyRate: number;
  quick?: boolean;
  cpuProf?: string;
  workerArgs: string;
  relayArgs: string;
  only?: string;
  keep?: boolean;
  tracing?: boolean;
  queueType: QueueType;
}

const integer =
  (min: number, max = Number.MAX_SAFE_INTEGER) =>
  (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}`);
    }
    return n;
  };

/** A comma-separated list of distinct whole numbers, ascending. */
const integers = (min: number, max: number) => (value: string) => {
  const list = value.split(',').map((item) => integer(min, max)(item.trim()));
  if (list.some((n, i) => i > 0 && n <= list[i - 1]!)) {
    throw new InvalidArgumentError('expected distinct numbers in ascending order, e.g. 1,2,4');
  }
  return list;
};

const PARTS = ['pipeline', 'relay', 'live', 'dbos', 'saga-limit', 'scaling'];

const program = new Command('bench')
  .description('durable-worker benchmark: throughput and latency against raw baselines and DBOS, in one run')
  .option('--json', 'print one JSON object as the last line of stdout')
  .option('--soak', 'steady load for --soak-minutes, reporting throughput and RSS per minute')
  .option('--soak-minutes <n>', 'length of the soak', integer(1), 10)
  .option('--concurrency <n>', 'worker --concurrency, baseline and DBOS concurrency', integer(1), 10)
  .option(
    '--workers <n>',
    '`dw worker` processes for the pipeline and the sagas (the baselines and DBOS get n x concurrency)',
    integer(1, 16),
    1,
  )
  .option(
    '--batch-size <n>',
    'messages per transaction of the raw batched baseline, and `dw worker --batch-size` when that exists ' +
      "(default: the worker's own default, or 10 if it has none)",
    integer(1, 1000),
  )
  .option(
    '--scaling <counts>',
    'the scaling part: pipeline throughput with this many worker processes each (starting at 1)',
    integers(1, 16),
    [1, 2, 4],
  )
  .option('--repetitions <n>', 'measured repetitions of each part (medians are reported)', integer(1), 3)
  .option('--messages <n>', 'pipeline messages per repetition (after the warm-up)', integer(100), 6000)
  .option(
    '--relay-rows <list>',
    'pending outbox rows when the relay clock starts, one relay measurement per backlog (after the warm-up)',
    integers(100, 10_000_000),
    [30000, 150000],
  )
  .option('--relay-batch-size <n>', 'dw relay --batch-size, and the baseline addBulk size', integer(1), 500)
  .option('--relay-concurrency <n>', 'dw relay --concurrency, and the baseline loops', integer(1), 2)
  .option('--sagas <n>', 'sagas per repetition (ours and DBOS)', integer(10), 1000)
  .option('--latency-seconds <n>', 'length of each light-load latency phase', integer(2), 10)
  .option('--latency-rate <n>', 'messages (and sagas) per second in the latency phases', integer(1), 50)
  .option('--quick', 'small sizes, one repetition: a smoke run, not figures')
  .option('--cpu-prof <dir>', 'write V8 CPU profiles of the worker and relay children to <dir>')
  .option('--worker-args <args>', 'extra `dw worker` arguments (tuning experiments)', '')
  .option('--relay-args <args>', 'extra `dw relay` arguments (tuning experiments)', '')
  .addOption(
    new Option('--queue-type <type>', "the work queue's type (every worker and the bench's publisher)")
      .choices(['quorum', 'classic'])
      .default(queueDefaults.queueType),
  )
  .option('--keep', 'keep the bench databases, queues and keys afterwards (to look into them)')
  .option(
    '--tracing',
    'start the OpenTelemetry SDK in the dw children, exporting to a local no-op OTLP receiver (compare with a run without)',
  )
  .option(
    '--only <parts>',
    `comma-separated subset of ${PARTS.join(',')} (tuning; the parts not run are null in the JSON)`,
  )
  .parse();

const opts = program.opts<Options>();
if (opts.quick) {
  opts.repetitions = 1;
  opts.messages = Math.min(opts.messages, 1500);
  // Both backlogs still, smaller: the smoke run goes through every code path.
  opts.relayRows = opts.relayRows.map((rows, i) => Math.min(rows, 5000 * (i + 1)));
  opts.sagas = Math.min(opts.sagas, 200);
  opts.latencySeconds = Math.min(opts.latencySeconds, 4);
}
if (opts.scaling[0] !== 1) {
  process.stderr.write('bench: --scaling starts at 1 (its ratios are to one worker process)\n');
  process.exit(1);
}
const split = (args: string) => args.split(/\s+/).filter(Boolean);
const nodeArgs = opts.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProf}`] : [];
// Batching as users get it: the worker's own default unless --batch-size says otherwise, and the
// raw batched baseline sized like it.
const workerCli = await probeWorkerCli();
const batchSize = opts.batchSize ?? workerCli.batchSize.default ?? 10;
if (opts.batchSize !== undefined && !workerCli.batchSize.supported) {
  progress(
    `this dw worker has no --batch-size: it handles messages one by one; ${opts.batchSize} sizes the raw batched baseline only`,
  );
}
// Saga steps per transaction of the raw batched saga baseline: the worker's saga batch default, or
// the message batch size.
const sagaBatchSize = workerCli.sagaBatchSize.default ?? batchSize;
const workerArgs = [
  ...(opts.batchSize !== undefined && workerCli.batchSize.supported
    ? ['--batch-size', String(opts.batchSize)]
    : []),
  ...split(opts.workerArgs),
];
const relayArgs = [
  '--batch-size',
  String(opts.relayBatchSize),
  '--concurrency',
  String(opts.relayConcurrency),
  ...split(opts.relayArgs),
];

const parts = new Set((opts.only ?? PARTS.join(',')).split(','));
for (const part of parts) {
  if (!PARTS.includes(part)) {
    process.stderr.write(`bench: --only takes ${PARTS.join(', ')}; got "${part}"\n`);
    process.exit(1);
  }
}
const receiver = opts.tracing ? await startNoopOtlpReceiver() : undefined;
const loadBefore = os.loadavg();
const env = await createBenchEnv(servicesFromEnv(), opts.queueType);
let failed = false;
const cleanupOnSignal = () => {
  progress('interrupted: cleaning up');
  void env.teardown().finally(() => process.exit(130));
};
process.once('SIGINT', cleanupOnSignal);
process.once('SIGTERM', cleanupOnSignal);
try {
  if (opts.soak) {
    const soak = await runSoak(env, {
      minutes: opts.soakMinutes,
      concurrency: opts.concurrency,
      workerArgs,
      relayArgs,
      nodeArgs,
    });
    progressDone();
    process.stdout.write(`${soak.table}\n`);
    if (opts.json) process.stdout.write(`${JSON.stringify(soak.report)}\n`);
  } else {
    const report = await runAll();
    progressDone();
    process.stdout.write(`${table(report, opts.latencyRate)}\n`);
    if (opts.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  }
} catch (error) {
  failed = true;
  progressDone();
  process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
} finally {
  progress(
    opts.keep ? `kept database ${env.databaseUrl}` : 'cleaning up the bench databases, queues and keys',
  );
  if (!opts.keep)
    await env.teardown().catch((error) => process.stderr.write(`bench: cleanup failed: ${error}\n`));
  progressDone();
  await receiver?.close();
}
process.exit(failed ? 1 : 0);

async function runAll(): Promise<BenchReport> {
  const reps = opts.repetitions;
  const peaks = { worker: 0, relay: 0 };
  const pipeline = await runPipeline(peaks);
  const relay = await runRelay(peaks);
  const live = await runLive(peaks);
  const scaling = await runScaling(peaks);

  const dbos = await runDbos();
  const sagaLimit = await runSagaLimit();

  const sagaPerSec = live.sagasAvailable ? median(live.sagaRates) : Number.NaN;
  const dbosPerSec = median(dbos.rates);
  const relayFirst = relay.backlogs[0];
  const report = {
    pipeline: {
      perSec: roundOrNull(median(pipeline.worker), 1),
      baselinePerSec: roundOrNull(median(pipeline.perMessage), 1),
      ratio: roundOrNull(pairedRatio(pipeline.worker, pipeline.perMessage), 3),
      batchedBaselinePerSec: roundOrNull(median(pipeline.batched), 1),
      batchedRatio: roundOrNull(pairedRatio(pipeline.worker, pipeline.batched), 3),
      batchHandlerPerSec: roundOrNull(median(pipeline.batchHandler), 1),
      batchHandlerRatio: roundOrNull(pairedRatio(pipeline.batchHandler, pipeline.perMessage), 3),
      batchHandlerBatchedRatio: roundOrNull(pairedRatio(pipeline.batchHandler, pipeline.batched), 3),
      batchSize,
      workers: opts.workers,
    },
    relay: {
      perSec: relayFirst?.perSec ?? null,
      baselinePerSec: relayFirst?.baselinePerSec ?? null,
      ratio: relayFirst?.ratio ?? null,
      backlogs: relay.backlogs,
    },
    saga: {
      perSec: roundOrNull(sagaPerSec, 1),
      dbosPerSec: roundOrNull(dbosPerSec, 1),
      ratio: roundOrNull(sagaPerSec / dbosPerSec, 3),
      workers: opts.workers,
      batchedBaselinePerSec: roundOrNull(median(sagaLimit), 1),
      batchedRatio: roundOrNull(sagaPerSec / median(sagaLimit), 3),
      batchSize: sagaBatchSize,
    },
    latency: {
      handlerP50Ms: roundOrNull(live.handlerLatency.p50Ms, 1),
      handlerP99Ms: roundOrNull(live.handlerLatency.p99Ms, 1),
      sagaP50Ms: live.sagaLatency ? roundOrNull(live.sagaLatency.p50Ms, 1) : null,
      sagaP99Ms: live.sagaLatency ? roundOrNull(live.sagaLatency.p99Ms, 1) : null,
    },
    memory: {
      workerRssMb: peaks.worker > 0 ? round(peaks.worker, 1) : null,
      relayRssMb: peaks.relay > 0 ? round(peaks.relay, 1) : null,
    },
    scaling,
    meta: {
      machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.release()}`,
      node: process.version,
      concurrency: opts.concurrency,
      workers: opts.workers,
      queueType: opts.queueType,
      repetitions: reps,
      pipelineMessages: opts.messages,
      // The first backlog, as before; every one in relayBacklogs.
      relayRows: opts.relayRows[0],
      relayBacklogs: opts.relayRows,
      relayBatchSize: opts.relayBatchSize,
      relayConcurrency: opts.relayConcurrency,
      sagas: opts.sagas,
      dbosPeakRssMb: roundOrNull(dbos.peakRssMb, 1),
      // What the worker children ran with: its --batch-size (null: the option does not exist in this
      // build) and whether the bench passed one or left the worker's default.
      workerBatchSize: workerCli.batchSize.supported
        ? (opts.batchSize ?? workerCli.batchSize.default ?? null)
        : null,
      workerBatchSizeSource: !workerCli.batchSize.supported
        ? 'unsupported'
        : opts.batchSize !== undefined
          ? 'bench --batch-size'
          : 'worker default',
      workerSagaBatchSize: workerCli.sagaBatchSize.supported
        ? (workerCli.sagaBatchSize.default ?? null)
        : null,
      workerArgs,
      samples: {
        pipeline: pipeline.worker.map((v) => round(v)),
        pipelineBatchHandler: pipeline.batchHandler.map((v) => round(v)),
        pipelineBaseline: pipeline.perMessage.map((v) => round(v)),
        pipelineBatchedBaseline: pipeline.batched.map((v) => round(v)),
        relay: relay.samples[0]?.relay ?? [],
        relayBaseline: relay.samples[0]?.baseline ?? [],
        relayByBacklog: relay.samples,
        saga: live.sagaRates.map((v) => round(v, 1)),
        dbos: dbos.rates.map((v) => round(v, 1)),
        sagaBatchedBaseline: sagaLimit.map((v) => round(v, 1)),
        handlerLatencySamples: live.handlerLatency.samples,
        sagaLatencySamples: live.sagaLatency?.samples ?? 0,
      },
      latencyRatePerSec: opts.latencyRate,
      sagasMeasured: live.sagasAvailable,
      parts: [...parts],
      // With --tracing: how many OTLP exports the no-op receiver took (0 would mean no spans left).
      tracing: receiver ? { otlpExports: receiver.requests() } : false,
      loadAverageBefore: loadBefore.map((v) => round(v, 1)),
      loadAverageAfter: os.loadavg().map((v) => round(v, 1)),
    },
  };
  return { ...report, goals: checkGoals(report) };
}

/** DBOS Transact: as many sagas in flight as our workers run together, in its own process. */
async function runDbos(): Promise<{ rates: number[]; peakRssMb: number }> {
  if (!parts.has('dbos')) return { rates: [], peakRssMb: Number.NaN };
  const concurrency = opts.concurrency * opts.workers;
  progress(`DBOS: ${opts.repetitions} x ${opts.sagas} three-step workflows at concurrency ${concurrency}`);
  return measureDbos(env, {
    workflows: opts.sagas,
    warmup: Math.round(opts.sagas / 4),
    repetitions: opts.repetitions,
    concurrency,
    // As large as our worker's pool (concurrency + saga concurrency + 4), per worker process; capped
    // so that it stays well within Postgres' default 100 connections.
    poolSize: Math.min(64, (opts.concurrency + 10 + 4) * opts.workers),
  });
}

/**
 * The saga part's physical limit: our saga's writes as raw batched transactions (saga-baseline.ts),
 * a warm-up round, then the repetitions.
 */
async function runSagaLimit(): Promise<number[]> {
  if (!parts.has('saga-limit')) return [];
  const settings = { sagas: opts.sagas, batchSize: sagaBatchSize, loops: opts.concurrency * opts.workers };
  progress(`saga limit: warm-up, raw pg, ${sagaBatchSize} sagas per transaction`);
  await measureSagaBaseline(env, { ...settings, sagas: Math.round(opts.sagas / 4) });
  const rates: number[] = [];
  for (let rep = 1; rep <= opts.repetitions; rep++) {
    progress(
      `saga limit ${rep}/${opts.repetitions}: ${opts.sagas} sagas, raw pg, ${sagaBatchSize} per transaction`,
    );
    rates.push(await measureSagaBaseline(env, settings));
  }
  return rates;
}

type Peaks = { worker: number; relay: number };

/**
 * Pipeline: a discarded warm-up round, then repetitions of the workers and the two raw baselines
 * interleaved, so that all three see the same machine (caches, autovacuum, other load).
 */
async function runPipeline(peaks: Peaks) {
  const settings: PipelineSettings = {
    messages: opts.messages,
    warmup: Math.round(opts.messages / 6),
    concurrency: opts.concurrency,
    workers: opts.workers,
    batchSize,
    workerArgs,
    nodeArgs,
  };
  const worker: number[] = [];
  const batchHandler: number[] = [];
  const perMessage: number[] = [];
  const batched: number[] = [];
  for (let rep = 0; parts.has('pipeline') && rep <= opts.repetitions; rep++) {
    const round0 = rep === 0;
    const run = round0 ? { ...settings, messages: Math.round(settings.messages / 3) } : settings;
    const label = `pipeline ${round0 ? 'warm-up' : `${rep}/${opts.repetitions}`}`;
    progress(`${label}: ${opts.workers === 1 ? 'worker' : `${opts.workers} workers`}`);
    const w = await measureWorker(env, run);
    peaks.worker = Math.max(peaks.worker, w.peakRssMb);
    progress(
      `${label}: batch handler (handler per message ${w.perSec.toFixed(0)}/s, ${w.workerCpuMsPerMessage.toFixed(3)} worker CPU ms/msg)`,
    );
    const wb = await measureWorker(env, { ...run, type: 'BenchPipelineBatch' });
    peaks.worker = Math.max(peaks.worker, wb.peakRssMb);
    progress(
      `${label}: raw pg baseline, 1 message per transaction (batch handler ${wb.perSec.toFixed(0)}/s, ${wb.workerCpuMsPerMessage.toFixed(3)} worker CPU ms/msg)`,
    );
    const b = await measurePipelineBaseline(env, run);
    progress(
      `${label}: raw pg baseline, ${batchSize} messages per transaction (per message ${b.toFixed(0)}/s)`,
    );
    const bb = await measurePipelineBatchedBaseline(env, run);
    if (!round0) {
      worker.push(w.perSec);
      batchHandler.push(wb.perSec);
      perMessage.push(b);
      batched.push(bb);
    }
  }
  return { worker, batchHandler, perMessage, batched };
}

/**
 * Relay at each backlog (30k and 150k pending rows by default: its cost per row must not grow with
 * the backlog): one discarded warm-up round at the first, then repetitions of relay and raw
 * `addBulk` interleaved.
 */
async function runRelay(peaks: Peaks) {
  const backlogs: RelayBacklog[] = [];
  const samples: Array<{ rows: number; relay: number[]; baseline: number[] }> = [];
  for (const [index, rows] of opts.relayRows.entries()) {
    const settings: RelaySettings = {
      rows,
      warmup: Math.round(rows / 6),
      batchSize: opts.relayBatchSize,
      concurrency: opts.relayConcurrency,
      relayArgs: split(opts.relayArgs),
      nodeArgs,
    };
    const relayRates: number[] = [];
    const bullBaseline: number[] = [];
    // Not run (--only): the backlog's figures stay null, and the table says n/a.
    for (let rep = index === 0 ? 0 : 1; parts.has('relay') && rep <= opts.repetitions; rep++) {
      const round0 = rep === 0;
      const run = round0 ? { ...settings, rows: Math.round(settings.rows / 3) } : settings;
      const label = `relay ${rows} pending ${round0 ? 'warm-up' : `${rep}/${opts.repetitions}`}`;
      progress(`${label}: dw relay`);
      // Each repetition its own BullMQ prefix (ours and the baseline's).
      const prefixRep = index * (opts.repetitions + 1) + rep;
      const r = await measureRelay(env, run, prefixRep);
      peaks.relay = Math.max(peaks.relay, r.peakRssMb);
      progress(`${label}: raw addBulk baseline (relay ${r.perSec.toFixed(0)}/s)`);
      const b = await measureRelayBaseline(env, run, prefixRep);
      if (!round0) {
        relayRates.push(r.perSec);
        bullBaseline.push(b);
      }
    }
    const ratio = roundOrNull(pairedRatio(relayRates, bullBaseline), 3);
    backlogs.push({
      rows,
      perSec: roundOrNull(median(relayRates), 1),
      baselinePerSec: roundOrNull(median(bullBaseline), 1),
      ratio,
      met: relayBacklogMet(ratio),
    });
    samples.push({
      rows,
      relay: relayRates.map((v) => round(v)),
      baseline: bullBaseline.map((v) => round(v)),
    });
  }
  return { backlogs, samples };
}

/** Workers and a relay together, as deployed: light-load latency, then saga throughput. */
async function runLive(peaks: Peaks) {
  let handlerLatency = { p50Ms: Number.NaN, p99Ms: Number.NaN, samples: 0 };
  let sagaLatency: Awaited<ReturnType<typeof measureSagaLatency>> | undefined;
  const sagaRates: number[] = [];
  let sagasAvailable = false;
  if (!parts.has('live')) return { handlerLatency, sagaLatency, sagaRates, sagasAvailable };
  const reps = opts.repetitions;
  await truncateRunTables(env.knex);
  progress(`latency: starting ${opts.workers === 1 ? 'a worker' : `${opts.workers} workers`} and a relay`);
  const live = await startLive(env, {
    concurrency: opts.concurrency,
    workers: opts.workers,
    workerArgs,
    relayArgs,
    nodeArgs,
  });
  try {
    const latency = { ratePerSec: opts.latencyRate, durationSec: opts.latencySeconds, warmupSec: 1 };
    progress(`latency: handler at ${latency.ratePerSec} msg/s for ${latency.durationSec} s`);
    handlerLatency = await measureHandlerLatency(env, latency);
    progress('sagas: probing the saga runner');
    sagasAvailable = await sagasWork(env);
    if (sagasAvailable) {
      progress(`latency: 3-step sagas at ${latency.ratePerSec}/s for ${latency.durationSec} s`);
      sagaLatency = await measureSagaLatency(env, latency);
      progress('sagas: warm-up');
      await measureSagas(env, Math.round(opts.sagas / 4));
      for (let rep = 1; rep <= reps; rep++) {
        progress(`sagas ${rep}/${reps}: ${opts.sagas} sagas end to end`);
        sagaRates.push(await measureSagas(env, opts.sagas));
      }
    } else {
      progress('sagas: the saga runner did not complete a saga; saga figures are left out');
    }
  } finally {
    peaks.worker = Math.max(peaks.worker, peakRssMb(live.workers));
    peaks.relay = Math.max(peaks.relay, live.relay.peakRssMb());
    await live.stop();
  }
  return { handlerLatency, sagaLatency, sagaRates, sagasAvailable };
}

/**
 * Scaling: the pipeline drained by 1, 2, 4 worker processes, the counts interleaved within each
 * repetition (after one discarded warm-up round), with the machine's CPU use beside: on 2 cores shared
 * with Postgres, RabbitMQ and Redis, processes add throughput only while cores are idle.
 */
async function runScaling(peaks: Peaks): Promise<BenchReport['scaling']> {
  if (!parts.has('scaling')) return null;
  const counts = opts.scaling;
  const settings: PipelineSettings = {
    messages: opts.messages,
    warmup: Math.round(opts.messages / 6),
    concurrency: opts.concurrency,
    workers: 1,
    batchSize,
    workerArgs,
    nodeArgs,
  };
  const runs = counts.map(() => [] as WorkerRun[]);
  for (let rep = 0; rep <= opts.repetitions; rep++) {
    for (const [i, workers] of counts.entries()) {
      if (rep === 0 && i > 0) break;
      const round0 = rep === 0;
      progress(
        `scaling ${round0 ? 'warm-up' : `${rep}/${opts.repetitions}`}: pipeline with ${workers} worker process${workers === 1 ? '' : 'es'}`,
      );
      const run = round0
        ? { ...settings, workers, messages: Math.round(settings.messages / 3) }
        : { ...settings, workers };
      const w = await measureWorker(env, run);
      peaks.worker = Math.max(peaks.worker, w.peakRssMb);
      if (!round0) runs[i]!.push(w);
    }
  }
  const one = runs[0]!.map((r) => r.perSec);
  return {
    cores: os.cpus().length,
    points: counts.map((workers, i) => {
      const rates = runs[i]!.map((r) => r.perSec);
      return {
        workers,
        perSec: roundOrNull(median(rates), 1),
        ratioToOne: roundOrNull(pairedRatio(rates, one), 3),
        machineBusyPct: roundOrNull(median(runs[i]!.map((r) => r.machineBusyPct)), 1),
        workerCpuMsPerMessage: roundOrNull(median(runs[i]!.map((r) => r.workerCpuMsPerMessage)), 3),
        samples: rates.map((v) => round(v)),
      };
    }),
  };
}
/**
 * Median of the per-repetition ratios: each repetition's baseline ran right after its measurement,
 * so a ratio of a pair is robust to load that other processes put on the machine meanwhile.
 */
function pairedRatio(ours: readonly number[], baseline: readonly number[]): number {
  return median(ours.map((value, i) => value / baseline[i]!));
}

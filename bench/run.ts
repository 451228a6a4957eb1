import os from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import { measureDbos } from './dbos.js';
import { createBenchEnv, servicesFromEnv, truncateRunTables } from './env.js';
import { measureHandlerLatency, measureSagaLatency } from './latency.js';
import { startLive } from './live.js';
import { measurePipelineBaseline, measureWorker, type PipelineSettings } from './pipeline.js';
import { progress, progressDone } from './progress.js';
import { measureRelay, measureRelayBaseline, type RelaySettings } from './relay.js';
import { type BenchReport, checkGoals, table } from './report.js';
import { measureSagas, sagasWork } from './saga.js';
import { runSoak } from './soak.js';
import { median, round } from './stats.js';
import { startNoopOtlpReceiver } from './tracing.js';

interface Options {
  json?: boolean;
  soak?: boolean;
  soakMinutes: number;
  concurrency: number;
  repetitions: number;
  messages: number;
  relayRows: number;
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
}

const integer = (min: number) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected a whole number >= ${min}`);
  return n;
};

const program = new Command('bench')
  .description('durable-worker benchmark: throughput and latency against raw baselines and DBOS, in one run')
  .option('--json', 'print one JSON object as the last line of stdout')
  .option('--soak', 'steady load for --soak-minutes, reporting throughput and RSS per minute')
  .option('--soak-minutes <n>', 'length of the soak', integer(1), 10)
  .option('--concurrency <n>', 'worker --concurrency, baseline and DBOS concurrency', integer(1), 10)
  .option('--repetitions <n>', 'measured repetitions of each part (medians are reported)', integer(1), 3)
  .option('--messages <n>', 'pipeline messages per repetition (after the warm-up)', integer(100), 6000)
  .option('--relay-rows <n>', 'outbox rows per relay repetition (after the warm-up)', integer(100), 30000)
  .option('--relay-batch-size <n>', 'dw relay --batch-size, and the baseline addBulk size', integer(1), 500)
  .option('--relay-concurrency <n>', 'dw relay --concurrency, and the baseline loops', integer(1), 2)
  .option('--sagas <n>', 'sagas per repetition (ours and DBOS)', integer(10), 1000)
  .option('--latency-seconds <n>', 'length of each light-load latency phase', integer(2), 10)
  .option('--latency-rate <n>', 'messages (and sagas) per second in the latency phases', integer(1), 50)
  .option('--quick', 'small sizes, one repetition: a smoke run, not figures')
  .option('--cpu-prof <dir>', 'write V8 CPU profiles of the worker and relay children to <dir>')
  .option('--worker-args <args>', 'extra `dw worker` arguments (tuning experiments)', '')
  .option('--relay-args <args>', 'extra `dw relay` arguments (tuning experiments)', '')
  .option('--keep', 'keep the bench databases, queues and keys afterwards (to look into them)')
  .option(
    '--tracing',
    'start the OpenTelemetry SDK in the dw children, exporting to a local no-op OTLP receiver (compare with a run without)',
  )
  .option(
    '--only <parts>',
    'comma-separated subset of pipeline,relay,live,dbos (tuning; the JSON is then partial)',
  )
  .parse();

const opts = program.opts<Options>();
if (opts.quick) {
  opts.repetitions = 1;
  opts.messages = Math.min(opts.messages, 1500);
  opts.relayRows = Math.min(opts.relayRows, 5000);
  opts.sagas = Math.min(opts.sagas, 200);
  opts.latencySeconds = Math.min(opts.latencySeconds, 4);
}
const split = (args: string) => args.split(/\s+/).filter(Boolean);
const nodeArgs = opts.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProf}`] : [];
const workerArgs = split(opts.workerArgs);
const relayArgs = [
  '--batch-size',
  String(opts.relayBatchSize),
  '--concurrency',
  String(opts.relayConcurrency),
  ...split(opts.relayArgs),
];

const parts = new Set((opts.only ?? 'pipeline,relay,live,dbos').split(','));
for (const part of parts) {
  if (!['pipeline', 'relay', 'live', 'dbos'].includes(part)) {
    process.stderr.write(`bench: --only takes pipeline, relay, live, dbos; got "${part}"\n`);
    process.exit(1);
  }
}
const receiver = opts.tracing ? await startNoopOtlpReceiver() : undefined;
const loadBefore = os.loadavg();
const env = await createBenchEnv(servicesFromEnv());
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
    process.stdout.write(`${table(report)}\n`);
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

  // Pipeline: a discarded warm-up round, then worker and baseline repetitions interleaved, so
  // that both see the same machine (caches, autovacuum, other load).
  const pipeline: PipelineSettings = {
    messages: opts.messages,
    warmup: Math.round(opts.messages / 6),
    concurrency: opts.concurrency,
    workerArgs,
    nodeArgs,
  };
  const worker: number[] = [];
  const pgBaseline: number[] = [];
  for (let rep = 0; parts.has('pipeline') && rep <= reps; rep++) {
    const round0 = rep === 0;
    const settings = round0 ? { ...pipeline, messages: Math.round(pipeline.messages / 3) } : pipeline;
    progress(`pipeline ${round0 ? 'warm-up' : `${rep}/${reps}`}: worker`);
    const w = await measureWorker(env, settings);
    peaks.worker = Math.max(peaks.worker, w.peakRssMb);
    progress(
      `pipeline ${round0 ? 'warm-up' : `${rep}/${reps}`}: raw pg baseline (worker ${w.perSec.toFixed(0)}/s)`,
    );
    const b = await measurePipelineBaseline(env, settings);
    if (!round0) {
      worker.push(w.perSec);
      pgBaseline.push(b);
    }
  }

  const relay: RelaySettings = {
    rows: opts.relayRows,
    warmup: Math.round(opts.relayRows / 6),
    batchSize: opts.relayBatchSize,
    concurrency: opts.relayConcurrency,
    relayArgs: split(opts.relayArgs),
    nodeArgs,
  };
  const relayRates: number[] = [];
  const bullBaseline: number[] = [];
  for (let rep = 0; parts.has('relay') && rep <= reps; rep++) {
    const round0 = rep === 0;
    const settings = round0 ? { ...relay, rows: Math.round(relay.rows / 3) } : relay;
    progress(`relay ${round0 ? 'warm-up' : `${rep}/${reps}`}: dw relay`);
    const r = await measureRelay(env, settings, rep);
    peaks.relay = Math.max(peaks.relay, r.peakRssMb);
    progress(
      `relay ${round0 ? 'warm-up' : `${rep}/${reps}`}: raw addBulk baseline (relay ${r.perSec.toFixed(0)}/s)`,
    );
    const b = await measureRelayBaseline(env, settings, rep);
    if (!round0) {
      relayRates.push(r.perSec);
      bullBaseline.push(b);
    }
  }

  // Worker and relay together, as deployed: light-load latency, then saga throughput.
  let handlerLatency = { p50Ms: Number.NaN, p99Ms: Number.NaN, samples: 0 };
  let sagaLatency: Awaited<ReturnType<typeof measureSagaLatency>> | undefined;
  const sagaRates: number[] = [];
  let sagasAvailable = false;
  if (parts.has('live')) {
    await truncateRunTables(env.knex);
    progress('latency: starting a worker and a relay');
    const live = await startLive(env, { concurrency: opts.concurrency, workerArgs, relayArgs, nodeArgs });
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
      peaks.worker = Math.max(peaks.worker, live.worker.peakRssMb());
      peaks.relay = Math.max(peaks.relay, live.relay.peakRssMb());
      await live.stop();
    }
  }

  progress(`DBOS: ${reps} x ${opts.sagas} three-step workflows at concurrency ${opts.concurrency}`);
  const dbos = !parts.has('dbos')
    ? { rates: [], peakRssMb: 0 }
    : await measureDbos(env, {
        workflows: opts.sagas,
        warmup: Math.round(opts.sagas / 4),
        repetitions: reps,
        concurrency: opts.concurrency,
        // As large as our worker's pool (concurrency + saga concurrency + 4).
        poolSize: opts.concurrency + 10 + 4,
      });

  const pipelinePerSec = median(worker);
  const pipelineBase = median(pgBaseline);
  const relayPerSec = median(relayRates);
  const relayBase = median(bullBaseline);
  const sagaPerSec = sagasAvailable ? median(sagaRates) : null;
  const dbosPerSec = median(dbos.rates);
  const report = {
    pipeline: {
      perSec: round(pipelinePerSec, 1),
      baselinePerSec: round(pipelineBase, 1),
      ratio: round(pairedRatio(worker, pgBaseline), 3),
    },
    relay: {
      perSec: round(relayPerSec, 1),
      baselinePerSec: round(relayBase, 1),
      ratio: round(pairedRatio(relayRates, bullBaseline), 3),
    },
    saga: {
      perSec: sagaPerSec === null ? null : round(sagaPerSec, 1),
      dbosPerSec: round(dbosPerSec, 1),
      ratio: sagaPerSec === null ? null : round(sagaPerSec / dbosPerSec, 3),
    },
    latency: {
      handlerP50Ms: round(handlerLatency.p50Ms, 1),
      handlerP99Ms: round(handlerLatency.p99Ms, 1),
      sagaP50Ms: sagaLatency ? round(sagaLatency.p50Ms, 1) : null,
      sagaP99Ms: sagaLatency ? round(sagaLatency.p99Ms, 1) : null,
    },
    memory: { workerRssMb: round(peaks.worker, 1), relayRssMb: round(peaks.relay, 1) },
    meta: {
      machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.release()}`,
      node: process.version,
      concurrency: opts.concurrency,
      repetitions: reps,
      pipelineMessages: opts.messages,
      relayRows: opts.relayRows,
      relayBatchSize: opts.relayBatchSize,
      relayConcurrency: opts.relayConcurrency,
      sagas: opts.sagas,
      dbosPeakRssMb: round(dbos.peakRssMb, 1),
      samples: {
        pipeline: worker.map((v) => round(v)),
        pipelineBaseline: pgBaseline.map((v) => round(v)),
        relay: relayRates.map((v) => round(v)),
        relayBaseline: bullBaseline.map((v) => round(v)),
        saga: sagaRates.map((v) => round(v, 1)),
        dbos: dbos.rates.map((v) => round(v, 1)),
        handlerLatencySamples: handlerLatency.samples,
        sagaLatencySamples: sagaLatency?.samples ?? 0,
      },
      latencyRatePerSec: opts.latencyRate,
      sagasMeasured: sagasAvailable,
      parts: [...parts],
      // With --tracing: how many OTLP exports the no-op receiver took (0 would mean no spans left).
      tracing: receiver ? { otlpExports: receiver.requests() } : false,
      loadAverageBefore: loadBefore.map((v) => round(v, 1)),
      loadAverageAfter: os.loadavg().map((v) => round(v, 1)),
    },
  };
  return { ...report, goals: checkGoals(report) };
}

/**
 * Median of the per-repetition ratios: each repetition's baseline ran right after its measurement,
 * so a ratio of a pair is robust to load that other processes put on the machine meanwhile.
 */
function pairedRatio(ours: readonly number[], baseline: readonly number[]): number {
  return median(ours.map((value, i) => value / baseline[i]!));
}

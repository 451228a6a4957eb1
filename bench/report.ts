import { round } from './stats.js';

/** Relay throughput against raw `addBulk` with `rows` pending rows in the outbox when the clock starts. */
export interface RelayBacklog {
  rows: number;
  perSec: number | null;
  baselinePerSec: number | null;
  ratio: number | null;
  met: boolean | null;
}

/** Pipeline throughput of `workers` worker processes, and its ratio to one process. */
export interface ScalingPoint {
  workers: number;
  perSec: number | null;
  ratioToOne: number | null;
  /** Busy share of the machine's cores while they drained the queue. */
  machineBusyPct: number | null;
  workerCpuMsPerMessage: number | null;
  samples: number[];
}

/**
 * The `--json` document (docs/benchmarks.md): fields may be added, never renamed. A figure of a part
 * that did not run (`--only`) is null.
 */
export interface BenchReport {
  pipeline: {
    perSec: number | null;
    /** Raw `pg`, one transaction per message. */
    baselinePerSec: number | null;
    ratio: number | null;
    /** Raw `pg`, `batchSize` messages per transaction in multi-row inserts: the physical limit. */
    batchedBaselinePerSec: number | null;
    batchedRatio: number | null;
    /**
     * The same work through a batch handler (`defineBatchHandler`): its business rows in one
     * multi-row insert per batch, the statements the batched baseline runs.
     */
    batchHandlerPerSec: number | null;
    /** Batch handler against raw `pg`, one transaction per message. */
    batchHandlerRatio: number | null;
    /** Batch handler against the batched baseline: the runtime's share of the limit (the goal). */
    batchHandlerBatchedRatio: number | null;
    batchSize: number;
    workers: number;
  };
  /** perSec, baselinePerSec, ratio: the first backlog's (30k rows); every backlog in `backlogs`. */
  relay: {
    perSec: number | null;
    baselinePerSec: number | null;
    ratio: number | null;
    backlogs: RelayBacklog[];
  };
  saga: {
    perSec: number | null;
    dbosPerSec: number | null;
    ratio: number | null;
    workers: number;
    /** Our saga's writes as raw `pg` transactions of `batchSize` sagas: the physical limit (no goal). */
    batchedBaselinePerSec: number | null;
    batchedRatio: number | null;
    batchSize: number;
  };
  latency: {
    handlerP50Ms: number | null;
    handlerP99Ms: number | null;
    sagaP50Ms: number | null;
    sagaP99Ms: number | null;
  };
  memory: { workerRssMb: number | null; relayRssMb: number | null };
  /** Pipeline with 1, 2, 4 worker processes (`--scaling`); null when that part did not run. */
  scaling: { cores: number; points: ScalingPoint[] } | null;
  /** How it was measured: repetitions, sizes, concurrency, the machine. */
  meta: Record<string, unknown>;
  /** Met (true), not met (false), or not measured in this run (null). */
  goals: {
    pipelineRatio: boolean | null;
    pipelineBatchedRatio: boolean | null;
    relayRatio: boolean | null;
    sagaRatio: boolean | null;
    handlerP99: boolean | null;
    sagaP99: boolean | null;
    /** Measured by `--soak` only. */
    workerRssFlat: null;
  };
}

/** The goals of issue 11 (docs/benchmarks.md). */
export const goals = {
  /** Pipeline against raw per-message transactions. */
  pipeline: 1.5,
  /** Pipeline against raw batched transactions (the limit). */
  pipelineBatched: 0.6,
  /** Relay against raw addBulk, at every backlog. */
  relay: 0.8,
  /** 3-step sagas against DBOS. */
  saga: 1.5,
  handlerP99Ms: 10,
  sagaP99Ms: 50,
  /** Soak: worker RSS of the second half at most this much above the first half. */
  soakRssGrowthPct: 10,
} as const;

const atLeast = (value: number | null, goal: number) => (value === null ? null : value >= goal);
const below = (value: number | null, goal: number) => (value === null ? null : value < goal);

export function checkGoals(report: Omit<BenchReport, 'goals'>): BenchReport['goals'] {
  const relay = report.relay.backlogs.map((b) => b.met);
  return {
    pipelineRatio: atLeast(report.pipeline.ratio, goals.pipeline),
    // The limit runs multi-row statements, which a handler per message cannot: the batch handler
    // runs the same ones, so its ratio is the runtime's own share of the limit.
    pipelineBatchedRatio: atLeast(report.pipeline.batchHandlerBatchedRatio, goals.pipelineBatched),
    relayRatio: relay.includes(null) || relay.length === 0 ? null : relay.every(Boolean),
    sagaRatio: atLeast(report.saga.ratio, goals.saga),
    handlerP99: below(report.latency.handlerP99Ms, goals.handlerP99Ms),
    sagaP99: below(report.latency.sagaP99Ms, goals.sagaP99Ms),
    workerRssFlat: null,
  };
}

export function relayBacklogMet(ratio: number | null): boolean | null {
  return atLeast(ratio, goals.relay);
}

const fmt = (value: number | null, digits = 0) =>
  value === null || !Number.isFinite(value) ? 'n/a' : round(value, digits).toString();
const mark = (ok: boolean | null) => (ok === null ? 'n/a' : ok ? 'yes' : 'NO');
const thousands = (rows: number) => (rows % 1000 === 0 ? `${rows / 1000}k` : String(rows));

/** The human table printed on stdout (before the JSON line with `--json`). */
export function table(report: BenchReport, latencyRate: number): string {
  const p = report.pipeline;
  const processes = p.workers === 1 ? '' : ` (${p.workers} workers)`;
  const rows: string[][] = [
    ['measure', 'durable-worker', 'baseline', 'ratio', 'goal', 'met'],
    [
      `pipeline msg/s${processes}`,
      fmt(p.perSec),
      `${fmt(p.baselinePerSec)} (raw pg, 1 msg/tx)`,
      fmt(p.ratio, 2),
      `>= ${goals.pipeline}`,
      mark(report.goals.pipelineRatio),
    ],
    [
      '',
      '',
      `${fmt(p.batchedBaselinePerSec)} (raw pg, ${p.batchSize} msg/tx)`,
      fmt(p.batchedRatio, 2),
      '',
      '',
    ],
    [
      `  batch handler msg/s${processes}`,
      fmt(p.batchHandlerPerSec),
      `${fmt(p.baselinePerSec)} (raw pg, 1 msg/tx)`,
      fmt(p.batchHandlerRatio, 2),
      '',
      '',
    ],
    [
      '',
      '',
      `${fmt(p.batchedBaselinePerSec)} (raw pg, ${p.batchSize} msg/tx)`,
      fmt(p.batchHandlerBatchedRatio, 2),
      `>= ${goals.pipelineBatched}`,
      mark(report.goals.pipelineBatchedRatio),
    ],
    ...report.relay.backlogs.map((b) => [
      `relay rows/s, ${thousands(b.rows)} pending`,
      fmt(b.perSec),
      `${fmt(b.baselinePerSec)} (addBulk)`,
      fmt(b.ratio, 2),
      `>= ${goals.relay}`,
      mark(b.met),
    ]),
    [
      `saga (3 steps)/s${report.saga.workers === 1 ? '' : ` (${report.saga.workers} workers)`}`,
      fmt(report.saga.perSec, 1),
      `${fmt(report.saga.dbosPerSec, 1)} (DBOS)`,
      fmt(report.saga.ratio, 2),
      `>= ${goals.saga}`,
      mark(report.goals.sagaRatio),
    ],
    [
      '',
      '',
      `${fmt(report.saga.batchedBaselinePerSec, 1)} (raw pg, ${report.saga.batchSize} sagas/tx)`,
      fmt(report.saga.batchedRatio, 2),
      '',
      '',
    ],
    [
      `handler latency p50/p99 ms at ${latencyRate}/s`,
      `${fmt(report.latency.handlerP50Ms, 1)} / ${fmt(report.latency.handlerP99Ms, 1)}`,
      '',
      '',
      `p99 < ${goals.handlerP99Ms}`,
      mark(report.goals.handlerP99),
    ],
    [
      `saga latency p50/p99 ms at ${latencyRate}/s`,
      `${fmt(report.latency.sagaP50Ms, 1)} / ${fmt(report.latency.sagaP99Ms, 1)}`,
      '',
      '',
      `p99 < ${goals.sagaP99Ms}`,
      mark(report.goals.sagaP99),
    ],
    [
      'peak RSS MB worker/relay',
      `${fmt(report.memory.workerRssMb)} / ${fmt(report.memory.relayRssMb)}`,
      '',
      '',
      'flat in --soak',
      mark(report.goals.workerRssFlat),
    ],
  ];
  const out = [render(rows)];
  if (!report.scaling) out.push('', 'pipeline scaling with worker processes: n/a (not run)');
  else {
    out.push(
      '',
      `pipeline scaling with worker processes (${report.scaling.cores} cores, shared with Postgres, RabbitMQ and Redis):`,
      render([
        ['workers', 'msg/s', 'x 1 worker', 'machine CPU busy %', 'worker CPU ms/msg'],
        ...report.scaling.points.map((s) => [
          String(s.workers),
          fmt(s.perSec),
          fmt(s.ratioToOne, 2),
          fmt(s.machineBusyPct),
          fmt(s.workerCpuMsPerMessage, 2),
        ]),
      ]),
    );
  }
  return out.join('\n');
}

/** A markdown-style table with padded columns. */
export function render(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const line = (r: string[]) => `| ${r.map((cell, c) => cell.padEnd(widths[c]!)).join(' | ')} |`;
  const rule = `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`;
  return [line(rows[0]!), rule, ...rows.slice(1).map(line)].join('\n');
}

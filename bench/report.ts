import { round } from './stats.js';

/** The `--json` document (docs/benchmarks.md): fields may be added, never renamed. */
export interface BenchReport {
  pipeline: { perSec: number; baselinePerSec: number; ratio: number };
  relay: { perSec: number; baselinePerSec: number; ratio: number };
  saga: { perSec: number | null; dbosPerSec: number; ratio: number | null };
  latency: {
    handlerP50Ms: number;
    handlerP99Ms: number;
    sagaP50Ms: number | null;
    sagaP99Ms: number | null;
  };
  memory: { workerRssMb: number; relayRssMb: number };
  /** How it was measured: repetitions, sizes, concurrency, the machine. */
  meta: Record<string, unknown>;
  goals: { pipelineRatio: boolean; relayRatio: boolean; sagaRatio: boolean | null; sagaP99: boolean | null };
}

export const goals = { pipeline: 0.6, relay: 0.8, saga: 3, sagaP99Ms: 50 };

export function checkGoals(report: Omit<BenchReport, 'goals'>): BenchReport['goals'] {
  return {
    pipelineRatio: report.pipeline.ratio >= goals.pipeline,
    relayRatio: report.relay.ratio >= goals.relay,
    sagaRatio: report.saga.ratio === null ? null : report.saga.ratio >= goals.saga,
    sagaP99: report.latency.sagaP99Ms === null ? null : report.latency.sagaP99Ms < goals.sagaP99Ms,
  };
}

const fmt = (value: number | null, digits = 0) => (value === null ? 'n/a' : round(value, digits).toString());
const mark = (ok: boolean | null) => (ok === null ? 'n/a' : ok ? 'yes' : 'NO');

/** The human table printed on stdout (before the JSON line with `--json`). */
export function table(report: BenchReport): string {
  const rows: string[][] = [
    ['measure', 'durable-worker', 'baseline', 'ratio', 'goal', 'met'],
    [
      'pipeline msg/s',
      fmt(report.pipeline.perSec),
      `${fmt(report.pipeline.baselinePerSec)} (raw pg)`,
      fmt(report.pipeline.ratio, 2),
      `>= ${goals.pipeline}`,
      mark(report.goals.pipelineRatio),
    ],
    [
      'relay rows/s',
      fmt(report.relay.perSec),
      `${fmt(report.relay.baselinePerSec)} (addBulk)`,
      fmt(report.relay.ratio, 2),
      `>= ${goals.relay}`,
      mark(report.goals.relayRatio),
    ],
    [
      'saga (3 steps)/s',
      fmt(report.saga.perSec, 1),
      `${fmt(report.saga.dbosPerSec, 1)} (DBOS)`,
      fmt(report.saga.ratio, 2),
      `>= ${goals.saga}`,
      mark(report.goals.sagaRatio),
    ],
    [
      'handler latency p50/p99 ms',
      `${fmt(report.latency.handlerP50Ms, 1)} / ${fmt(report.latency.handlerP99Ms, 1)}`,
      '',
      '',
      '',
      '',
    ],
    [
      'saga latency p50/p99 ms',
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
      '',
      '',
    ],
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const line = (r: string[]) => `| ${r.map((cell, c) => cell.padEnd(widths[c]!)).join(' | ')} |`;
  const rule = `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`;
  return [line(rows[0]!), rule, ...rows.slice(1).map(line)].join('\n');
}

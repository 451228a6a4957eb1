import type { ErrorInfo } from '../shared/errors.js';
import type { SagaPhase } from '../shared/saga/jobs.js';
import type { SagaRow, SagaStatus, StepRow, StepStatus } from '../shared/saga/store.js';

/** The JSON shape of a saga (docs/contracts.md, "JSON shapes"); fields may be added, never renamed. */
export interface SagaView {
  id: string;
  name: string;
  /** The definition version the instance started with and runs to the end on. */
  version: number;
  /** Hash of that version's stage layout when the instance started; null if it started before versions existed. */
  fingerprint: string | null;
  status: SagaStatus;
  state: unknown;
  correlationId: string | null;
  createdAt: string;
  updatedAt: string;
  deadlineAt: string | null;
  lastError: ErrorInfo | null;
  /** When a worker lacking the instance's version last left it untouched, and what it said; else null. */
  unserved: { at: string; note: string } | null;
  steps?: StepView[];
}

export interface StepView {
  name: string;
  phase: SagaPhase;
  status: StepStatus;
  attempts: number;
  startedAt: string;
  finishedAt: string | null;
  error?: ErrorInfo;
}

export function sagaView(row: SagaRow, steps?: readonly StepRow[]): SagaView {
  return {
    id: row.id,
    name: row.name,
    version: row.definition_version,
    fingerprint: row.definition_fingerprint,
    status: row.status,
    state: row.state,
    correlationId: row.correlation_id,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
    deadlineAt: row.deadline_at?.toISOString() ?? null,
    lastError: row.last_error,
    unserved: row.unserved_at ? { at: row.unserved_at.toISOString(), note: row.unserved_note ?? '' } : null,
    ...(steps ? { steps: steps.map(stepView) } : {}),
  };
}

function stepView(row: StepRow): StepView {
  return {
    name: row.step,
    phase: row.phase,
    status: row.status,
    attempts: row.attempts,
    startedAt: row.started_at.toISOString(),
    finishedAt: row.finished_at?.toISOString() ?? null,
    ...(row.error ? { error: row.error } : {}),
  };
}

const pad = (text: string, width: number) => text.padEnd(width);

/** A readable timeline of one saga: what ran, in order, with times relative to the start. */
export function formatTimeline(saga: SagaView): string {
  const start = Date.parse(saga.createdAt);
  const since = (iso: string | null) => (iso ? `+${Date.parse(iso) - start} ms` : '');
  const lines = [
    `saga ${saga.id} (${saga.name}): ${saga.status}`,
    `  version ${saga.version}${saga.fingerprint ? ` (stages ${saga.fingerprint.slice(0, 12)})` : ''}`,
    `  started ${saga.createdAt}, last change ${saga.updatedAt}${saga.correlationId ? `, correlation ${saga.correlationId}` : ''}`,
  ];
  if (saga.lastError) lines.push(`  last error: ${saga.lastError.message}`);
  if (saga.unserved) lines.push(`  note: ${saga.unserved.at} ${saga.unserved.note}`);
  const steps = saga.steps ?? [];
  if (steps.length === 0) lines.push('  (no step has run yet)');
  const nameWidth = Math.max(4, ...steps.map((s) => s.name.length));
  for (const step of steps) {
    const mark =
      step.status === 'completed'
        ? step.phase === 'execute'
          ? '+'
          : '-'
        : step.status === 'failed'
          ? 'x'
          : '…';
    const attempts = `${step.attempts} attempt${step.attempts === 1 ? '' : 's'}`;
    const error = step.error && step.status !== 'completed' ? `  ${step.error.message}` : '';
    lines.push(
      `  ${mark} ${pad(since(step.finishedAt ?? step.startedAt), 10)} ${pad(step.phase === 'execute' ? 'run' : 'undo', 4)} ${pad(step.name, nameWidth)}  ${pad(step.status, 9)} ${attempts}${error}`,
    );
  }
  return lines.join('\n');
}

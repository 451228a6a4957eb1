import { ROOT_CONTEXT } from '@opentelemetry/api';
import type { SagaStepJob } from '../../shared/saga/jobs.js';
import { sagaQueue } from '../../shared/saga/jobs.js';
import { Attr, extractContext, inSpan, SpanKind, SpanStatusCode, tracingOn } from '../../shared/tracing.js';

/**
 * Runs one saga job (a step or compensation attempt) inside its span: a child of the context the
 * job carries (the span of the handler or step that scheduled it, or the relay's span that added
 * it to BullMQ). `eager`: run in the process that committed the previous step, not from BullMQ.
 */
export function inStepSpan<T>(
  job: SagaStepJob,
  headers: Record<string, unknown> | undefined,
  eager: boolean,
  run: () => Promise<T>,
): Promise<T> {
  if (!tracingOn()) return run();
  return inSpan(
    `${job.phase === 'execute' ? 'saga step' : 'saga compensation'} ${job.saga}/${job.step}`,
    {
      kind: eager ? SpanKind.INTERNAL : SpanKind.CONSUMER,
      parent: extractContext(headers, ROOT_CONTEXT),
      attributes: {
        [Attr.sagaId]: job.sagaId,
        [Attr.sagaName]: job.saga,
        [Attr.sagaStep]: job.step,
        [Attr.sagaPhase]: job.phase,
        [Attr.sagaAttempt]: job.attempt ?? 1,
        [Attr.sagaEager]: eager,
        ...(eager
          ? {}
          : {
              [Attr.system]: 'bullmq',
              [Attr.destination]: sagaQueue,
              [Attr.operationType]: 'process',
              [Attr.operationName]: 'process',
            }),
      },
    },
    async (span) => {
      const outcome = await run();
      if (span && typeof outcome === 'string') {
        span.setAttribute(Attr.outcome, outcome);
        if (outcome === 'failed') span.setStatus({ code: SpanStatusCode.ERROR, message: 'failed for good' });
      }
      return outcome;
    },
  );
}

/**
 * durable-worker/testing: run an app's handlers and sagas in-process against a real Postgres,
 * without RabbitMQ or Redis, with time under the test's control. See README, "Testing your app".
 */
export type { SagaView, StepView } from '../ops/saga-view.js';
export type { DeadLetterFilter, DeadLetterJson } from '../shared/dead-letters.js';
export type { Outcome as MessageOutcome } from '../worker/message-processor.js';
export type { StepOutcome } from '../worker/saga/step-runner.js';
export {
  createTestHarness,
  type HarnessEvent,
  type PublishedEvent,
  type PublishOptions,
  type SentJob,
  type TestHarness,
  type TestHarnessOptions,
} from './harness.js';

/** durable-worker's public API. */

export { createDashboard, type Dashboard, type DashboardOptions } from './ops/dashboard/server.js';
export type { RelayOptions } from './relay/options.js';
export { Relay } from './relay/relay.js';
export {
  type App,
  type AppInput,
  type BatchEntry,
  defineApp,
  defineBatchHandler,
  defineHandler,
  type HandlerContext,
  type HandlerDefinition,
  type HandlerOptions,
  loadApp,
  type NonEmptyBatch,
  type SendOptions,
  type StartSagaOptions,
} from './shared/app.js';
export { type Config, loadConfig, redactUrl } from './shared/config.js';
export { createKnex } from './shared/db/knex.js';
export { ensureDatabase, type Migration, migrate } from './shared/db/migrate.js';
export {
  queueDefaults,
  relayDefaults,
  retryPolicyDefaults,
  retryQueueName,
  sagaQueueName,
  stepRetryDefaults,
  workerDefaults,
  workQueueName,
} from './shared/defaults.js';
export type { Envelope, OutgoingMessage } from './shared/envelope.js';
export {
  ConcurrencyConflictError,
  ConfigError,
  ConnectionClosingError,
  DefinitionError,
  DurableWorkerError,
  describeCause,
  InvalidDestinationError,
  InvalidMessageError,
  InvalidOptionError,
  InvalidOrderingKeyError,
  NonRetryableError,
  NotMigratedError,
  OrderedPartitionsChangedError,
  OrderingPluginMissingError,
  PoisonMessageError,
  PublishNotConfirmedError,
  QueueTypeMismatchError,
  RedisClusterPrefixError,
  RedisUnstableError,
  RepeatedFailureError,
  SagaDeadlineError,
  SagaDefinitionChangedError,
  SagaNotFoundError,
  ServiceUnavailableError,
  StepTimeoutError,
  UnroutableError,
  UsageError,
  WaitTimeoutError,
  WorkerDiedError,
} from './shared/errors.js';
export { createLogger, type Logger } from './shared/logger.js';
export {
  orderedExchangeName,
  orderingKeyProblem,
} from './shared/ordering.js';
export type { Destination } from './shared/outbox.js';
export { assertExchange, publishMessages } from './shared/publisher.js';
export {
  consumedQueueOptions,
  declareConsumedQueue,
  deliveryLimitQueueName,
  type QueueType,
  queueTypes,
  retryQueueOptions,
} from './shared/queue-type.js';
export {
  assertRedisReachable,
  type CreateRedisOptions,
  createRedis,
  type RedisClient,
  type RedisConfig,
  type RedisMode,
} from './shared/redis.js';
export { decideRetry, type RetryPolicy, type RetryPolicyInput } from './shared/retry-policy.js';
export {
  defaultSagaVersion,
  defineSaga,
  diffLayouts,
  layoutFingerprint,
  SagaDefinition,
  type SagaOptions,
  type StageLayout,
  type StepContext,
  type StepOptions,
  type StepRetryPolicy,
} from './shared/saga/definition.js';
export { type WaitOptions, waitUntil } from './shared/wait.js';
export type { WorkerOptions } from './worker/options.js';
export { Worker } from './worker/worker.js';

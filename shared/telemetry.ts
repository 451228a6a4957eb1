import type { Logger } from './logger.js';
import { settledWithin } from './time.js';

/** A started OpenTelemetry SDK: `shutdown` flushes the spans not yet exported. */
export interface Telemetry {
  shutdown(): Promise<void>;
}

interface NodeSdk {
  start(): void;
  shutdown(): Promise<void>;
}

/**
 * True when the standard variables ask for traces to be exported: an OTLP endpoint, or a traces
 * exporter other than `none`, and the SDK not disabled.
 */
export function telemetryWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const exporter = env.OTEL_TRACES_EXPORTER?.trim();
  if (exporter) return exporter.toLowerCase() !== 'none';
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

// A variable, so that neither TypeScript nor a bundler pulls the SDK in: it is loaded only here.
const sdkModule = '@opentelemetry/sdk-node';

/**
 * Starts the OpenTelemetry Node SDK for `dw worker`, `dw relay` and `dw publish` when
 * telemetryWanted(): traces only (metrics are on `/metrics`), configured by the standard `OTEL_*`
 * variables (exporter, endpoint, protocol incl. `http/json`, headers, sampler, propagators,
 * resource attributes); `OTEL_SERVICE_NAME` defaults to `serviceName`. Otherwise nothing of the
 * SDK is loaded, and the library's spans go to the api's no-op tracer.
 */
export async function startTelemetry(
  serviceName: string,
  log: Logger,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Telemetry | undefined> {
  if (!telemetryWanted(env)) return undefined;
  let NodeSDK: new (config: Record<string, unknown>) => NodeSdk;
  try {
    ({ NodeSDK } = (await import(sdkModule)) as { NodeSDK: typeof NodeSDK });
  } catch (error) {
    log.warn(
      { err: error },
      'OTEL_* variables ask for tracing but @opentelemetry/sdk-node cannot be loaded: install it next to durable-worker (npm install @opentelemetry/sdk-node); running without exporting traces',
    );
    return undefined;
  }
  const named =
    Boolean(env.OTEL_SERVICE_NAME?.trim()) ||
    /(^|,)\s*service\.name\s*=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '');
  const sdk = new NodeSDK({
    ...(named ? {} : { serviceName }),
    // Metrics and logs have their own channels (/metrics, stdout) unless asked for explicitly.
    ...(env.OTEL_METRICS_EXPORTER?.trim() ? {} : { metricReaders: [] }),
    ...(env.OTEL_LOGS_EXPORTER?.trim() ? {} : { logRecordProcessors: [] }),
    instrumentations: [],
  });
  sdk.start();
  log.info(
    {
      serviceName: named ? env.OTEL_SERVICE_NAME : serviceName,
      exporter: env.OTEL_TRACES_EXPORTER || 'otlp',
      protocol: env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || 'http/protobuf',
    },
    'OpenTelemetry SDK started: exporting traces',
  );
  return {
    async shutdown() {
      try {
        // Bounded: an endpoint that does not answer must not hold the exit.
        await settledWithin(sdk.shutdown(), 5000);
      } catch (error) {
        log.warn({ err: error }, 'could not flush the last spans');
      }
    },
  };
}

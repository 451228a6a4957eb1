import type { Command } from 'commander';
import type { Config } from '../shared/config.js';
import type { OutgoingMessage } from '../shared/envelope.js';
import { UsageError } from '../shared/errors.js';
import { createLogger } from '../shared/logger.js';
import { orderedExchangeName } from '../shared/ordering.js';
import { assertExchange, publishMessages } from '../shared/publisher.js';
import { startTelemetry } from '../shared/telemetry.js';
import { config, withAmqpChannel } from './infra.js';
import { integer, jsonArgument, messageIdArgument, orderingKeyArgument, printJson } from './parse.js';
import { shown } from './render.js';

interface PublishOptions {
  data: unknown;
  id?: string;
  correlationId?: string;
  count: number;
  key?: string;
  json?: boolean;
}

export function registerPublish(program: Command): void {
  program
    .command('publish')
    .description('publish messages to DW_EXCHANGE (routing key = type), waiting for publisher confirms')
    .argument('<type>', 'message type, e.g. JoinMeeting')
    .requiredOption('--data <json>', 'payload as JSON, or @file.json', jsonArgument)
    .option('--id <id>', 'message id (default: a new uuid)', messageIdArgument)
    .option('--correlation-id <id>', 'correlation id (default: the message id)', messageIdArgument)
    .option(
      '--count <n>',
      'publish N messages with this payload (new ids), for load',
      integer(1, 10_000_000),
      1,
    )
    .option(
      '--key <key>',
      'ordering key: messages with the same key are handled one at a time, in publish order (published to <DW_EXCHANGE>.ordered)',
      orderingKeyArgument,
    )
    .option('--json', 'print {"published":[{"id","type"}]}')
    .action(async (type: string, opts: PublishOptions) => {
      if (opts.id && opts.count > 1)
        throw new UsageError('--id names one message; it cannot go with --count > 1');
      if (!/^[A-Za-z0-9_.:-]{1,255}$/.test(type)) {
        throw new UsageError(`message type ${shown(type)} may hold letters, digits and _ . : - only`);
      }
      const traceparent = process.env.TRACEPARENT?.trim() || undefined;
      if (traceparent && !/^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/.test(traceparent)) {
        throw new UsageError(
          `TRACEPARENT ${shown(traceparent)} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>); unset it or fix it`,
        );
      }
      const cfg = config();
      // Exports the producer spans when OTEL_* ask for it; flushed before the command ends.
      const telemetry = await startTelemetry(
        'dw-publish',
        createLogger({ level: cfg.logLevel, destination: 2 }),
      );
      try {
        await publish(cfg, type, opts, traceparent);
      } finally {
        await telemetry?.shutdown();
      }
    });
}

async function publish(cfg: Config, type: string, opts: PublishOptions, traceparent: string | undefined) {
  await withAmqpChannel(cfg, async (channel) => {
    // Keyed messages go to the ordered exchange, whose partitions keep each key in order.
    const exchange = opts.key === undefined ? cfg.exchange : orderedExchangeName(cfg.exchange);
    await assertExchange(channel, exchange);
    const orderingKey = opts.key;
    const messages = function* (): Generator<OutgoingMessage> {
      for (let i = 0; i < opts.count; i++) {
        // TRACEPARENT (the OpenTelemetry environment carrier) makes the publish part of a trace.
        yield {
          type,
          payload: opts.data,
          id: opts.id,
          correlationId: opts.correlationId,
          traceparent,
          orderingKey,
        };
      }
    };
    const { published, unroutable } = await publishMessages(channel, exchange, messages(), {
      mandatory: true,
    });
    if (unroutable > 0) {
      throw new UsageError(
        `${unroutable} of ${published.length} ${type} message(s) reached no queue on exchange ${exchange}: no app handles ${type} there yet${orderingKey === undefined ? '' : ' with ordered keys on'} (run \`dw migrate\` or start a worker first)`,
      );
    }
    if (opts.json) printJson({ published });
    else process.stdout.write(`published ${published.length} ${type} message(s) to ${exchange}\n`);
  });
}

import type { Command } from 'commander';
import type { OutgoingMessage } from '../shared/envelope.js';
import { UsageError } from '../shared/errors.js';
import { assertExchange, publishMessages } from '../shared/publisher.js';
import { config, withAmqpChannel } from './infra.js';
import { integer, jsonArgument, messageIdArgument, printJson } from './parse.js';
import { shown } from './render.js';

interface PublishOptions {
  data: unknown;
  id?: string;
  correlationId?: string;
  count: number;
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
    .option('--json', 'print {"published":[{"id","type"}]}')
    .action(async (type: string, opts: PublishOptions) => {
      if (opts.id && opts.count > 1)
        throw new UsageError('--id names one message; it cannot go with --count > 1');
      if (!/^[A-Za-z0-9_.:-]{1,255}$/.test(type)) {
        throw new UsageError(`message type ${shown(type)} may hold letters, digits and _ . : - only`);
      }
      const cfg = config();
      await withAmqpChannel(cfg, async (channel) => {
        await assertExchange(channel, cfg.exchange);
        const messages = function* (): Generator<OutgoingMessage> {
          for (let i = 0; i < opts.count; i++) {
            yield { type, payload: opts.data, id: opts.id, correlationId: opts.correlationId };
          }
        };
        const { published, unroutable } = await publishMessages(channel, cfg.exchange, messages(), {
          mandatory: true,
        });
        if (unroutable > 0) {
          throw new UsageError(
            `${unroutable} of ${published.length} ${type} message(s) reached no queue on exchange ${cfg.exchange}: no app handles ${type} there yet (run \`dw migrate\` or start a worker first)`,
          );
        }
        if (opts.json) printJson({ published });
        else process.stdout.write(`published ${published.length} ${type} message(s) to ${cfg.exchange}\n`);
      });
    });
}

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Closes, on the broker side, every AMQP connection whose client-provided name contains `marker`:
 * what the process sees when the broker restarts or the network drops it.
 */
export async function closeAmqpConnections(marker: string): Promise<number> {
  const { stdout } = await run('rabbitmqctl', ['-q', 'list_connections', 'pid', 'client_properties']);
  let closed = 0;
  for (const line of stdout.split('\n')) {
    const [pid, properties] = line.split('\t');
    if (!pid?.startsWith('<') || !properties?.includes(marker)) continue;
    await run('rabbitmqctl', ['-q', 'close_connection', pid, 'closed by a test']);
    closed++;
  }
  return closed;
}

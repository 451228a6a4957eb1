import { describe, expect, it } from 'vitest';
import { parseWorkerHelp } from '../../bench/workers.js';
import { workerDefaults } from '../../shared/defaults.js';
import { runCli } from '../support/cli.js';

describe('bench: reading `dw worker --help`', () => {
  it('finds a default that the help wraps onto the next line', () => {
    const help = [
      '  --batch-size <n>          deliveries at hand handled in one transaction (1:',
      '                            one by one) (default: 20)',
      '  --saga-batch-size <n>     saga steps per transaction (1: one each) (default:',
      '                            10)',
      '  --shutdown-grace <ms>     grace time on SIGTERM (default: 30000)',
    ].join('\n');
    expect(parseWorkerHelp(help)).toEqual({
      batchSize: { supported: true, default: 20 },
      sagaBatchSize: { supported: true, default: 10 },
    });
  });

  it('reads the defaults this build prints, at any terminal width', async () => {
    for (const columns of ['60', '80', '200']) {
      const result = await runCli(['worker', '--help'], { PATH: process.env.PATH, COLUMNS: columns });
      expect(result.code).toBe(0);
      expect(parseWorkerHelp(result.stdout)).toEqual({
        batchSize: { supported: true, default: workerDefaults.batchSize },
        sagaBatchSize: { supported: true, default: workerDefaults.sagaBatchSize },
      });
    }
  });

  it('says when an option is missing', () => {
    expect(parseWorkerHelp('  --concurrency <n>  handlers (default: 10)')).toEqual({
      batchSize: { supported: false },
      sagaBatchSize: { supported: false },
    });
  });
});

import type { Command } from 'commander';

/** `dw sagas list | show` (issue 3). */
export function registerSagas(_program: Command): void {}

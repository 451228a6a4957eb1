import type { Command } from 'commander';

/** `dw dlq list | show | replay | purge` (issue 4). */
export function registerDlq(_program: Command): void {}

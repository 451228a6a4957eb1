import type { Command } from 'commander';

/** `dw status` (issue 4). */
export function registerStatus(_program: Command): void {}

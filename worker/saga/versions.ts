import type { Knex } from 'knex';
import type { App } from '../../shared/app.js';
import type { Logger } from '../../shared/logger.js';
import type { SagaDefinition } from '../../shared/saga/definition.js';
import { markUnserved, readDefinitionVersion } from '../../shared/saga/store.js';

// biome-ignore lint/suspicious/noExplicitAny: sagas of any state type share the runner
type AnySaga = SagaDefinition<any>;

/** The definition a saga job runs on: the app's, or the version the app lacks, or none (unknown saga). */
export type ResolvedDefinition = { saga: AnySaga } | { missing: number } | undefined;

/**
 * Finds the definition each saga instance runs on: the version it started with, never another
 * one. A worker lacking that version leaves the instance alone and says so: a warning (once per
 * saga and version in this process) and a note on the saga row (`dw sagas show`).
 */
export class SagaVersions {
  private readonly warned = new Set<string>();

  constructor(
    private readonly app: App,
    private readonly knex: Knex,
    private readonly log: Logger,
  ) {}

  /** `job.version` when the job carries it, else the saga row's (jobs written before versions existed). */
  async resolve(job: { saga: string; sagaId: string; version?: number }): Promise<ResolvedDefinition> {
    const versions = this.app.sagaVersions.get(job.saga);
    if (!versions) return undefined;
    const version = job.version ?? (await readDefinitionVersion(this.knex, job.sagaId));
    // No saga row: the runner finds that out and answers not-applicable; any version plans nothing.
    if (version === undefined) return { saga: this.app.sagas.get(job.saga)! };
    const saga = versions.get(version);
    return saga ? { saga } : { missing: version };
  }

  /** The saga, name and version pairs this worker serves (the sweep resumes only these). */
  served(): Array<[string, number]> {
    return [...this.app.sagaVersions].flatMap(([name, versions]) =>
      [...versions.keys()].map((v): [string, number] => [name, v]),
    );
  }

  /** Says that this worker left `sagaId` alone because it lacks `version` of its saga. */
  async unserved(sagaName: string, sagaId: string, version: number): Promise<void> {
    const have = [...(this.app.sagaVersions.get(sagaName)?.keys() ?? [])].join(', ');
    const note = `a worker of app ${this.app.name} without version ${version} of saga ${sagaName} (it has ${have || 'none'}) left it untouched; a worker that has version ${version} runs it`;
    const key = `${sagaName}/${version}`;
    if (!this.warned.has(key)) {
      this.warned.add(key);
      this.log.warn(
        { saga: sagaName, version, has: have, sagaId },
        `saga ${sagaName} version ${version} is not in this app: its instances are left for a worker that has it (logged once per version)`,
      );
    }
    await markUnserved(this.knex, sagaId, note).catch((error) =>
      this.log.debug({ err: error, sagaId }, 'could not note the unserved saga version'),
    );
  }
}

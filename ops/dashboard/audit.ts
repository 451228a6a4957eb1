import type { Knex } from 'knex';

/** Plain database operations on dw_dashboard_audit: every replay and purge done from the dashboard. */

export interface AuditEntry {
  id: number;
  at: Date;
  actor: string;
  action: 'replay' | 'purge';
  selection: unknown;
  /** The dead letters acted on, with what happened to each. */
  entries: Array<{ id: number; messageId?: string; outcome: string }>;
  /** The dry-run result the action followed. */
  preview: unknown;
  result: unknown;
}

export async function insertAudit(knex: Knex, entry: Omit<AuditEntry, 'id' | 'at'>): Promise<number> {
  const { rows } = await knex.raw<{ rows: [{ id: string }] }>(
    `insert into dw_dashboard_audit (actor, action, selection, entries, preview, result)
     values (?, ?, ?::jsonb, ?::jsonb, ?::jsonb, ?::jsonb) returning id`,
    [
      entry.actor,
      entry.action,
      JSON.stringify(entry.selection),
      JSON.stringify(entry.entries),
      JSON.stringify(entry.preview ?? null),
      JSON.stringify(entry.result),
    ],
  );
  return Number(rows[0].id);
}

/** Newest first, with the total. */
export async function listAudit(
  knex: Knex,
  page: { limit: number; offset: number },
): Promise<{ rows: AuditEntry[]; total: number }> {
  const { rows } = await knex.raw<{ rows: Array<AuditEntry & { total: number }> }>(
    `select *, count(*) over ()::int as total from dw_dashboard_audit order by id desc limit ? offset ?`,
    [page.limit, page.offset],
  );
  return {
    rows: rows.map(({ total: _, ...row }) => ({ ...row, id: Number(row.id) })),
    total: rows[0]?.total ?? 0,
  };
}

/** What the dashboard did to one message (by message id: a replayed entry that fails again gets a new id). */
export async function auditForMessage(knex: Knex, messageId: string, limit: number): Promise<AuditEntry[]> {
  const { rows } = await knex.raw<{ rows: AuditEntry[] }>(
    `select * from dw_dashboard_audit where entries @> ?::jsonb order by id desc limit ?`,
    [JSON.stringify([{ messageId }]), limit],
  );
  return rows.map((row) => ({ ...row, id: Number(row.id) }));
}

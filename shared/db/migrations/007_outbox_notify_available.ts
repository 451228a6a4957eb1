import type { Knex } from 'knex';

export const name = '007_outbox_notify_available';

export async function up(knex: Knex): Promise<void> {
  // Only rows the relay may deliver now wake it. A worker running saga steps eagerly writes the
  // next step's row leased (available later) with every step: waking every relay loop for those
  // cost each loop an empty claim per commit, a busy core at 50 sagas/s, and the latency with it.
  // A lease that ends is found by the relay's poll, as before.
  await knex.raw(`
    create or replace function dw_outbox_notify() returns trigger language plpgsql as $$
    begin
      if exists (select 1 from dw_outbox_inserted where available_at <= now()) then
        perform pg_notify('dw_outbox', '');
      end if;
      return null;
    end $$`);
  await knex.raw('drop trigger dw_outbox_notify on dw_outbox');
  await knex.raw(`
    create trigger dw_outbox_notify after insert on dw_outbox
    referencing new table as dw_outbox_inserted
    for each statement execute function dw_outbox_notify()`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop trigger dw_outbox_notify on dw_outbox');
  await knex.raw(`
    create or replace function dw_outbox_notify() returns trigger language plpgsql as $$
    begin
      perform pg_notify('dw_outbox', '');
      return null;
    end $$`);
  await knex.raw(`
    create trigger dw_outbox_notify after insert on dw_outbox
    for each statement execute function dw_outbox_notify()`);
}

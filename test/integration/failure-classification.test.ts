import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classifyFailure } from '../../shared/db/failures.js';
import { createKnex, type Knex } from '../../shared/db/knex.js';
import { NonRetryableError } from '../../shared/errors.js';
import { urls } from '../support/services.js';

let up: Knex;
let down: Knex;

beforeAll(() => {
  up = createKnex(`${urls.postgres}/postgres`, { poolMax: 1 });
  down = createKnex('postgres://postgres@127.0.0.1:1/nothing', { poolMax: 1 });
});

afterAll(async () => {
  await up.destroy();
  await down.destroy();
});

const refused = () =>
  new TypeError('fetch failed', {
    cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }),
  });

describe('classifyFailure', () => {
  it('blames the application for a network error of its own while the database answers', async () => {
    expect(await classifyFailure(up, refused())).toBe('application');
  });

  it('calls the same network error an outage when the database does not answer', async () => {
    expect(await classifyFailure(down, refused())).toBe('outage');
  });

  it('recognises lost sessions and serialization failures by their SQLSTATE', async () => {
    expect(
      await classifyFailure(up, Object.assign(new Error('terminating connection'), { code: '57P01' })),
    ).toBe('outage');
    expect(await classifyFailure(up, Object.assign(new Error('x'), { code: '08006' }))).toBe('outage');
    expect(await classifyFailure(up, new Error('Connection terminated unexpectedly'))).toBe('outage');
    expect(await classifyFailure(up, Object.assign(new Error('x'), { code: '40001' }))).toBe('transient');
    expect(await classifyFailure(up, Object.assign(new Error('x'), { code: '23505' }))).toBe('application');
  });

  it('lets a non-retryable error win over whatever caused it', async () => {
    expect(await classifyFailure(down, new NonRetryableError('card rejected', { cause: refused() }))).toBe(
      'application',
    );
  });
});

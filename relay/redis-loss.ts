import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { RedisUnstableError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { maxRedisSeq, redeliverLostRows } from '../shared/outbox.js';
import { type RedisClient, relayRedisKeys } from '../shared/redis.js';

/**
 * Room left above the highest committed position when a loss is found: batches that had written
 * to Redis but not committed yet when it lost data hold positions up to the old counter, at most
 * the number of claim loops of all relays above it. New batches get positions above the room, so
 * no position means two things.
 */
const LOSS_ROOM = 1_000_000;

/** Times a batch's jobs are added again because Redis lost its data meanwhile, before it rolls back. */
const MAX_READDS = 5;

/**
 * Which Redis data set a write lands in: the server's run_id (new on every restart, also from an
 * older RDB/AOF, and different on a promoted replica) and a random token kept in the epoch key
 * (created when missing, so a flushed or emptied Redis gets a new one). The same lineage before a
 * batch's adds and at its increment means the adds are in the data set that holds the increment.
 * Reads it (KEYS: epoch; ARGV: a fresh token) as [token, runId].
 */
const lineageScript = `
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local token = redis.call('GET', KEYS[1])
local runId = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
return {token, runId}
`;

/**
 * Advances the delivery counter, after first noticing that it is behind Postgres's `mark` (Redis
 * lost writes: restarted empty or from an older snapshot, failed over to a lagging replica,
 * flushed). Then it records the lost range (`from`, `to`] until a relay repaired it, and sets the
 * counter above the range. Returns [counter, from, to] (from/to nil when no loss is pending).
 * When incrementing, it first compares the lineage with the one read before the batch's adds:
 * if it changed, the adds may have gone to lost data, so it does not increment and returns the
 * lineage now as [.., '1', token, runId]; the relay adds the jobs again and calls it again.
 * KEYS: counter, loss record, epoch. ARGV: mark, '1' to increment, room, token and runId seen
 * before the adds, a fresh token.
 */
const advanceScript = `
local stale = false
local token, runId = false, false
if ARGV[2] == '1' then
  redis.call('SET', KEYS[3], ARGV[6], 'NX')
  token = redis.call('GET', KEYS[3])
  runId = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
  stale = token ~= ARGV[4] or runId ~= ARGV[5]
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local mark = tonumber(ARGV[1])
if seq < mark then
  local from, to = seq, mark + tonumber(ARGV[3])
  local old = redis.call('HMGET', KEYS[2], 'from', 'to')
  if old[1] and old[2] then
    from = math.min(from, tonumber(old[1]))
    to = math.max(to, tonumber(old[2]))
  end
  redis.call('HSET', KEYS[2], 'from', string.format('%.0f', from), 'to', string.format('%.0f', to))
  redis.call('SET', KEYS[1], string.format('%.0f', to))
  seq = to
end
if ARGV[2] == '1' and not stale then seq = redis.call('INCR', KEYS[1]) end
local loss = redis.call('HMGET', KEYS[2], 'from', 'to')
if stale then return {string.format('%.0f', seq), loss[1] or false, loss[2] or false, '1', token, runId} end
return {string.format('%.0f', seq), loss[1] or false, loss[2] or false}
`;

/** Deletes the loss record if it is still the one repaired (another loss may have widened it). */
const clearScript = `
local loss = redis.call('HMGET', KEYS[1], 'from', 'to')
if loss[1] == ARGV[1] and loss[2] == ARGV[2] then return redis.call('DEL', KEYS[1]) end
return 0
`;

type AdvanceReply = [string, string | null, string | null, string?, string?, string?];

/** See `lineageScript`. */
export interface RedisLineage {
  token: string;
  runId: string;
}

interface Commands {
  dwRelayAdvance(
    counter: string,
    loss: string,
    epoch: string,
    mark: number,
    incr: string,
    room: number,
    token: string,
    runId: string,
    fresh: string,
  ): Promise<AdvanceReply>;
  dwRelayLineage(epoch: string, fresh: string): Promise<[string, string]>;
  dwRelayClearLoss(loss: string, from: string, to: string): Promise<number>;
}

/**
 * Notices that Redis lost jobs the relays delivered, whole or in part, and delivers them again.
 *
 * Every batch that added jobs increments a counter in Redis right after its `addBulk` (so any
 * Redis state that has the increment has the jobs: snapshots, AOF and replicas are prefixes of the
 * command stream) and stores the value on its outbox rows in the transaction that marks them
 * delivered. Before the increment, the script compares the counter with the highest value
 * committed in Postgres, read before: lower means Redis lost writes since. The rows above the
 * counter Redis still has are then made pending again. Jobs that survived keep their ids and are
 * not duplicated; jobs already consumed may run again (at least once: consumers absorb repeats,
 * saga steps by their step records). All relays of an installation share the counter.
 *
 * Cost per batch: the max read runs beside the claim, the script is one Redis round trip after the
 * adds, the position one update. While idle, the check runs once per poll interval and at once
 * after a reconnection.
 */
export class RedisLossDetector {
  private readonly keys: { counter: string; loss: string; epoch: string };
  private readonly redis: RedisClient & Commands;
  /** A loss found and not repaired by this relay yet. */
  private loss: { from: string; to: string } | undefined;
  private idleCheckDue = true;
  /** The last lineage change logged: one line per change, not one per batch in flight (the loss itself is warned about). */
  private warnedLineage = '';
  private lastIdleCheck = 0;
  /**
   * The highest position Redis handed this relay, committed or not. Compared with the counter as
   * a floor under Postgres's mark: right after Redis is re-based (mark + LOSS_ROOM), the positions
   * in flight are far above the committed mark, and a Redis that loses its data again before one
   * of them commits would be re-based from the same mark and hand the same positions out again,
   * so rows it lost would carry positions outside every repair range (the chaos scenario of Redis
   * restarting empty three times lost jobs that way once AMQP delivery got faster).
   */
  private highest = 0;

  constructor(
    redis: RedisClient,
    prefix: string,
    private readonly knex: Knex,
    private readonly idleCheckEveryMs: number,
    private readonly log: Logger,
  ) {
    this.keys = relayRedisKeys(prefix);
    redis.defineCommand('dwRelayAdvance', { numberOfKeys: 3, lua: advanceScript });
    redis.defineCommand('dwRelayLineage', { numberOfKeys: 1, lua: lineageScript });
    redis.defineCommand('dwRelayClearLoss', { numberOfKeys: 1, lua: clearScript });
    this.redis = redis as RedisClient & Commands;
    // A (re)connection may be to a Redis that lost its data: check even if nothing is delivered.
    redis.on('ready', () => {
      this.idleCheckDue = true;
    });
  }

  /** What Redis must hold at least; read before the batch's Redis writes. */
  mark(): Promise<number> {
    return maxRedisSeq(this.knex);
  }

  /** Which Redis data set the batch's adds will go to; read before them (see `lineageScript`). */
  async lineage(): Promise<RedisLineage> {
    const [token, runId] = await this.redis.dwRelayLineage(this.keys.epoch, randomUUID());
    return { token, runId };
  }

  /**
   * After a batch's jobs were added: advances the counter and returns it, for the batch's
   * transaction to record on the rows as it marks them delivered (undefined without jobs). If Redis
   * lost its data since `seen` was read (restart, flush, failover between the adds and the
   * increment), the adds may be gone while the increment lands: `readd` adds the jobs again (their
   * ids make it idempotent) before the increment is tried again.
   * Throws while Redis is down or keeps losing data (the batch rolls back and goes again).
   */
  async recordDelivery(
    ids: readonly number[],
    mark: number,
    seen: RedisLineage,
    readd: () => Promise<void>,
  ): Promise<number | undefined> {
    if (ids.length === 0) return undefined;
    let expected = seen;
    for (let attempt = 1; ; attempt++) {
      const { seq, lineage } = await this.advance(mark, expected);
      if (!lineage) return seq;
      if (attempt > MAX_READDS) throw new RedisUnstableError(MAX_READDS);
      const key = `${lineage.runId}/${lineage.token}`;
      const line =
        'Redis restarted, was flushed or failed over while the relay added a batch: adding its jobs again';
      if (key !== this.warnedLineage) this.log.info({ rows: ids.length }, line);
      else this.log.debug({ rows: ids.length }, line);
      this.warnedLineage = key;
      expected = lineage;
      await readd();
    }
  }

  /** While idle: the same comparison without a batch, at most once per interval or after a reconnection. */
  async checkIdle(): Promise<void> {
    if (!this.idleCheckDue && Date.now() - this.lastIdleCheck < this.idleCheckEveryMs) return;
    this.idleCheckDue = false;
    this.lastIdleCheck = Date.now();
    try {
      await this.advance(await this.mark(), undefined);
    } catch (error) {
      this.idleCheckDue = true;
      throw error;
    }
  }

  /**
   * Makes the lost rows pending again, then clears the loss record (unless it changed). Throws
   * while a dependency is down; the record stays in Redis, so this or another relay repairs later.
   */
  async repairIfNeeded(): Promise<void> {
    const loss = this.loss;
    if (!loss) return;
    const rows = await redeliverLostRows(this.knex, Number(loss.from), Number(loss.to));
    this.log.warn(
      { rows, seqFrom: Number(loss.from), seqTo: Number(loss.to) },
      'Redis lost jobs the relay had delivered (restarted empty or from an older snapshot, failed over to a lagging replica, or flushed): delivering those outbox rows again. Run Redis with appendonly yes and appendfsync always (or everysec, which can lose the last second) to avoid this.',
    );
    await this.redis.dwRelayClearLoss(this.keys.loss, loss.from, loss.to);
    if (this.loss === loss) this.loss = undefined;
  }

  /**
   * Increments when given the lineage seen before the adds; returns the lineage now instead when
   * it changed (nothing incremented).
   */
  private async advance(
    mark: number,
    seen: RedisLineage | undefined,
  ): Promise<{ seq: number; lineage?: RedisLineage }> {
    const [seq, from, to, stale, token, runId] = await this.redis.dwRelayAdvance(
      this.keys.counter,
      this.keys.loss,
      this.keys.epoch,
      Math.max(mark, this.highest),
      seen ? '1' : '0',
      LOSS_ROOM,
      seen?.token ?? '',
      seen?.runId ?? '',
      randomUUID(),
    );
    if (Number(seq) > this.highest) this.highest = Number(seq);
    if (from !== null && to !== null) this.loss = { from, to };
    if (stale === '1' && token && runId !== undefined) return { seq: Number(seq), lineage: { token, runId } };
    return { seq: Number(seq) };
  }
}

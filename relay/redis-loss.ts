import type { Redis } from 'ioredis';
import type { Knex } from 'knex';
import type { Logger } from '../shared/logger.js';
import { redeliverBullmqRows } from '../shared/outbox.js';

/**
 * Notices that Redis lost its data (a restart without persistence, a failover to an empty replica,
 * a flush) and delivers the lost jobs again, so nobody has to. Relays keep a marker key in Redis;
 * when a relay finds it missing, at start or after any reconnection, it makes the BullMQ outbox
 * rows delivered within `windowMs` pending again before it sets the marker. Jobs that survived keep
 * their ids and are not duplicated; jobs already consumed may run again (at least once: consumers
 * absorb repeats, saga steps by their step records).
 */
export class RedisLossDetector {
  private pending = true;
  private readonly key: string;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    private readonly knex: Knex,
    private readonly windowMs: number,
    private readonly log: Logger,
  ) {
    this.key = `${prefix}:dw-relay:marker`;
    // Every (re)connection may be to a Redis that lost its data.
    redis.on('ready', () => {
      this.pending = true;
    });
  }

  /** Runs the check if a (re)connection happened since the last one; throws while a dependency is down. */
  async checkIfNeeded(): Promise<void> {
    if (!this.pending) return;
    // Clear first: a reconnection during the check asks for another one.
    this.pending = false;
    try {
      if (await this.redis.exists(this.key)) return;
      const rows = await redeliverBullmqRows(this.knex, this.windowMs);
      if (rows > 0) {
        this.log.warn(
          { rows, windowMs: this.windowMs },
          'Redis lost its data (restarted without persistence, or flushed): delivering the recent outbox rows to BullMQ again. Enable Redis persistence (appendonly yes) to avoid this.',
        );
      }
      await this.redis.set(this.key, new Date().toISOString());
    } catch (error) {
      this.pending = true;
      throw error;
    }
  }
}

import pg from 'pg';
import { backoffMs } from '../shared/backoff.js';
import type { Logger } from '../shared/logger.js';
import { sleep } from '../shared/time.js';

/**
 * A dedicated connection LISTENing on `dw_outbox`, so that a row committed while the relay idles is
 * picked up at once instead of at the next poll. It reconnects by itself; while it is down the
 * relay still polls.
 */
export class OutboxListener {
  private client: pg.Client | undefined;
  private closed = false;
  private woken = false;
  private released = false;
  private waiters: Array<() => void> = [];
  private reconnecting = false;
  private readonly abort = new AbortController();

  constructor(
    private readonly databaseUrl: string,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    await this.connect();
  }

  /** Resolves on a notification (or one that came since the last wait), on timeout, or on close. */
  wait(timeoutMs: number): Promise<void> {
    if (this.woken || this.released) {
      this.woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.push(done);
    });
  }

  /**
   * One waiting loop per notification: a commit of a few rows needs one claim, and a loop that
   * claims a full batch goes on by itself; waking every loop cost an empty claim each per commit.
   * Notifications that come faster than one loop drains wake more loops.
   */
  wake(): void {
    const waiter = this.waiters[0];
    if (waiter) waiter();
    else this.woken = true;
  }

  /** The relay is stopping: every wait, now and later, returns at once. */
  release(): void {
    this.released = true;
    for (const waiter of [...this.waiters]) waiter();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.abort.abort();
    this.release();
    await this.client?.end().catch(() => {});
  }

  private async connect(): Promise<void> {
    const client = new pg.Client({ connectionString: this.databaseUrl, application_name: 'dw-relay-listen' });
    client.on('notification', () => this.wake());
    client.on('error', (error) => this.log.debug({ err: error }, 'LISTEN connection error'));
    client.on('end', () => {
      // Only the live connection's end starts a reconnection: a failed attempt's client also
      // ends, and must not start a second reconnection loop (each would leave a connection open).
      if (this.client !== client) return;
      this.client = undefined;
      if (!this.closed) void this.reconnect();
    });
    try {
      await client.connect();
      await client.query('listen dw_outbox');
    } catch (error) {
      await client.end().catch(() => {});
      throw error;
    }
    if (this.closed) {
      await client.end().catch(() => {});
      return;
    }
    this.client = client;
    // Rows may have been committed while we were not listening.
    this.wake();
  }

  private async reconnect(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    try {
      await this.reconnectLoop();
    } finally {
      this.reconnecting = false;
    }
  }

  private async reconnectLoop(): Promise<void> {
    this.log.warn('LISTEN connection lost; polling until it is back');
    for (let attempt = 0; !this.closed; attempt++) {
      await sleep(backoffMs(attempt, { baseMs: 100, maxMs: 5000 }), this.abort.signal);
      try {
        await this.connect();
        this.log.info('LISTEN connection restored');
        return;
      } catch {
        // keep trying, quietly: the relay loop reports the outage
      }
    }
  }
}

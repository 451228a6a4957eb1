import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import type { ResilientAmqpConnection } from '../shared/amqp.js';
import { readIncoming } from '../shared/envelope.js';
import type { Logger } from '../shared/logger.js';
import { messagesTotal } from '../shared/metrics.js';
import { declareOrderedTopology, deliveryOrderingKey } from '../shared/ordering.js';
import { sleep } from '../shared/time.js';
import { Attr, inSpan, SpanStatusCode, tracingOn } from '../shared/tracing.js';
import { Consumer, type ConsumerOptions } from './consumer.js';
import type { MessageProcessor, Outcome } from './message-processor.js';

export interface OrderedConsumerOptions extends ConsumerOptions {
  /** Partition queues of the work queue (shared/ordering.ts); every worker consumes all of them. */
  partitions: number;
  /** Where the consistent-hash exchange is first declared on a connection of its own. */
  amqpUrl: string;
}

/**
 * Consumes the partition queues of keyed messages (shared/ordering.ts). Each partition has a single
 * active consumer among all workers, so the one holding it sees a key's messages in publish order;
 * here messages of one key run one after the other in delivery order, other keys side by side.
 *
 * A keyed delivery is never nacked: a requeue would put it behind the later messages of its key
 * (quorum queues) or let those already prefetched overtake it. It is acked once handled,
 * dead-lettered or (never here) retried through a retry queue; otherwise it stays unacked until the
 * channel closes, and the broker returns all of a channel's unacked deliveries in their order. So:
 * - a delayed retry waits in place (MessageProcessor `holdRetries`), the key's next messages wait;
 * - a failure outside the handler is run again in place (the processor pauses and counts it, and
 *   dead-letters it past maxDeliveries);
 * - on stop the consumers are not cancelled first (a cancel would make another worker active on the
 *   partition while this one still holds deliveries): handling ends, then the channel closes;
 * - when the channel is lost its waiting deliveries never start: they come back, in order, to
 *   whichever consumer the broker makes active.
 */
export class OrderedConsumer extends Consumer {
  /** Per channel, the last delivery of each key: the next of that key runs after it. */
  private readonly chains = new WeakMap<Channel, Map<string, Promise<void>>>();
  /** Per channel, aborted when it closes: its held retries end and its waiting deliveries do not start. */
  private readonly closed = new WeakMap<Channel, AbortSignal>();

  constructor(
    amqp: ResilientAmqpConnection,
    private readonly ordered: OrderedConsumerOptions,
    processor: MessageProcessor,
    log: Logger,
  ) {
    super(amqp, ordered, processor, log);
  }

  protected override async declare(connection: ChannelModel, channel: Channel): Promise<string[]> {
    const closed = new AbortController();
    channel.once('close', () => closed.abort());
    this.closed.set(channel, closed.signal);
    this.chains.set(channel, new Map());
    return declareOrderedTopology(
      this.ordered.amqpUrl,
      () => connection.createChannel(),
      channel,
      this.ordered.topology,
      this.ordered.partitions,
      connection,
    );
  }

  /** Keyed deliveries are settled here, not through the base class's count. */
  override get unsettled(): number {
    return this.inFlight.size;
  }

  protected override onDelivery(channel: Channel, msg: ConsumeMessage): void {
    const key = deliveryOrderingKey(msg);
    const chains = this.chains.get(channel) ?? new Map<string, Promise<void>>();
    const previous = key === undefined ? undefined : chains.get(key);
    // Waiting behind its key holds no concurrency slot; only the run itself does.
    const work = (async () => {
      await previous;
      await this.limit(() => this.runTraced(channel, msg));
    })();
    if (key !== undefined) {
      chains.set(key, work);
      void work.finally(() => {
        if (chains.get(key) === work) chains.delete(key);
      });
    }
    const tracked: Promise<void> = work.finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }

  override async stop(graceMs: number): Promise<boolean> {
    this.stopping = true;
    this.stopped.abort();
    const drained = Promise.all([...this.inFlight]).then(() => true);
    const finished = await Promise.race([drained, sleep(graceMs).then(() => false)]);
    // Returns every delivery not acked, in order, and lets the broker make another worker active.
    const current = this.current;
    if (current && !current.closed) await current.channel.close().catch(() => {});
    return finished;
  }

  private async runTraced(channel: Channel, msg: ConsumeMessage): Promise<void> {
    if (!tracingOn()) {
      await this.runOrdered(channel, msg);
      return;
    }
    await inSpan(`process ${this.ordered.topology.queue}.ordered`, this.spanOptions(msg), async (span) => {
      const outcome = await this.runOrdered(channel, msg);
      if (outcome) span?.setAttribute(Attr.outcome, outcome);
      if (outcome === 'dead-lettered') span?.setStatus({ code: SpanStatusCode.ERROR, message: outcome });
    });
  }

  /** Handles one keyed delivery in place until it is settled, or leaves it unacked when it must stop. */
  private async runOrdered(channel: Channel, msg: ConsumeMessage): Promise<Outcome | undefined> {
    const lost = this.closed.get(channel);
    const hold = lost ? AbortSignal.any([lost, this.stopped.signal]) : this.stopped.signal;
    const incoming = readIncoming(msg);
    for (;;) {
      // Not started, or given up: the channel's close returns it to its place before its key's next.
      if (hold.aborted) return undefined;
      let outcome: Outcome;
      try {
        outcome = await this.processor.process(incoming, { holdRetries: hold });
      } catch (error) {
        this.log.error(
          { err: error, messageId: incoming.id, type: incoming.type },
          'unexpected failure while processing an ordered message; running it again in place',
        );
        messagesTotal.inc({ outcome: 'requeue' });
        await sleep(1000, hold);
        continue;
      }
      if (outcome === 'requeue') continue;
      try {
        channel.ack(msg);
      } catch {
        // The channel is gone; the broker redelivers the message, the inbox absorbs the repeat.
      }
      return outcome;
    }
  }
}

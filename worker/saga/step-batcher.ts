/**
 * Groups saga steps that are ready at the same time into batches, never waiting to fill one.
 * Parallelism comes first: the ready steps are spread over the free slots (`maxInFlight`), so a
 * step shares a transaction only with steps that would otherwise have waited for a slot. A slow
 * step (an HTTP call) thus delays only steps that one-by-one processing would have delayed too,
 * and at light load, with slots free, every step runs alone: no added latency, and outcomes that
 * depend on time (deadlines, timeouts) stay those of one-by-one processing. Under load, with
 * every slot busy, the steps arriving meanwhile form the next batches, up to `maxBatch` each.
 */
export class StepBatcher<T> {
  private readonly queue: T[] = [];
  private inFlight = 0;
  private scheduled = false;

  constructor(
    private readonly options: {
      maxBatch: number;
      maxInFlight: number;
      /** Items with the same key never share a batch (one step per saga in a transaction). */
      key: (item: T) => string;
    },
    /** Runs one batch; settles each of its items itself and never rejects. */
    private readonly run: (items: T[]) => Promise<void>,
  ) {}

  submit(item: T): void {
    this.queue.push(item);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.options.maxInFlight || this.queue.length === 0) return;
    this.scheduled = true;
    // After the submissions of this turn (a commit's eager steps arrive one promise tick apart).
    setImmediate(() => {
      this.scheduled = false;
      this.start();
    });
  }

  private start(): void {
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      // An even share of what is ready for each free slot.
      const share = Math.ceil(this.queue.length / (this.options.maxInFlight - this.inFlight));
      const batch = this.take(Math.min(share, this.options.maxBatch));
      this.inFlight++;
      void this.run(batch).finally(() => {
        this.inFlight--;
        this.schedule();
      });
    }
  }

  /** Up to `size` items, oldest first; an item whose key is taken waits for a later batch. */
  private take(size: number): T[] {
    const batch: T[] = [];
    const keys = new Set<string>();
    for (let i = 0; i < this.queue.length && batch.length < size; ) {
      const item = this.queue[i] as T;
      const key = this.options.key(item);
      if (keys.has(key)) {
        i++;
        continue;
      }
      keys.add(key);
      batch.push(item);
      this.queue.splice(i, 1);
    }
    return batch;
  }
}

/**
 * Groups saga steps that are ready at the same time into batches, never waiting to fill one: a
 * step submitted while fewer than `maxInFlight` batches run starts at once (with whatever else was
 * submitted in the same turn of the event loop, e.g. the eager steps one commit leased); steps
 * submitted while every slot is busy wait and form the next batch together. At light load a
 * batch is one step, so batching adds no latency; under load the batches grow up to `maxBatch`.
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
      const batch = this.take();
      this.inFlight++;
      void this.run(batch).finally(() => {
        this.inFlight--;
        this.schedule();
      });
    }
  }

  /** Up to maxBatch items, oldest first; an item whose key is taken waits for a later batch. */
  private take(): T[] {
    const batch: T[] = [];
    const keys = new Set<string>();
    for (let i = 0; i < this.queue.length && batch.length < this.options.maxBatch; ) {
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

/**
 * An unbounded queue read as an async iterable: the request side of a
 * client-streaming or bidi call. Closing it ends the iteration, which
 * half-closes the stream.
 */
export class MessageQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  /** Queues an item; false (and dropped) once the queue is closed. */
  push(item: T): boolean {
    if (this.closed) return false;
    this.items.push(item);
    this.notify();
    return true;
  }

  /** No more items: the iteration ends after the queued ones. */
  close(): void {
    this.closed = true;
    this.notify();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
      } else if (this.closed) {
        return;
      } else {
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    }
  }
}

/**
 * The upgrader's stderr: its log lines and its agents' stderr lines, in one queue, in order, whole.
 *
 * Writing never blocks the event loop, whatever the reader does (a paused journald, a full pipe): on a
 * pipe or a socket the descriptor is non-blocking (Node's own stderr stream makes it so, and puts the
 * flag back at exit), each line is written at once when the reader keeps up, so that a kill -9 loses as
 * little as possible, and what the reader has not taken yet waits in a queue of at most
 * MAX_QUEUED_BYTES. A line that does not fit is dropped whole and counted; once the queue has drained
 * (the reader is back), the count is reported in one line. On a file or a terminal, lines are written
 * directly; one that cannot be written (full disk) is dropped and counted the same way.
 */
import { fstatSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Writable } from 'node:stream';

/** What the upgrader holds for a stalled reader before it drops lines. */
export const MAX_QUEUED_BYTES = 1024 * 1024;

/** Reports how many lines were dropped, once lines can be written again. */
export type DroppedReport = (dropped: number) => void;

export interface LineSink {
  /** Writes one or more whole lines, or drops them (counted). */
  write(data: Buffer): void;
  /** Resolves once everything queued is written, or after `ms`, whichever comes first. */
  flush(ms: number): Promise<void>;
  /** Set by the logger, to report in its own format; this default is a plain line. */
  onRecovered: DroppedReport;
}

const droppedLine = (dropped: number) => Buffer.from(`upgrader: ${dropped} lines were dropped while stderr was blocked\n`);

/** A pipe or a socket: a non-blocking stream, with a bounded queue in front of the reader. */
export class QueuedSink implements LineSink {
  private dropped = 0;
  private unwritten = 0;
  private whenWritten: (() => void)[] = [];
  onRecovered: DroppedReport = (dropped) => this.write(droppedLine(dropped));

  constructor(
    private readonly out: Writable,
    private readonly maxQueuedBytes = MAX_QUEUED_BYTES,
  ) {
    // A reader gone for good (EPIPE): every later line is dropped, and there is nobody to tell.
    out.on('error', () => undefined);
    // Emitted once the queue that made a write wait has emptied: the reader is back.
    out.on('drain', () => this.reportDropped());
  }

  write(data: Buffer): void {
    if (this.out.destroyed || this.out.writableLength + data.length > this.maxQueuedBytes) {
      this.dropped++;
      return;
    }
    this.reportDropped();
    this.unwritten++;
    this.out.write(data, () => this.written());
  }

  flush(ms: number): Promise<void> {
    if (this.unwritten === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.whenWritten.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private written(): void {
    if (--this.unwritten === 0) for (const wake of this.whenWritten.splice(0)) wake();
  }

  private reportDropped(): void {
    const dropped = this.dropped;
    if (dropped === 0 || this.out.destroyed) return;
    this.dropped = 0;
    this.onRecovered(dropped);
  }
}

/** A file, a terminal or /dev/null: written directly, since such a write does not wait on a reader. */
export class DirectSink implements LineSink {
  private dropped = 0;
  onRecovered: DroppedReport = (dropped) => this.write(droppedLine(dropped));

  constructor(private readonly writeSome: (data: Buffer, offset: number) => number = (data, offset) => writeSync(2, data, offset)) {}

  write(data: Buffer): void {
    if (!this.tryWrite(data)) {
      this.dropped++;
      return;
    }
    const dropped = this.dropped;
    if (dropped === 0) return;
    this.dropped = 0;
    this.onRecovered(dropped);
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  /** A failure (full disk; EAGAIN from a terminal that another process made non-blocking) drops the rest of the line. */
  private tryWrite(data: Buffer): boolean {
    try {
      for (let written = 0; written < data.length; ) written += this.writeSome(data, written);
      return true;
    } catch {
      return false;
    }
  }
}

let sink: LineSink | null = null;

function openSink(): LineSink {
  let stream = false;
  try {
    const stat = fstatSync(2);
    stream = stat.isFIFO() || stat.isSocket();
  } catch {
    // No stderr at all: writes fail and are counted.
  }
  // Node's stream on a pipe or socket is a net.Socket that has made the descriptor non-blocking.
  if (stream && process.stderr instanceof Socket) return new QueuedSink(process.stderr);
  return new DirectSink();
}

function stderrSink(): LineSink {
  sink ??= openSink();
  return sink;
}

/**
 * Writes whole lines to the upgrader's stderr, from this one thread: the upgrader's log lines and its
 * agents' stderr lines all go through here, so no line is ever cut into by another.
 */
export function writeStderr(data: Buffer): void {
  stderrSink().write(data);
}

/** Who reports dropped lines: the logger, in its own format. */
export function onStderrRecovered(report: DroppedReport): void {
  stderrSink().onRecovered = report;
}

/** At exit: waits for the queue to drain, never longer than `ms`. */
export function flushStderr(ms: number): Promise<void> {
  return sink ? sink.flush(ms) : Promise.resolve();
}

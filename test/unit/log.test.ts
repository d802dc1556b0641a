/**
 * The pieces that keep logging bounded and non-blocking: the stderr sinks (a stalled reader, a failing
 * file) and the summary of an agent's repeated lines.
 */
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLogger, holdLogLines } from '../../src/log.js';
import { describeRepeats, MAX_KINDS, OTHER_KIND, RepeatSummary, type Repeats } from '../../src/log-repeats.js';
import { DirectSink, QueuedSink } from '../../src/stderr.js';

/** A reader that takes what it is given only when the test says so. */
class StalledReader extends Writable {
  readonly taken: string[] = [];
  private waiting: (() => void)[] = [];

  constructor() {
    super({ highWaterMark: 10 });
  }

  override _write(chunk: Buffer, _: BufferEncoding, done: () => void): void {
    this.taken.push(chunk.toString());
    this.waiting.push(done);
  }

  /** Takes everything, as a reader that is back would. */
  takeAll(): void {
    while (this.waiting.length > 0) this.waiting.shift()!();
  }
}

const line = (n: number) => Buffer.from(`line ${String(n).padStart(3, '0')}\n`); // 9 bytes

describe('QueuedSink (a pipe or a socket)', () => {
  it('holds at most its bound for a stalled reader, drops whole lines past it, and reports the count once the reader is back', () => {
    const reader = new StalledReader();
    const sink = new QueuedSink(reader, 45);
    const reports: number[] = [];
    sink.onRecovered = (dropped) => {
      reports.push(dropped);
      sink.write(Buffer.from(`dropped ${dropped}\n`));
    };
    for (let n = 0; n < 20; n++) sink.write(line(n));
    expect(reader.writableLength).toBeLessThanOrEqual(45);
    expect(reports).toEqual([]);
    reader.takeAll();
    expect(reports).toEqual([15]);
    sink.write(line(99));
    reader.takeAll();
    expect(reader.taken.join('')).toBe('line 000\nline 001\nline 002\nline 003\nline 004\ndropped 15\nline 099\n');
  });

  it('flush resolves once everything is written, or at its deadline when the reader stays away', async () => {
    const reader = new StalledReader();
    const sink = new QueuedSink(reader, 1000);
    await sink.flush(10_000);
    sink.write(line(1));
    const flushed = sink.flush(10_000);
    reader.takeAll();
    await flushed;
    sink.write(line(2));
    const started = performance.now();
    await sink.flush(50);
    expect(performance.now() - started).toBeGreaterThanOrEqual(45);
  });

  it('a reader gone for good (EPIPE): lines are dropped, and nothing throws', () => {
    const reader = new StalledReader();
    const sink = new QueuedSink(reader);
    reader.destroy(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    expect(() => sink.write(line(1))).not.toThrow();
  });
});

describe('DirectSink (a file or a terminal)', () => {
  it('drops a line that cannot be written, and reports the count after the next line that can', () => {
    const written: string[] = [];
    let failing = true;
    const sink = new DirectSink((data, offset) => {
      if (failing) throw Object.assign(new Error('no space'), { code: 'ENOSPC' });
      // A short write each time: the rest of the line follows.
      const part = data.subarray(offset, offset + 4);
      written.push(part.toString());
      return part.length;
    });
    sink.onRecovered = (dropped) => sink.write(Buffer.from(`dropped ${dropped}\n`));
    for (let n = 0; n < 3; n++) sink.write(line(n));
    failing = false;
    sink.write(line(3));
    expect(written.join('')).toBe('line 003\ndropped 3\n');
  });
});

describe('RepeatSummary', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  function summary(): { repeats: RepeatSummary; reports: Repeats[] } {
    vi.useFakeTimers();
    const reports: Repeats[] = [];
    return { repeats: new RepeatSummary((r) => reports.push(r), 10_000, () => Date.now()), reports };
  }

  it('the first of a kind is logged, the rest counted and reported once per window; idle, no timer is left', () => {
    const { repeats, reports } = summary();
    expect(repeats.note('ready', 'ready (changing nothing)')).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
    for (let i = 0; i < 1234; i++) expect(repeats.note('ready', 'ready (changing nothing)')).toBe(false);
    expect(repeats.note('garbage', 'a line that is not a protocol message')).toBe(true);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(10_000);
    expect(reports).toEqual([{ kind: 'ready', label: 'ready (changing nothing)', count: 1234, ms: 10_000 }]);
    expect(describeRepeats(reports[0]!)).toBe('ready (changing nothing) repeated 1,234 times in the last 10 s');
    expect(vi.getTimerCount()).toBe(0);
    // Still repeating right after a summary: counted, for the next one.
    expect(repeats.note('ready', 'ready (changing nothing)')).toBe(false);
    vi.advanceTimersByTime(10_000);
    expect(reports).toHaveLength(2);
    expect(vi.getTimerCount()).toBe(0);
    // After a quiet window, the kind is logged in full again.
    vi.advanceTimersByTime(10_000);
    expect(repeats.note('ready', 'ready (changing nothing)')).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('flush (the agent is gone) reports what is pending at once and disarms the timer', () => {
    const { repeats, reports } = summary();
    repeats.note('stopped', 'stopped (changing nothing)', 5);
    vi.advanceTimersByTime(2_000);
    repeats.flush();
    expect(reports).toEqual([{ kind: 'stopped', label: 'stopped (changing nothing)', count: 4, ms: 2_000 }]);
    expect(vi.getTimerCount()).toBe(0);
    repeats.flush();
    expect(reports).toHaveLength(1);
  });

  it(`follows at most ${MAX_KINDS} kinds: past that, new kinds are counted together`, () => {
    const { repeats, reports } = summary();
    for (let i = 0; i < MAX_KINDS; i++) expect(repeats.note(`upgrade live v${i}`, `v${i}`)).toBe(true);
    for (let i = MAX_KINDS; i < 1000; i++) expect(repeats.note(`upgrade live v${i}`, `v${i}`)).toBe(false);
    repeats.flush();
    expect(reports).toEqual([expect.objectContaining({ kind: OTHER_KIND, count: 1000 - MAX_KINDS })]);
  });
});

describe('holdLogLines', () => {
  it('holds back what a step logs, but never an error', () => {
    const log = createLogger('info');
    const held = holdLogLines(() => {
      log.info('held back');
      log.error('written at once (this line is expected in the test output)');
    });
    expect(held.map((line) => JSON.parse(line).msg)).toEqual(['held back']);
  });
});

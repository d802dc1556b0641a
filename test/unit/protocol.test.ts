import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StderrForwarder } from '../../src/agent-process.js';
import { LineReader, MAX_LINE_BYTES, parseAgentLine, type ReaderEvent } from '../../src/protocol.js';

function read(chunks: Buffer[], max?: number): ReaderEvent[] {
  const events: ReaderEvent[] = [];
  const reader = new LineReader((e) => events.push(e), max);
  for (const chunk of chunks) reader.push(chunk);
  reader.end();
  return events;
}

/** Cuts a buffer at the given fractional points. */
function chunk(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let last = 0;
  for (const p of points) {
    out.push(bytes.subarray(last, p));
    last = p;
  }
  out.push(bytes.subarray(last));
  return out;
}

describe('LineReader', () => {
  it('yields the same lines however the stream is chunked (UTF-8 split across writes included)', () => {
    const line = fc.string({ unit: 'grapheme', maxLength: 40 }).filter((s) => !s.includes('\n') && !s.includes('\r') && s.trim() !== '');
    fc.assert(
      fc.property(fc.array(line, { maxLength: 20 }), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 30 }), (lines, cuts) => {
        const bytes = Buffer.from(lines.map((l) => `${l}\n`).join(''));
        const events = read(chunk(bytes, cuts));
        expect(events).toEqual(lines.map((l) => ({ kind: 'line', line: l.replace(/^\uFEFF/, '') })));
      }),
    );
  });

  it('one byte at a time gives the same result', () => {
    const bytes = Buffer.from('{"type":"ready"}\n{"type":"status","message":"héllo ✓"}\n');
    const events = read([...bytes].map((b) => Buffer.from([b])));
    expect(events).toEqual([
      { kind: 'line', line: '{"type":"ready"}' },
      { kind: 'line', line: '{"type":"status","message":"héllo ✓"}' },
    ]);
  });

  it('drops an over-long line, reports it once, and carries on with the next', () => {
    const long = 'x'.repeat(MAX_LINE_BYTES + 10);
    const events = read([Buffer.from(`${long.slice(0, 1000)}`), Buffer.from(`${long.slice(1000)}\n{"type":"ready"}\n`)]);
    expect(events).toEqual([{ kind: 'overlong', bytes: long.length }, { kind: 'line', line: '{"type":"ready"}' }]);
  });

  it('never holds more than the limit, whatever arrives', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 50 }), (chunks) => {
        const events: ReaderEvent[] = [];
        const reader = new LineReader((e) => events.push(e), 100);
        for (const c of chunks) reader.push(Buffer.from(c));
        reader.end();
        for (const e of events) if (e.kind === 'line') expect(Buffer.byteLength(e.line)).toBeLessThanOrEqual(100);
        expect((reader as unknown as { pendingBytes: number }).pendingBytes).toBe(0);
      }),
    );
  });

  it('accepts CRLF, strips a BOM, reports invalid UTF-8, and skips blank lines', () => {
    const events = read([Buffer.from('{"type":"ready"}\r\n\uFEFF{"type":"stopped"}\n\n   \n'), Buffer.from([0xff, 0xfe, 0x0a]), Buffer.from('last without newline')]);
    expect(events).toEqual([
      { kind: 'line', line: '{"type":"ready"}' },
      { kind: 'line', line: '{"type":"stopped"}' },
      { kind: 'bad-utf8', bytes: 2 },
      { kind: 'line', line: 'last without newline' },
    ]);
  });
});

describe('parseAgentLine', () => {
  it.each([
    ['{"type":"ready"}', { kind: 'message', message: { type: 'ready' } }],
    ['{"type":"ready","extra":1}', { kind: 'message', message: { type: 'ready' } }],
    ['{"type":"upgrade","version":"2.0.0"}', { kind: 'message', message: { type: 'upgrade', version: '2.0.0', mode: 'live' } }],
    ['{"type":"upgrade","version":"2","mode":"sequential"}', { kind: 'message', message: { type: 'upgrade', version: '2', mode: 'sequential' } }],
    ['{"type":"status","message":"ok"}', { kind: 'message', message: { type: 'status', message: 'ok' } }],
    ['{"type":"future-thing","x":1}', { kind: 'unknown', type: 'future-thing' }],
    ['not json', { kind: 'garbage', detail: 'not a JSON object' }],
    ['{not json', { kind: 'garbage', detail: 'not JSON' }],
    ['[1,2]', { kind: 'garbage', detail: 'not a JSON object' }],
    ['null', { kind: 'garbage', detail: 'not a JSON object' }],
    ['{"type":7}', { kind: 'garbage', detail: 'no string "type" field' }],
    ['{"type":"upgrade"}', { kind: 'invalid', type: 'upgrade' }],
    ['{"type":"upgrade","version":"2","mode":"fast"}', { kind: 'invalid', type: 'upgrade' }],
    ['{"type":"status"}', { kind: 'invalid', type: 'status' }],
    ['{"type":"__proto__"}', { kind: 'unknown', type: '__proto__' }],
    ['{"type":"toString"}', { kind: 'unknown', type: 'toString' }],
    ['{"__proto__":{"type":"ready"},"type":"ready"}', { kind: 'message', message: { type: 'ready' } }],
  ])('%s', (line, expected) => {
    expect(parseAgentLine(line)).toMatchObject(expected);
  });

  it('survives deep nesting and huge numbers', () => {
    expect(parseAgentLine(`{"type":"ready","x":${'['.repeat(30000)}${']'.repeat(30000)}}`).kind).toBe('message');
    expect(parseAgentLine('{"type":"upgrade","version":12345678901234567890}')).toMatchObject({ kind: 'invalid' });
  });

  it('never throws, whatever the line', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.json()), (line) => void parseAgentLine(line)));
  });
});

describe('StderrForwarder', () => {
  const forward = (chunks: Buffer[], max = 16) => {
    const writes: string[] = [];
    const forwarder = new StderrForwarder((data) => writes.push(data.toString('latin1')), max);
    for (const c of chunks) forwarder.push(c);
    forwarder.end();
    return writes;
  };

  it('passes whole lines, however the stream is chunked, and splits lines longer than the limit', () => {
    fc.assert(
      fc.property(fc.array(fc.stringMatching(/^[a-z]{0,40}$/), { maxLength: 10 }), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 20 }), (lines, cuts) => {
        const bytes = Buffer.from(lines.map((l) => `${l}\n`).join(''), 'latin1');
        const writes = forward(chunk(bytes, cuts));
        const expected = lines.flatMap((l) => (l.length === 0 ? ['\n'] : (l.match(/.{1,16}/g) ?? []).map((p) => `${p}\n`)));
        expect(writes).toEqual(expected);
        for (const w of writes) expect(w.endsWith('\n')).toBe(true);
      }),
    );
  });

  it('ends a last line that has no newline', () => {
    expect(forward([Buffer.from('abc')])).toEqual(['abc\n']);
    expect(forward([Buffer.from('')])).toEqual([]);
  });
});

it('StderrForwarder: a line of exactly the limit, or a multiple of it, gets no empty line after it', () => {
  const writes: string[] = [];
  const forwarder = new StderrForwarder((data) => writes.push(data.toString()), 4);
  forwarder.push(Buffer.from('abcd\nabcdefgh\nxy\n'));
  forwarder.end();
  expect(writes).toEqual(['abcd\n', 'abcd\n', 'efgh\n', 'xy\n']);
});

/**
 * Issue 10, memory stays flat: the collection the supervisor runs once handoffs have stopped
 * (src/heap-settle.ts) works on this node without --expose-gc on the command line, and frees what died
 * in the old generation. When it is run is the supervisor's test (test/unit/supervisor.test.ts).
 */
import { getHeapStatistics } from 'node:v8';
import { expect, it } from 'vitest';
import { collectGarbage } from '../../src/heap-settle.js';

it('collectGarbage frees dead objects that were promoted, with no gc() exposed to the program', async () => {
  expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  // About 8 MB of small objects that live through several scavenges (so they are promoted), then die.
  let kept: { i: number; s: string }[] | null = Array.from({ length: 100_000 }, (_, i) => ({ i, s: `object ${i}` }));
  for (let round = 0; round < 20; round++) Array.from({ length: 50_000 }, (_, i) => [i]);
  expect(kept.length).toBe(100_000);
  kept = null;
  const before = getHeapStatistics().used_heap_size;
  await collectGarbage();
  const after = getHeapStatistics().used_heap_size;
  expect(before - after).toBeGreaterThan(4 * 1024 * 1024);
  // The option is set only while the function is made: nothing else in the process sees gc().
  expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
});

import { describe, expect, it } from 'vitest';
import { EVENT_TYPES, STATES, TABLE } from '../../src/handoff.js';
import { documentedTable, renderTable } from '../../tools/handoff-table.js';

describe('the state x event table', () => {
  it('has a cell for every state and every event, none left to a default', () => {
    for (const state of STATES) expect(Object.keys(TABLE[state]).sort()).toEqual([...EVENT_TYPES].sort());
  });

  it('docs/protocol.md shows exactly what the machine does (run `npm run table` after changing either)', () => {
    expect(documentedTable()).toBe(renderTable().trim());
  });

  it('says why wherever nothing happens', () => {
    const table = renderTable();
    expect(table).not.toMatch(/ignored: \|/);
    expect(table).not.toMatch(/nothing to do/);
  });
});

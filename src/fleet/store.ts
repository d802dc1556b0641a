/**
 * The fleet's view of etcd: one namespace (`<prefix><fleet>/`), reads that come back validated, and the
 * few transactions the rollout needs. Every decision is taken from a transaction's result or a fresh
 * read, never from a watch event alone (watches may lag); every transaction compares what it read, so two
 * actors that see the same condition cannot both act on it.
 */
import { Range, type Etcd3, type IRangeResponse, type Namespace } from 'etcd3';
import type { z } from 'zod';
import { KEYS, parseRecord, type Desired, Desired as DesiredSchema, type Pause, Pause as PauseSchema, type Rollout, Rollout as RolloutSchema, serialize } from './schema.js';

export type Write = { key: string; value: string | null; lease?: string };
export type Entry = { key: string; value: string; mod: string; lease: string };
export type Parsed<T> = { value: T | null; mod: string | null; problem: string | null };
export type Control = { rollout: Parsed<Rollout>; desired: Parsed<Desired>; pause: Parsed<Pause>; revision: string };

export class FleetStore {
  readonly ns: Namespace;
  constructor(
    readonly client: Etcd3,
    readonly prefix: string,
  ) {
    this.ns = client.namespace(prefix);
  }

  async get(key: string): Promise<Entry | null> {
    const response = await this.ns.get(key).exec();
    const kv = response.kvs[0];
    return kv ? this.entry(kv) : null;
  }

  async read<T>(schema: z.ZodType<T, z.ZodTypeDef, unknown>, key: string): Promise<Parsed<T>> {
    return parsed(schema, await this.get(key));
  }

  /**
   * Every key under `prefix` (relative to the fleet), read in pages at one revision, so that a large fleet
   * never hits the client's 4 MiB message limit and the pages agree with each other.
   */
  async range(prefix: string, pageSize = 500): Promise<{ entries: Entry[]; revision: string }> {
    const end = Range.prefix(prefix).end;
    const entries: Entry[] = [];
    let start: string | Buffer = prefix;
    let revision: string | null = null;
    let size = pageSize;
    for (;;) {
      const builder = this.ns.getAll().inRange({ start, end }).sort('Key', 'Ascend').limit(size);
      let response: IRangeResponse;
      try {
        response = await (revision === null ? builder : builder.revision(revision)).exec();
      } catch (error) {
        // A page over the client's message limit (someone wrote huge records): smaller pages, down to one key.
        if (size > 1 && error instanceof Error && error.constructor.name === 'GRPCResourceExhastedError') {
          size = Math.max(1, Math.floor(size / 4));
          continue;
        }
        throw error;
      }
      revision ??= response.header.revision;
      entries.push(...response.kvs.map((kv) => this.entry(kv)));
      if (!response.more || response.kvs.length === 0) return { entries, revision: revision ?? response.header.revision };
      start = Buffer.concat([Buffer.from(entries[entries.length - 1]!.key), Buffer.from([0])]);
    }
  }

  /**
   * The keys every follower acts on, read together at one revision by exact key (whatever else someone
   * put under ctl/ is never read).
   */
  async control(): Promise<Control> {
    const result = await this.ns.if(KEYS.rollout, 'Version', '>', -1).then(this.ns.get(KEYS.rollout), this.ns.get(KEYS.desired), this.ns.get(KEYS.pause)).commit();
    const one = (i: number) => {
      const kv = result.responses[i]?.response_range?.kvs[0];
      return kv ? this.entry(kv) : null;
    };
    return {
      rollout: parsed(RolloutSchema, one(0)),
      desired: parsed(DesiredSchema, one(1)),
      pause: parsed(PauseSchema, one(2)),
      revision: result.header.revision,
    };
  }

  /**
   * Replaces the rollout record if nobody changed it since `mod` was read (null: if there is none), with
   * other writes in the same transaction: a put (on a lease if given) or, with `value: null`, a delete.
   */
  async swapRollout(mod: string | null, next: Rollout, ...also: Write[]): Promise<boolean> {
    const guard = mod === null ? this.ns.if(KEYS.rollout, 'Create', '==', 0) : this.ns.if(KEYS.rollout, 'Mod', '==', mod);
    const ops = [this.ns.put(KEYS.rollout).value(serialize(next)), ...also.map((w) => this.op(w))];
    const result = await guard.then(...ops).commit();
    return result.succeeded;
  }

  private op(w: Write) {
    if (w.value === null) return this.ns.delete().key(w.key);
    const put = this.ns.put(w.key).value(w.value);
    return w.lease ? put.lease(w.lease) : put;
  }

  private entry(kv: { key: Buffer; value: Buffer; mod_revision: string; lease: string }): Entry {
    const raw = kv.key.toString();
    const key = raw.startsWith(this.prefix) ? raw.slice(this.prefix.length) : raw;
    return { key, value: kv.value.toString(), mod: kv.mod_revision, lease: kv.lease };
  }
}

export function parsed<T>(schema: z.ZodType<T, z.ZodTypeDef, unknown>, entry: Entry | null): Parsed<T> {
  const { value, problem } = parseRecord(schema, entry?.value);
  return { value, mod: entry?.mod ?? null, problem: problem ? `${entry!.key}: ${problem}` : null };
}

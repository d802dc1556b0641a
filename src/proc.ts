/**
 * What Linux's /proc tells about other processes. A PID alone is not an identity (PIDs are reused),
 * so a process is named by its PID plus its start time in clock ticks since boot, plus the boot's id.
 */
import { closeSync, openSync, readFileSync, readdirSync, readSync, statSync } from 'node:fs';
import { z } from 'zod';

/** A process's identity as the root's records store it (owner, layout holder, recorded agents). */
export const ProcessIdentity = z.object({ pid: z.number().int().positive(), startTicks: z.number().int().nonnegative(), bootId: z.string() });
export type ProcessIdentity = z.infer<typeof ProcessIdentity>;

let cachedBootId: string | undefined;
export function bootId(): string {
  cachedBootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return cachedBootId;
}

/** Fields of /proc/<pid>/stat after the command name, which may itself contain spaces and parentheses. */
function statFields(pid: number): string[] | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/** Field 22 of stat (starttime); index 19 once pid and comm are cut off. */
export function startTicks(pid: number): number | null {
  const fields = statFields(pid);
  return fields ? Number(fields[19]) : null;
}

export function identify(pid: number): ProcessIdentity | null {
  const ticks = startTicks(pid);
  return ticks === null ? null : { pid, startTicks: ticks, bootId: bootId() };
}

/** Alive and the same process as recorded (not a zombie, not a newcomer that got the PID). */
export function isSameProcessAlive(id: ProcessIdentity): boolean {
  if (id.bootId !== bootId()) return false;
  const fields = statFields(id.pid);
  if (!fields) return false;
  return fields[0] !== 'Z' && Number(fields[19]) === id.startTicks;
}

/**
 * Live (not zombie) processes that are in the process group `processGroup`, or whose environment holds all
 * the `environment` pairs (`NAME=value`; a pair ending in `=` matches any value). Agents and everything they
 * start inherit the variables the upgrader sets, so the environment finds descendants that escaped their
 * process group (setsid) and lost their parent. Zombies are skipped: they do no work and hold nothing,
 * and whether their new parent has reaped them yet is not ours to wait for. Unreadable processes are skipped.
 *
 * This reads two files of every process on the host, at every handoff: it reads them into one reused
 * buffer and parses bytes, so that a scan leaves next to no garbage behind (garbage that outlives a
 * young-generation collection is what makes an idle upgrader's memory grow with handoffs).
 */
export function findLiveProcesses(match: { processGroup?: number; environment?: string[] }): number[] {
  const found: number[] = [];
  const wanted = (match.environment ?? []).map((pair) => Buffer.from(`\0${pair}${pair.endsWith('=') ? '' : '\0'}`));
  try {
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      if (pid === process.pid) continue;
      const group = liveProcessGroup(pid);
      if (group === null) continue;
      if (match.processGroup !== undefined && group === match.processGroup) {
        found.push(pid);
        continue;
      }
      if (wanted.length === 0) continue;
      // The environment starts after a 0 byte and ends with one, so that every pair is found between two.
      scratch[0] = 0;
      const end = readIntoScratch(`/proc/${pid}/environ`, 1);
      if (end === null) continue;
      scratch[end] = 0;
      const haystack = scratch.subarray(0, end + 1);
      if (!wanted.every((pair) => haystack.includes(pair))) continue;
      // Only our own processes: anyone can put the marker in a process's environment, and a process of
      // another user found by it would be killed (or waited for) in vain, keeping our agent from starting.
      if (ownedByUs(pid)) found.push(pid);
    }
  } finally {
    if (scratch.length > SCRATCH_BYTES) scratch = Buffer.alloc(SCRATCH_BYTES);
  }
  return found;
}

const SCRATCH_BYTES = 16 * 1024;
let scratch = Buffer.alloc(SCRATCH_BYTES);

/**
 * Reads the file at `path` into `scratch` from offset `at`, growing it as needed, and leaves at least one
 * byte free after the content. The offset after the content; null when the file cannot be read.
 */
function readIntoScratch(path: string, at: number): number | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  try {
    let end = at;
    for (;;) {
      if (end + 1 >= scratch.length) {
        const larger = Buffer.alloc(scratch.length * 2);
        scratch.copy(larger, 0, 0, end);
        scratch = larger;
      }
      const read = readSync(fd, scratch, end, scratch.length - end - 1, null);
      if (read === 0) return end;
      end += read;
    }
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

const SPACE = 0x20;
const CLOSE_PAREN = 0x29;
const ZOMBIE = 0x5a; // 'Z'

/** The process group of `pid` (field 5 of its stat), or null when it is a zombie or cannot be read. */
function liveProcessGroup(pid: number): number | null {
  const end = readIntoScratch(`/proc/${pid}/stat`, 0);
  if (end === null) return null;
  // The command name may itself contain spaces and parentheses: the fields start after the last ')'.
  // Then: state, ppid, pgrp.
  const state = scratch.lastIndexOf(CLOSE_PAREN, end - 1) + 2;
  if (state < 2 || state >= end || scratch[state] === ZOMBIE) return null;
  let i = state + 2;
  while (i < end && scratch[i] !== SPACE) i++;
  let group = 0;
  let digits = 0;
  for (i += 1; i < end && scratch[i]! >= 0x30 && scratch[i]! <= 0x39; i++, digits++) group = group * 10 + scratch[i]! - 0x30;
  return digits > 0 ? group : null;
}

function ownedByUs(pid: number): boolean {
  try {
    return statSync(`/proc/${pid}`).uid === process.geteuid?.();
  } catch {
    return false;
  }
}

const O_CLOEXEC = 0o2000000;

/**
 * Closes the descriptors above 2 that this process inherited from whoever started it. Everything Node and
 * the upgrader open is close-on-exec, so these are exactly the descriptors that would otherwise leak into
 * every agent. Node marks only the low, contiguous inherited ones close-on-exec at start-up (libuv's
 * uv_disable_stdio_inheritance); a leaked fd 40 or 251 gets past it, which is why this exists.
 * Call it first thing, before anything else is opened.
 */
export function closeInheritedDescriptors(): number[] {
  const closed: number[] = [];
  let names: string[];
  try {
    names = readdirSync('/proc/self/fdinfo');
  } catch {
    return closed;
  }
  for (const name of names) {
    const fd = Number(name);
    if (!(fd > 2)) continue;
    try {
      const flags = Number.parseInt(/^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? '', 8);
      if (Number.isNaN(flags) || (flags & O_CLOEXEC) !== 0) continue;
      closeSync(fd);
      closed.push(fd);
    } catch {
      // the descriptor used to read the directory, already gone
    }
  }
  return closed;
}

/** Fault injection from outside the product: the upgrader run under strace, which fails or kills chosen system calls. */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { onCleanup, REPO, Upgrader } from '../helpers.js';

/** The calls that change state on disk. */
export const STATE_SYSCALLS = 'write,fsync,fdatasync,rename,symlink,unlink,mkdir,rmdir';

const traced: Upgrader[] = [];

/**
 * Starts `upgrader run` (the bundle) under strace, tracing `syscalls` on its main thread (no -f: agents
 * are not traced) into `traceFile`; `inject` (e.g. `signal=SIGKILL:when=7` or `error=ENOSPC`) applies to them.
 */
export function startTraced(root: string, traceFile: string, syscalls: string, args: string[], inject?: string): Upgrader {
  const injection = inject ? ['-e', `inject=${syscalls}:${inject}`] : [];
  const child = spawn('strace', ['-o', traceFile, '-e', `trace=${syscalls}`, ...injection, process.execPath, join(REPO, 'dist/upgrader.cjs'), 'run', '--root', root, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const up = new Upgrader(root, child);
  traced.push(up);
  // Before cleanUp stops the upgraders: killing strace alone would only detach it from its tracee.
  onCleanup(() => killTracee(up));
  return up;
}

/** The upgrader under strace is strace's child: kill it too, not only strace (which would just detach). */
export function killTracee(up: Upgrader): void {
  const pid = up.logs.find((l) => typeof l.pid === 'number')?.pid as number | undefined;
  for (const target of [pid, up.pid]) {
    try {
      if (target) process.kill(target, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

export function killTraced(): void {
  for (const up of traced.splice(0)) killTracee(up);
}

export function countCalls(traceFile: string, name?: string): number {
  return readFileSync(traceFile, 'utf8')
    .split('\n')
    .filter((line) => (name ? line.startsWith(`${name}(`) : /^[a-z_0-9]+\(/.test(line))).length;
}

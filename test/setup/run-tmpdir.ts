/**
 * Global set-up: one temporary directory for the whole run, in which each test file gets one of its own
 * (file-tmpdir.ts) as its os.tmpdir(), TMPDIR for what it spawns. A test that leaves something there fails
 * (file-tmpdir.ts); what is still there when the run ends (left by a process that outlived its test) is
 * reported here and fails the run. The directory is this run's alone, so nothing that other runs or other
 * programs do in /tmp meanwhile is counted; it is removed at the end. A run that was killed leaves its own,
 * which the next run removes once the process that made it is gone (its PID is in the name).
 */
import { mkdtempSync, readdirSync, rmSync, chmodSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const RUN_PREFIX = 'upgrader-run-';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The run directories of runs whose process is gone. */
function removeAbandoned(base: string): void {
  for (const name of readdirSync(base)) {
    const pid = new RegExp(`^${RUN_PREFIX}(\\d+)-`).exec(name)?.[1];
    if (pid && !alive(Number(pid))) rmSync(join(base, name), { recursive: true, force: true });
  }
}

/** Everything under the run directory: the files' own directories should be empty, and nothing else be there. */
function leftovers(dir: string): string[] {
  const left: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory() && /^[a-z]\./.test(name)) left.push(...readdirSync(path).map((entry) => join(name, entry)));
    else left.push(name);
  }
  return left;
}

export function setup(): () => void {
  const base = tmpdir();
  removeAbandoned(base);
  const dir = mkdtempSync(join(base, `${RUN_PREFIX}${process.pid}-`));
  // Some tests run commands as other users, who must be able to reach the directories made for them.
  chmodSync(dir, 0o755);
  process.env.UPGRADER_TEST_RUN_DIR = dir;
  process.env.TMPDIR = dir;
  return () => {
    const left = leftovers(dir);
    rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
    if (left.length > 0) {
      console.error(`\n${left.length} temporary entries were still in ${dir} when the run ended (removed now), left by processes that outlived their tests:\n  ${left.join('\n  ')}\n`);
      process.exitCode = 1;
    }
  };
}

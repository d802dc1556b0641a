/**
 * The example agent: does visible periodic work and upgrades itself when told to by its "state".
 *
 * Work: every EXAMPLE_TICK_MS (default 200) while it is the active agent, it appends
 * "<epoch ms> <version> <pid> tick <n>" to <root>/work.log and says so on stderr.
 * State: before each tick it reads <root>/desired-version; when that names another version it has
 * not asked for before (it remembers every attempt in <root>/example-attempts, so that a release that
 * failed or was rolled back is not retried in a loop), it asks the upgrader for that version.
 * Verification: a version directory may hold example.json, {"verify":"fail","reason":"..."} to refuse
 * to start (a broken release) or {"crashAfterGoMs":500} to die soon after taking over.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connectAgent } from '../src/agent.js';

type Behaviour = { verify?: 'ok' | 'fail'; reason?: string; verifyMs?: number; crashAfterGoMs?: number };

function readBehaviour(): Behaviour {
  try {
    return JSON.parse(readFileSync('example.json', 'utf8')) as Behaviour;
  } catch {
    return {};
  }
}

function readAttempts(root: string): Set<string> {
  try {
    return new Set(readFileSync(join(root, 'example-attempts'), 'utf8').split('\n').filter(Boolean));
  } catch {
    return new Set();
  }
}

function readDesired(root: string): string | null {
  try {
    return readFileSync(join(root, 'desired-version'), 'utf8').trim() || null;
  } catch {
    return null;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function main(): Promise<void> {
  const agent = connectAgent();
  const version = agent.version ?? 'unversioned';
  const root = agent.root ?? process.cwd();
  const say = (text: string) => process.stderr.write(`[example-agent ${version} pid ${process.pid}] ${text}\n`);
  const behaviour = readBehaviour();

  say(agent.role === 'candidate' ? `verifying myself before taking over from ${agent.fromVersion}` : 'starting');
  await sleep(behaviour.verifyMs ?? 100);
  if (behaviour.verify === 'fail') {
    say(`verification failed: ${behaviour.reason ?? 'incompatible state'}`);
    process.exit(1);
  }
  agent.ready();
  await agent.waitForGo();
  say('working');
  if (behaviour.crashAfterGoMs !== undefined) {
    setTimeout(() => {
      say('crashing (as example.json asks)');
      process.exit(2);
    }, behaviour.crashAfterGoMs);
  }

  let ticks = 0;
  let upgrading = false;
  const tick = () => {
    if (!agent.isActive) return;
    ticks += 1;
    appendFileSync(join(root, 'work.log'), `${Date.now()} ${version} ${process.pid} tick ${ticks}\n`);
    if (ticks % 10 === 0) agent.status(`${ticks} ticks done`);
    const desired = readDesired(root);
    if (desired && desired !== version && !upgrading && !readAttempts(root).has(desired)) {
      upgrading = true;
      appendFileSync(join(root, 'example-attempts'), `${desired}\n`);
      say(`asking to upgrade to ${desired}`);
      void agent.requestUpgrade(desired).then((answer) => {
        upgrading = false;
        if (!answer.ok) say(`upgrade to ${desired} failed: ${answer.reason}${answer.code ? ` (${answer.code})` : ''}; carrying on`);
      });
    }
  };
  const timer = setInterval(tick, Number(process.env.EXAMPLE_TICK_MS ?? 200));
  agent.onStop(() => {
    clearInterval(timer);
    say(`handing over after ${ticks} ticks`);
  });
}

void main();

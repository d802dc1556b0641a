#!/usr/bin/env node
// The benchmark's reference agent: exclusive work, timed with CLOCK_MONOTONIC (process.hrtime), which
// all processes on the machine share. While it is the active agent it works every millisecond; it
// logs to $BENCH_LOG the instant it starts working ("first") and the instant it stops ("last"), so the
// gap between two agents is first(new) - last(old), and a negative gap is an overlap.
//
// Two ways to run it:
//  - protocol v1 (under the upgrader or the floor harness): a candidate verifies for BENCH_VERIFY_MS,
//    sends ready, and works only after go; on stop it stops working, then sends stopped and exits.
//    SIGUSR1 makes the active agent ask for the other version (a <-> b).
//  - under pm2 (pm_id is set): it verifies, tells pm2 it is ready, and works at once (pm2 has no go);
//    it stops working on SIGINT, which pm2 sends to the old process on reload.
import { appendFileSync } from 'node:fs';

const log = process.env.BENCH_LOG;
const verifyMs = Number(process.env.BENCH_VERIFY_MS ?? 50);
const version = process.env.UPGRADER_VERSION ?? process.env.BENCH_VERSION ?? 'pm2';
const underPm2 = process.env.pm_id !== undefined;
const now = () => process.hrtime.bigint();
const record = (what, at) => appendFileSync(log, `${what} ${at} ${process.pid} ${version}\n`);

let working = false;
let ticks = 0;
let timer;
function startWork() {
  const at = now();
  working = true;
  timer = setInterval(() => { ticks += 1; }, 1);
  record('first', at);
}
function stopWork() {
  if (!working) return null;
  const at = now();
  working = false;
  clearInterval(timer);
  return at;
}

const send = (msg) => process.stdout.write(`${JSON.stringify(msg)}\n`);
const verified = new Promise((resolve) => setTimeout(resolve, verifyMs));

if (underPm2) {
  await verified;
  process.send?.('ready');
  startWork();
  process.on('SIGINT', () => {
    const last = stopWork();
    if (last !== null) record('last', last);
    process.exit(0);
  });
  // keep the event loop alive even between ticks
  setInterval(() => undefined, 1 << 30);
} else {
  const role = process.env.UPGRADER_ROLE;
  if (role === 'candidate') await verified;
  send({ type: 'ready' });
  if (role === 'active') startWork();
  process.on('SIGUSR1', () => {
    if (!working) return;
    record('req', now());
    send({ type: 'upgrade', version: version === 'a' ? 'b' : 'a' });
  });
  let buffer = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    buffer += chunk;
    let newline;
    while ((newline = buffer.indexOf('\n')) !== -1) {
      const msg = JSON.parse(buffer.slice(0, newline));
      buffer = buffer.slice(newline + 1);
      if (msg.type === 'go') startWork();
      if (msg.type === 'stop') {
        const last = stopWork();
        send({ type: 'stopped' });
        if (last !== null) record('last', last);
        process.exit(0);
      }
    }
  });
  process.stdin.on('end', () => process.exit(0));
}

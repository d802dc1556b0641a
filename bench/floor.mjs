#!/usr/bin/env node
// The floor: the handshake and nothing else. No layout, no state, no lock, no validation, no timers.
// Usage: floor.mjs <entry of version a> <entry of version b>. The agent asks to upgrade (a <-> b);
// the floor spawns the candidate, waits for ready, sends stop to the old agent, waits for stopped,
// and sends go in the same turn. SIGTERM ends it.
import { spawn } from 'node:child_process';

const entries = { a: process.argv[2], b: process.argv[3] };
let active = null;

function start(version, role) {
  const child = spawn(entries[version], [], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, UPGRADER_PROTOCOL: '1', UPGRADER_VERSION: version, UPGRADER_ROLE: role },
  });
  const agent = { child, version, onMessage: () => undefined };
  let buffer = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    buffer += chunk;
    let newline;
    while ((newline = buffer.indexOf('\n')) !== -1) {
      const msg = JSON.parse(buffer.slice(0, newline));
      buffer = buffer.slice(newline + 1);
      agent.onMessage(msg);
    }
  });
  return agent;
}

function supervise(agent) {
  active = agent;
  agent.onMessage = (msg) => {
    if (msg.type !== 'upgrade') return;
    const old = agent;
    const candidate = start(msg.version, 'candidate');
    candidate.onMessage = (m) => {
      if (m.type !== 'ready') return;
      old.onMessage = (s) => {
        if (s.type !== 'stopped') return;
        candidate.child.stdin.write('{"type":"go"}\n');
        supervise(candidate);
      };
      old.child.stdin.write('{"type":"stop"}\n');
    };
  };
}

supervise(start('a', 'active'));
process.on('SIGTERM', () => {
  active?.child.kill('SIGTERM');
  process.exit(0);
});

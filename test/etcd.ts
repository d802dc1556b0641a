/**
 * Real etcd servers for tests (the etcd on the PATH: Debian's etcd-server 3.4, /usr/bin/etcd): members on
 * loopback with ports the kernel picked, data under the test's scratch directory, killed after the test
 * whether it passed or not. Readiness is each member's /health on a plain-http metrics listener, so it is
 * the same check with or without TLS on the client port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { freePort } from '../examples/free-port.js';
import { join } from 'node:path';
import { execa } from 'execa';
import { isAlive, onCleanup, scratchDir } from './helpers.js';

export type EtcdTls = {
  /** The CA that signed the server's and clients' certificates. */
  ca: string;
  /** The server's certificate and key; etcdctl (set-up, compact) presents them as its client certificate too. */
  cert: string;
  key: string;
  /** Ask every client for a certificate signed by `ca`. */
  clientCertAuth?: boolean;
  /** Client URLs name this host (it must be in the server certificate's SANs); default localhost. */
  host?: string;
};

export type EtcdOptions = { members: 1 | 3; tls?: EtcdTls; readyMs?: number };

export type EtcdCluster = {
  /** Client URLs, one per member, in member order. */
  endpoints: string[];
  dataDirs: string[];
  /** Current PIDs, one per member (a restarted member has a new one). */
  readonly pids: number[];
  /** SIGKILL to every member (members that lost their quorum may ignore SIGTERM), and waits for them. */
  stop(): Promise<void>;
  /** Sends `signal` (default SIGKILL) to member i and waits for it to exit. */
  kill(i: number, signal?: NodeJS.Signals): Promise<void>;
  /** Starts member i again on its data and ports; resolves once it reports healthy. */
  restart(i: number): Promise<void>;
  pause(i: number): void;
  resume(i: number): void;
  /** Compacts the whole history up to the current revision (Debian's etcd has auto-compaction off). */
  compact(): Promise<void>;
  /** etcdctl against the cluster, with the TLS files when there are some; its stdout. */
  etcdctl(...args: string[]): Promise<string>;
};

type Member = { name: string; client: number; peer: number; metrics: number; dir: string; log: string; child?: ChildProcess; exited?: Promise<void> };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function healthy(member: Member): Promise<boolean> {
  try {
    const response = await fetch(`http://127.0.0.1:${member.metrics}/health`, { signal: AbortSignal.timeout(1_000) });
    const body = (await response.json()) as { health?: string };
    return body.health === 'true';
  } catch {
    return false;
  }
}

function logTail(member: Member): string {
  try {
    return readFileSync(member.log, 'utf8').split('\n').slice(-15).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Synchronous, for onCleanup: SIGKILL, then wait (briefly) until the process is gone or a zombie. */
function killNow(child: ChildProcess | undefined): void {
  if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(child.pid, 'SIGKILL');
  } catch {
    return;
  }
  const until = Date.now() + 5_000;
  const tick = new Int32Array(new SharedArrayBuffer(4));
  while (isAlive(child.pid) && Date.now() < until) Atomics.wait(tick, 0, 0, 10);
}

export async function startEtcd(options: EtcdOptions): Promise<EtcdCluster> {
  const base = scratchDir('etcd-');
  const tls = options.tls;
  const host = tls?.host ?? 'localhost';
  const scheme = tls ? 'https' : 'http';
  const readyMs = options.readyMs ?? 30_000;
  let members: Member[] = [];
  onCleanup(() => {
    for (const member of members) killNow(member.child);
  });

  const argsOf = (member: Member, state: 'new' | 'existing') => {
    const cluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(',');
    return [
      '--name', member.name, '--data-dir', member.dir,
      '--listen-client-urls', `${scheme}://127.0.0.1:${member.client}`,
      '--advertise-client-urls', `${scheme}://${tls ? host : '127.0.0.1'}:${member.client}`,
      '--listen-peer-urls', `http://127.0.0.1:${member.peer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${member.peer}`,
      '--listen-metrics-urls', `http://127.0.0.1:${member.metrics}`,
      '--initial-cluster', cluster, '--initial-cluster-state', state, '--initial-cluster-token', `t-${process.pid}-${members[0]!.client}`,
      '--logger', 'zap', '--log-outputs', member.log,
      ...(tls ? ['--trusted-ca-file', tls.ca, '--cert-file', tls.cert, '--key-file', tls.key, ...(tls.clientCertAuth ? ['--client-cert-auth'] : [])] : []),
    ];
  };

  const launch = (member: Member, state: 'new' | 'existing') => {
    // The initial-cluster flags are ignored once the data directory exists, so a restart uses the same ones.
    const child = spawn('etcd', argsOf(member, state), { stdio: 'ignore' });
    member.child = child;
    member.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  };

  const waitHealthy = async (which: Member[]) => {
    const deadline = Date.now() + readyMs;
    for (;;) {
      const dead = which.find((m) => m.child!.exitCode !== null || m.child!.signalCode !== null);
      if (dead) throw Object.assign(new Error(`etcd member ${dead.name} exited while starting:\n${logTail(dead)}`), { member: dead });
      if ((await Promise.all(which.map(healthy))).every(Boolean)) return;
      if (Date.now() > deadline) throw new Error(`etcd did not report healthy within ${readyMs} ms; logs in ${base}:\n${which.map(logTail).join('\n')}`);
      await sleep(50);
    }
  };

  // Another process may take a port between freePort() and etcd's bind: start again on new ports.
  for (let attempt = 1; ; attempt++) {
    const ports = await Promise.all(Array.from({ length: options.members * 3 }, freePort));
    if (new Set(ports).size !== ports.length) continue;
    members = Array.from({ length: options.members }, (_, i) => ({
      name: `m${i}`,
      client: ports[3 * i]!,
      peer: ports[3 * i + 1]!,
      metrics: ports[3 * i + 2]!,
      dir: join(base, `a${attempt}-m${i}`),
      log: join(base, `a${attempt}-m${i}.log`),
    }));
    for (const member of members) launch(member, 'new');
    try {
      await waitHealthy(members);
      break;
    } catch (error) {
      for (const member of members) killNow(member.child);
      const inUse = members.some((m) => /address already in use/.test(logTail(m)));
      if (!inUse || attempt >= 3) throw error;
    }
  }

  const member = (i: number) => {
    const m = members[i];
    if (!m) throw new Error(`there is no etcd member ${i} (members 0 to ${members.length - 1})`);
    return m;
  };
  const endpoints = members.map((m) => `${scheme}://${tls ? host : '127.0.0.1'}:${m.client}`);

  const cluster: EtcdCluster = {
    endpoints,
    dataDirs: members.map((m) => m.dir),
    get pids() {
      return members.map((m) => m.child!.pid!);
    },
    async stop() {
      await Promise.all(members.map((_, i) => cluster.kill(i)));
    },
    async kill(i, signal = 'SIGKILL') {
      const m = member(i);
      if (m.child!.exitCode !== null || m.child!.signalCode !== null) return;
      // A stopped process gets SIGTERM only once it runs again.
      if (signal !== 'SIGKILL') m.child!.kill('SIGCONT');
      m.child!.kill(signal);
      await m.exited;
    },
    async restart(i) {
      const m = member(i);
      await cluster.kill(i);
      launch(m, 'existing');
      await waitHealthy([m]);
    },
    pause(i) {
      member(i).child!.kill('SIGSTOP');
    },
    resume(i) {
      member(i).child!.kill('SIGCONT');
    },
    async compact() {
      const status = JSON.parse(await cluster.etcdctl('endpoint', 'status', '--write-out=json')) as { Status: { header: { revision: number } } }[];
      const revision = Math.max(...status.map((s) => s.Status.header.revision));
      await cluster.etcdctl('compact', String(revision), '--physical');
    },
    async etcdctl(...args) {
      const live = members.filter((m) => m.child!.exitCode === null && m.child!.signalCode === null);
      const urls = live.map((m) => `${scheme}://${tls ? host : '127.0.0.1'}:${m.client}`).join(',');
      const tlsArgs = tls ? ['--cacert', tls.ca, '--cert', tls.cert, '--key', tls.key] : [];
      const { stdout } = await execa('etcdctl', ['--endpoints', urls, '--command-timeout', '5s', ...tlsArgs, ...args], {
        env: { ETCDCTL_API: '3' },
        timeout: 15_000,
      });
      return stdout;
    },
  };
  return cluster;
}

/**
 * The etcd connection (src/fleet/etcd.ts) against real etcd servers started by test/etcd.ts: plain calls,
 * a frozen server, a restart on the same data, a three-member cluster losing a member, TLS with client
 * certificates and password authentication.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import { closeEtcd, connectEtcd, describeEtcdError, etcdSettings, etcdUnreachable, type EtcdSettings } from '../../src/fleet/etcd.js';
import { startEtcd } from '../etcd.js';
import { execa } from 'execa';
import { cleanUpAfterEach, missing, onCleanup, REPO, scratchDir, titled } from '../helpers.js';

cleanUpAfterEach();

async function client(settings: EtcdSettings): Promise<Etcd3> {
  const etcd = await connectEtcd(settings);
  onCleanup(() => etcd.close());
  return etcd;
}

/** How long `call` takes to fail, and with what. */
async function failure(call: () => Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const started = performance.now();
  try {
    await call();
  } catch (error) {
    return { error, ms: performance.now() - started };
  }
  throw new Error('the call succeeded');
}

const noEtcd = missing('etcd');

describe.skipIf(noEtcd)(titled('connectEtcd against a real etcd', noEtcd), () => {
  it('puts and gets through a namespace, and the settings from flags reach the server', async () => {
    const cluster = await startEtcd({ members: 1 });
    const settings = etcdSettings({ etcd: cluster.endpoints.join(',') }, {});
    expect(settings.endpoints).toEqual(cluster.endpoints);
    const etcd = await client(settings);
    const fleet = etcd.namespace('/upgrader/f1/');
    await fleet.put('hosts/h1').value('{"schema":1}');
    expect(await fleet.get('hosts/h1').string()).toBe('{"schema":1}');
    // The namespace is only a prefix on the wire.
    expect(await etcd.get('/upgrader/f1/hosts/h1').string()).toBe('{"schema":1}');
    await closeEtcd(etcd);
  });

  it('a call to a frozen etcd fails within about twice the call timeout, as unreachable, and works again after SIGCONT', async () => {
    const cluster = await startEtcd({ members: 1 });
    const callTimeoutMs = 1_000;
    const etcd = await client({ endpoints: cluster.endpoints, callTimeoutMs });
    await etcd.put('k').value('before');
    cluster.pause(0);
    const { error, ms } = await failure(() => etcd.get('k').string());
    console.log(`frozen etcd: failed after ${Math.round(ms)} ms with ${(error as Error).constructor.name}`);
    expect(etcdUnreachable(error)).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(callTimeoutMs * 0.9);
    expect(ms).toBeLessThan(callTimeoutMs * 2 + 1_500);
    expect(describeEtcdError(error, cluster.endpoints)).toMatch(/^etcd at http:\/\/127\.0\.0\.1:\d+ (did not answer in time|cannot be reached|failed several calls)/);

    cluster.resume(0);
    const resumed = performance.now();
    // The breaker may be open for up to a second after the failures: retry until then, no longer.
    let value: string | null = null;
    while (value === null) {
      try {
        value = await etcd.get('k').string();
      } catch (e) {
        expect(etcdUnreachable(e)).toBe(true);
        if (performance.now() - resumed > 5_000) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    console.log(`frozen etcd: answered again ${Math.round(performance.now() - resumed)} ms after SIGCONT`);
    expect(value).toBe('before');
  });

  it('a member restarted on the same data keeps the keys, and the same client reaches it again', async () => {
    const cluster = await startEtcd({ members: 1 });
    const etcd = await client({ endpoints: cluster.endpoints, callTimeoutMs: 2_000 });
    await etcd.put('kept').value('yes');
    const before = cluster.pids[0];
    await cluster.kill(0);
    const down = await failure(() => etcd.get('kept').string());
    expect(etcdUnreachable(down.error)).toBe(true);
    const started = performance.now();
    await cluster.restart(0);
    expect(cluster.pids[0]).not.toBe(before);
    let value: string | null = null;
    for (const deadline = performance.now() + 5_000; value === null; ) {
      try {
        value = await etcd.get('kept').string();
      } catch (e) {
        if (performance.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    console.log(`restart: healthy and read back ${Math.round(performance.now() - started)} ms after the respawn`);
    expect(value).toBe('yes');
  });

  it('three members with one killed still accept puts', async () => {
    const started = performance.now();
    const cluster = await startEtcd({ members: 3 });
    console.log(`three members healthy after ${Math.round(performance.now() - started)} ms`);
    const etcd = await client({ endpoints: cluster.endpoints, callTimeoutMs: 3_000 });
    await etcd.put('before').value('1');
    // Kill the leader when it is known, the harder case: the rest must elect a new one.
    const status = JSON.parse(await cluster.etcdctl('endpoint', 'status', '--write-out=json')) as { Status: { header: { member_id: number }; leader: number } }[];
    const leader = Math.max(0, status.findIndex((s) => s.Status.header.member_id === s.Status.leader));
    await cluster.kill(leader);
    const killed = performance.now();
    for (let i = 0; i < 10; i++) await etcd.put(`after/${i}`).value(String(i));
    console.log(`three members, member ${leader} (the leader) killed: 10 puts done in ${Math.round(performance.now() - killed)} ms`);
    expect(await etcd.getAll().prefix('after/').keys()).toHaveLength(10);
    expect(await etcd.get('before').string()).toBe('1');
  });

  it('compact() removes history: a read at an old revision is refused as compacted', async () => {
    const cluster = await startEtcd({ members: 1 });
    const etcd = await client({ endpoints: cluster.endpoints, callTimeoutMs: 2_000 });
    const first = await etcd.put('c').value('1').exec();
    await etcd.put('c').value('2');
    await cluster.compact();
    const { error } = await failure(() => etcd.get('c').revision(first.header.revision).string());
    expect(etcdUnreachable(error)).toBe(false);
    expect(describeEtcdError(error)).toMatch(/compacted/);
  });
});

const noTls = missing('etcd', 'openssl');

/** A CA, a server certificate for localhost, and a client certificate, made with openssl in `dir`. */
function makeCertificates(dir: string): Record<'ca' | 'caKey' | 'server' | 'serverKey' | 'client' | 'clientKey', string> {
  const f = (name: string) => join(dir, name);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '1', '-subj', '/CN=upgrader test CA');
  const leaf = (name: string, cn: string, ext: string) => {
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${cn}`);
    writeFileSync(f(`${name}.ext`), ext);
    ssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${name}.crt`), '-days', '1', '-extfile', f(`${name}.ext`));
  };
  // The server certificate also serves etcdctl as a client certificate (test set-up only).
  leaf('server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
  leaf('client', 'fleet-client', 'extendedKeyUsage=clientAuth\n');
  return { ca: f('ca.crt'), caKey: f('ca.key'), server: f('server.crt'), serverKey: f('server.key'), client: f('client.crt'), clientKey: f('client.key') };
}

describe.skipIf(noTls)(titled('connectEtcd with TLS client certificates and a password', noTls), () => {
  it('connects with the CA, a client certificate and a password from a file; refuses clearly without them', async () => {
    const dir = scratchDir('etcd-tls-');
    const certs = makeCertificates(dir);
    const cluster = await startEtcd({ members: 1, tls: { ca: certs.ca, cert: certs.server, key: certs.serverKey, clientCertAuth: true } });
    expect(cluster.endpoints[0]).toMatch(/^https:\/\/localhost:\d+$/);

    const rootPassword = 'root-secret';
    const password = 'fleet-secret';
    await cluster.etcdctl('user', 'add', `root:${rootPassword}`);
    await cluster.etcdctl('role', 'add', 'upgrader');
    await cluster.etcdctl('role', 'grant-permission', 'upgrader', '--prefix=true', 'readwrite', '/upgrader/');
    await cluster.etcdctl('user', 'add', `upgrader:${password}`);
    await cluster.etcdctl('user', 'grant-role', 'upgrader', 'upgrader');
    await cluster.etcdctl('auth', 'enable');

    const passwordFile = join(dir, 'password');
    writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
    const flags = { etcd: cluster.endpoints[0], 'etcd-cacert': certs.ca, 'etcd-cert': certs.client, 'etcd-key': certs.clientKey, 'etcd-user': 'upgrader', 'etcd-password-file': passwordFile };
    const settings = { ...etcdSettings(flags, {}), callTimeoutMs: 2_000 };
    const etcd = await client(settings);
    await etcd.put('/upgrader/prod/hosts/h1').value('tls');
    expect(await etcd.get('/upgrader/prod/hosts/h1').string()).toBe('tls');
    const outside = await failure(() => etcd.put('/elsewhere').value('x').exec());
    expect(describeEtcdError(outside.error)).toMatch(/denied the request/);

    // No client certificate: the TLS handshake is refused.
    const noCert = await client({ ...settings, cert: undefined, key: undefined });
    const refused = await failure(() => noCert.get('/upgrader/prod/hosts/h1').string());
    const sentence = describeEtcdError(refused.error, settings.endpoints);
    console.log(`without a client certificate (${Math.round(refused.ms)} ms): ${sentence}`);
    expect(etcdUnreachable(refused.error)).toBe(true);
    expect(sentence).toMatch(/^etcd at https:\/\/localhost:\d+ cannot be reached or refused the TLS handshake/);

    // A wrong password.
    writeFileSync(passwordFile, 'wrong\n');
    const wrong = await client({ ...etcdSettings(flags, {}), callTimeoutMs: 2_000 });
    const denied = await failure(() => wrong.get('/upgrader/prod/hosts/h1').string());
    expect(describeEtcdError(denied.error)).toMatch(/refused the user name or password/);
  });
});

describe.skipIf(noEtcd)(titled('closeEtcd', noEtcd), () => {
  it('after the watchers are cancelled and the lease revoked, the process exits at once', async () => {
    const cluster = await startEtcd({ members: 1 });
    const script = [
      `import { closeEtcd, connectEtcd } from ${JSON.stringify(join(REPO, 'dist/src/fleet/etcd.js'))};`,
      `const etcd = await connectEtcd({ endpoints: ${JSON.stringify(cluster.endpoints)}, callTimeoutMs: 2000 });`,
      `const watcher = await etcd.watch().prefix('p/').create();`,
      `watcher.on('error', () => {});`,
      `const lease = etcd.lease(3);`,
      `await lease.grant();`,
      `await lease.put('p/presence').value('me');`,
      `await watcher.cancel();`,
      `await lease.revoke();`,
      `await closeEtcd(etcd);`,
      `console.log(Date.now());`,
    ].join('\n');
    const child = execa(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000, reject: false });
    const result = await child;
    expect(result.exitCode, result.stderr).toBe(0);
    const exitMs = Date.now() - Number(result.stdout);
    console.log(`closeEtcd: the process exited ${exitMs} ms after it`);
    expect(exitMs).toBeLessThan(3_000);
  });
});

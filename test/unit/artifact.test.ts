/**
 * Fetching and staging a release on real files, against a real HTTP server on loopback started here: what is
 * retried and what is not, what is left behind (nothing, on any failure), and a real install into a real root.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { c as createTar } from 'tar';
import { describe, expect, it } from 'vitest';
import { fetchArtifact, readReleaseManifest, stageRelease, type FetchOptions } from '../../src/fleet/artifact.js';
import { FLEET_CODE_PATTERN, FLEET_ERROR_CODES, FleetError } from '../../src/fleet/errors.js';
import { Layout } from '../../src/layout.js';
import { cleanUpAfterEach, makeRoot, onCleanup, scratchDir } from '../helpers.js';

cleanUpAfterEach();

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Resolves with the promise's value, or fails naming what was awaited once `ms` have passed. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** What the server saw of one response: the bytes it wrote, and whether the client closed before it finished. */
type Seen = { path: string; sent: number; closed: Promise<{ finished: boolean }> };

type Handler = (req: IncomingMessage, res: ServerResponse, hit: number) => void;

/** A real HTTP server on 127.0.0.1, port chosen by the system, closed after the test. */
async function serve(handler: Handler): Promise<{ url: (path?: string) => string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const entry: Seen = { path: req.url ?? '', sent: 0, closed: new Promise((resolve) => res.on('close', () => resolve({ finished: res.writableFinished }))) };
    seen.push(entry);
    const write = res.write.bind(res) as (chunk: Buffer, ...rest: unknown[]) => boolean;
    res.write = ((chunk: Buffer, ...rest: unknown[]) => {
      entry.sent += chunk.length;
      return write(chunk, ...rest);
    }) as typeof res.write;
    handler(req, res, seen.length);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onCleanup(() => {
    server.closeAllConnections();
    server.close();
  });
  const { port } = server.address() as AddressInfo;
  return { url: (path = '/release.tgz') => `http://127.0.0.1:${port}${path}`, seen };
}

const send = (res: ServerResponse, body: Buffer) => {
  res.writeHead(200, { 'content-length': body.length });
  res.end(body);
};

/** Writes `total` bytes in chunks (no length announced), as fast as the client reads, until it is done or the client leaves. */
async function trickle(res: ServerResponse, total: number, chunk = 64 * 1024): Promise<void> {
  res.writeHead(200);
  for (let sent = 0; sent < total && !res.destroyed; sent += chunk) {
    if (!res.write(Buffer.alloc(chunk, 7))) await new Promise((resolve) => (res.once('drain', resolve), res.once('close', resolve)));
  }
  if (!res.destroyed) res.end();
}

/** A version's tree packed as a .tar.gz: bin/agent, a data file, and a manifest if given. */
async function releaseArchive(options: { manifest?: unknown; entry?: boolean; marker?: string } = {}): Promise<{ file: string; data: Buffer; sha: string }> {
  const dir = scratchDir('release-');
  mkdirSync(join(dir, 'tree/bin'), { recursive: true });
  if (options.entry !== false) writeFileSync(join(dir, 'tree/bin/agent'), '#!/bin/sh\nexec sleep 1000\n', { mode: 0o755 });
  writeFileSync(join(dir, 'tree/data.txt'), options.marker ?? 'one');
  if (options.manifest !== undefined) writeFileSync(join(dir, 'tree/upgrader.json'), JSON.stringify(options.manifest));
  const file = join(dir, 'release.tgz');
  await createTar({ gzip: true, file, cwd: join(dir, 'tree'), portable: true }, ['.']);
  const data = readFileSync(file);
  return { file, data, sha: sha256(data) };
}

const limits = { maxBytes: 64 << 20, timeoutMs: 5_000, attempts: 3, backoffMs: 1 };

function fetchInto(dir: string, o: Partial<FetchOptions> & { source: string; sha256: string }) {
  return fetchArtifact({ ...limits, dir, ...o });
}

/** The FleetError a promise rejects with (fails if it resolves, or rejects with anything else). */
async function fleetError(promise: Promise<unknown>): Promise<FleetError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FleetError);
  return error as FleetError;
}

const downloads = (root: string) => readdirSync(join(root, 'state/downloads'));
const temporaries = (root: string) => readdirSync(join(root, 'versions')).filter((name) => name.startsWith('.'));

describe('fetchArtifact over http', () => {
  it('downloads into a private file, reports progress, and verifies the digest', async () => {
    const release = await releaseArchive();
    const server = await serve((_, res) => send(res, release.data));
    const dir = scratchDir('dl-');
    const progress: { bytes: number; total: number | null }[] = [];
    const got = await fetchInto(dir, { source: server.url(), sha256: release.sha.toUpperCase(), onProgress: (p) => progress.push(p) });
    expect(got.bytes).toBe(release.data.length);
    expect(readFileSync(got.file).equals(release.data)).toBe(true);
    expect(statSync(got.file).mode & 0o777).toBe(0o600);
    expect(got.file.startsWith(`${dir}/.`)).toBe(true);
    expect(readdirSync(dir)).toHaveLength(1);
    expect(progress.at(-1)).toEqual({ bytes: release.data.length, total: release.data.length });
  });

  it('refuses a digest mismatch without retrying, and leaves nothing in the directory', async () => {
    const release = await releaseArchive();
    const server = await serve((_, res) => send(res, release.data));
    const dir = scratchDir('dl-');
    const wrong = 'a'.repeat(64);
    const error = await fleetError(fetchInto(dir, { source: server.url(), sha256: wrong }));
    expect(error.code).toBe('digest-mismatch');
    expect(error.message).toContain(release.sha);
    expect(error.message).toContain(wrong);
    expect(server.seen).toHaveLength(1);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('stops reading as soon as more than maxBytes arrived: the server sees the connection close before it sent everything', async () => {
    const total = 256 << 20;
    const server = await serve((_, res) => void trickle(res, total));
    const dir = scratchDir('dl-');
    const error = await fleetError(fetchInto(dir, { source: server.url(), sha256: '0'.repeat(64), maxBytes: 256 << 10 }));
    expect(error.code).toBe('too-large');
    expect(error.message).toMatch(/larger than the limit of 262144 bytes/);
    const { finished } = await within(server.seen[0]!.closed, 5_000, 'the server to see the connection close');
    expect(finished).toBe(false);
    expect(server.seen[0]!.sent).toBeLessThan(total);
    expect(server.seen).toHaveLength(1);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('refuses a body whose announced length is over the limit before reading it', async () => {
    const server = await serve((_, res) => {
      res.writeHead(200, { 'content-length': 10 << 20 });
      res.write(Buffer.alloc(1024));
    });
    const dir = scratchDir('dl-');
    const error = await fleetError(fetchInto(dir, { source: server.url(), sha256: '0'.repeat(64), maxBytes: 1 << 20 }));
    expect(error.code).toBe('too-large');
    expect(error.message).toMatch(/the server announced 10485760/);
    expect(await within(server.seen[0]!.closed, 5_000, 'the server to see the connection close')).toEqual({ finished: false });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('times out a server that stalls mid-body, retries from zero, then fails with the last cause', async () => {
    const server = await serve((_, res) => {
      res.writeHead(200, { 'content-length': 2048 });
      res.write(Buffer.alloc(1024));
    });
    const dir = scratchDir('dl-');
    const started = performance.now();
    const error = await fleetError(fetchInto(dir, { source: server.url(), sha256: '0'.repeat(64), timeoutMs: 200, attempts: 3 }));
    expect(error.code).toBe('download-failed');
    expect(error.message).toMatch(/^Could not download http:\/\/127\.0\.0\.1:\d+\/release\.tgz \(3 attempts\): nothing arrived for 200 ms\.$/);
    expect(server.seen).toHaveLength(3);
    for (const seen of server.seen) expect(await within(seen.closed, 5_000, 'each stalled connection to be closed')).toEqual({ finished: false });
    expect(performance.now() - started).toBeGreaterThanOrEqual(3 * 200 - 20);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('retries a 500 and succeeds on the next attempt', async () => {
    const release = await releaseArchive();
    const server = await serve((_, res, hit) => {
      if (hit === 1) {
        res.writeHead(500);
        res.end('later');
      } else send(res, release.data);
    });
    const dir = scratchDir('dl-');
    const got = await fetchInto(dir, { source: server.url(), sha256: release.sha });
    expect(readFileSync(got.file).equals(release.data)).toBe(true);
    expect(server.seen).toHaveLength(2);
    expect(readdirSync(dir)).toHaveLength(1);
  });

  it('does not retry a 404', async () => {
    const server = await serve((_, res) => {
      res.writeHead(404);
      res.end();
    });
    const dir = scratchDir('dl-');
    const error = await fleetError(fetchInto(dir, { source: server.url(), sha256: '0'.repeat(64), attempts: 5 }));
    expect(error.code).toBe('download-failed');
    expect(error.message).toMatch(/: the server answered 404 Not Found\.$/);
    expect(server.seen).toHaveLength(1);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('retries a refused connection, then fails naming it', async () => {
    // A port nothing listens on: one the system just gave out, once it is closed again.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as AddressInfo;
    await new Promise((resolve) => probe.close(resolve));
    const dir = scratchDir('dl-');
    const error = await fleetError(fetchInto(dir, { source: `http://127.0.0.1:${port}/release.tgz`, sha256: '0'.repeat(64), attempts: 2 }));
    expect(error.code).toBe('download-failed');
    expect(error.message).toMatch(/\(2 attempts\): the connection failed \(ECONNREFUSED\)\.$/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('follows a redirect, but never to another scheme, and not forever', async () => {
    const release = await releaseArchive();
    const server = await serve((req, res) => {
      if (req.url === '/moved') res.writeHead(302, { location: '/release.tgz' }).end();
      else if (req.url === '/to-file') res.writeHead(301, { location: 'file:///etc/passwd' }).end();
      else if (req.url === '/loop') res.writeHead(302, { location: '/loop' }).end();
      else send(res, release.data);
    });
    const dir = scratchDir('dl-');
    const got = await fetchInto(dir, { source: server.url('/moved'), sha256: release.sha });
    expect(readFileSync(got.file).equals(release.data)).toBe(true);
    const toFile = await fleetError(fetchInto(dir, { source: server.url('/to-file'), sha256: release.sha }));
    expect(toFile.code).toBe('bad-source');
    expect(toFile.message).toMatch(/redirects to a file URL; only http and https are followed/);
    const loop = await fleetError(fetchInto(dir, { source: server.url('/loop'), sha256: release.sha, attempts: 3 }));
    expect(loop.code).toBe('download-failed');
    expect(loop.message).toMatch(/redirected more than 5 times/);
    expect(server.seen.filter((s) => s.path === '/loop')).toHaveLength(6);
    expect(readdirSync(dir)).toEqual([got.file.slice(dir.length + 1)]);
  });

  it('stops at once when the caller aborts, mid-body', async () => {
    let stalled!: () => void;
    const reached = new Promise<void>((resolve) => (stalled = resolve));
    const server = await serve((_, res) => {
      res.writeHead(200, { 'content-length': 2048 });
      res.write(Buffer.alloc(1024), () => stalled());
    });
    const dir = scratchDir('dl-');
    const controller = new AbortController();
    const pending = fleetError(fetchInto(dir, { source: server.url(), sha256: '0'.repeat(64), timeoutMs: 60_000, signal: controller.signal }));
    await within(reached, 5_000, 'the server to send part of the body');
    controller.abort();
    const error = await within(pending, 5_000, 'the download to stop');
    expect(error.code).toBe('aborted');
    expect(server.seen).toHaveLength(1);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('fetchArtifact from a local file', () => {
  it('copies a plain path and a file:// URL, and refuses a mismatch', async () => {
    const release = await releaseArchive();
    const dir = scratchDir('dl-');
    for (const source of [release.file, pathToFileURL(release.file).href]) {
      const got = await fetchInto(dir, { source, sha256: release.sha });
      expect(readFileSync(got.file).equals(release.data)).toBe(true);
      expect(statSync(got.file).mode & 0o777).toBe(0o600);
    }
    const error = await fleetError(fetchInto(scratchDir('dl-'), { source: release.file, sha256: 'b'.repeat(64) }));
    expect(error.code).toBe('digest-mismatch');
  });

  it('fails at once, without retrying, on a missing file or one over the limit', async () => {
    const dir = scratchDir('dl-');
    const missing = await fleetError(fetchInto(dir, { source: join(dir, 'nothing.tgz'), sha256: '0'.repeat(64), attempts: 5, backoffMs: 10_000 }));
    expect(missing.code).toBe('download-failed');
    expect(missing.message).toBe(`Could not download ${join(dir, 'nothing.tgz')}: ${join(dir, 'nothing.tgz')} does not exist.`);
    const release = await releaseArchive();
    const large = await fleetError(fetchInto(dir, { source: release.file, sha256: release.sha, maxBytes: 10 }));
    expect(large.code).toBe('too-large');
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('sources and options refused before anything is created', () => {
  it.each([
    ['relative/release.tgz', /is a relative path/],
    ['release.tgz', /is a relative path/],
    ['', /is empty/],
    ['ftp://127.0.0.1/release.tgz', /uses the scheme ftp/],
    ['data:,hello', /uses the scheme data/],
    ['file://elsewhere/srv/release.tgz', /names the host elsewhere/],
    ['file:///srv/a%2Fb.tgz', /not a usable file path/],
    ['/srv/release\n.tgz', /control characters/],
    ['http://deploy:hunter2@127.0.0.1/release.tgz', /carries a user name or password/],
  ])('refuses %j', async (source, reason) => {
    const dir = scratchDir('dl-');
    const error = await fleetError(fetchInto(dir, { source, sha256: '0'.repeat(64) }));
    expect(error.code).toBe('bad-source');
    expect(error.message).toMatch(reason);
    expect(error.message).not.toContain('hunter2');
    expect(readdirSync(dir)).toEqual([]);
  });

  it.each([
    [{ sha256: 'abc' }, /sha256 must be 64 hexadecimal digits, not "abc"/],
    [{ maxBytes: 0 }, /maxBytes/],
    [{ attempts: 0 }, /attempts/],
    [{ timeoutMs: -1 }, /timeoutMs/],
  ])('refuses the options %j', async (bad, reason) => {
    const dir = scratchDir('dl-');
    const error = await fleetError(fetchInto(dir, { source: '/srv/release.tgz', sha256: '0'.repeat(64), ...bad }));
    expect(error.code).toBe('bad-options');
    expect(error.message).toMatch(reason);
  });

  it('has codes that fit a host record', () => {
    for (const code of FLEET_ERROR_CODES) expect(code).toMatch(FLEET_CODE_PATTERN);
  });
});

describe('stageRelease', () => {
  it('installs a downloaded release into a real root, and does nothing the second time', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const release = await releaseArchive({ manifest: { upgradeFrom: '>=1.0.0', sequential: true } });
    const server = await serve((_, res) => send(res, release.data));
    const options = { ...limits, root, version: '2.0.0', source: server.url(), sha256: release.sha };
    expect(await stageRelease(options)).toEqual({ installed: true, bytes: release.data.length });
    expect(Layout.open(root).versionProblem('2.0.0')).toBeNull();
    expect(readFileSync(join(root, 'versions/2.0.0/data.txt'), 'utf8')).toBe('one');
    expect(downloads(root)).toEqual([]);
    expect(temporaries(root)).toEqual([]);
    expect(statSync(join(root, 'state/downloads')).mode & 0o777).toBe(0o700);

    expect(await stageRelease(options)).toEqual({ installed: false, bytes: 0 });
    expect(server.seen).toHaveLength(1);
  });

  it('downloads again when the recorded digest differs, and refuses other content under the same name', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const first = await releaseArchive();
    const other = await releaseArchive({ marker: 'two' });
    const server = await serve((req, res) => send(res, req.url === '/other.tgz' ? other.data : first.data));
    await stageRelease({ ...limits, root, version: '2.0.0', source: server.url(), sha256: first.sha });
    const error = await fleetError(stageRelease({ ...limits, root, version: '2.0.0', source: server.url('/other.tgz'), sha256: other.sha }));
    expect(error.code).toBe('install-refused');
    expect(error.message).toMatch(/^Version 2\.0\.0 was not staged in .*: Version 2\.0\.0 is already installed with different content/);
    expect(server.seen).toHaveLength(2);
    expect(readFileSync(join(root, 'versions/2.0.0/data.txt'), 'utf8')).toBe('one');
    expect(downloads(root)).toEqual([]);
  });

  it('leaves no version and no download behind after a digest mismatch', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const release = await releaseArchive();
    const server = await serve((_, res) => send(res, release.data));
    const error = await fleetError(stageRelease({ ...limits, root, version: '2.0.0', source: server.url(), sha256: 'c'.repeat(64) }));
    expect(error.code).toBe('digest-mismatch');
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
    expect(downloads(root)).toEqual([]);
    expect(temporaries(root)).toEqual([]);
    expect(server.seen).toHaveLength(1);
  });

  it('turns a refused install into install-refused naming the source, with nothing half-installed', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const release = await releaseArchive({ entry: false });
    const server = await serve((_, res) => send(res, release.data));
    const error = await fleetError(stageRelease({ ...limits, root, version: '2.0.0', source: server.url(), sha256: release.sha }));
    expect(error.code).toBe('install-refused');
    expect(error.message).toMatch(/has no entry point/);
    expect(error.message).not.toContain('.artifact.tmp-');
    expect(existsSync(join(root, 'versions/2.0.0'))).toBe(false);
    expect(temporaries(root)).toEqual([]);
    expect(downloads(root)).toEqual([]);
  });

  it('refuses a bad version name or a missing root before downloading', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const server = await serve((_, res) => send(res, Buffer.alloc(1)));
    const badName = await fleetError(stageRelease({ ...limits, root, version: '../x', source: server.url(), sha256: '0'.repeat(64) }));
    expect(badName.code).toBe('install-refused');
    expect(badName.message).toMatch(/"\.\.\/x" is not a valid version name/);
    const noRoot = await fleetError(stageRelease({ ...limits, root: join(root, 'nope'), version: '2.0.0', source: server.url(), sha256: '0'.repeat(64) }));
    expect(noRoot.code).toBe('install-refused');
    expect(noRoot.message).toMatch(/does not exist/);
    expect(server.seen).toHaveLength(0);
  });

  it('removes the downloads of a process that died', async () => {
    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const release = await releaseArchive();
    mkdirSync(join(root, 'state/downloads'), { recursive: true, mode: 0o700 });
    // PID 2^22 + 1 is above Linux's pid_max: no process can have it.
    writeFileSync(join(root, 'state/downloads/.artifact.tmp-4194305-dead.tgz'), 'partial');
    await stageRelease({ ...limits, root, version: '2.0.0', source: release.file, sha256: release.sha });
    expect(downloads(root)).toEqual([]);
  });
});

describe('readReleaseManifest', () => {
  it('reads upgradeFrom and sequential from the archive, and nulls without a manifest', async () => {
    expect(await readReleaseManifest((await releaseArchive({ manifest: { upgradeFrom: '>=1.2.0 <2', sequential: true } })).file)).toEqual({ upgradeFrom: '>=1.2.0 <2', sequential: true });
    expect(await readReleaseManifest((await releaseArchive({ manifest: { entry: 'bin/agent' } })).file)).toEqual({ upgradeFrom: null, sequential: null });
    expect(await readReleaseManifest((await releaseArchive()).file)).toEqual({ upgradeFrom: null, sequential: null });
  });

  it('refuses an invalid manifest and a file that is not a .tar.gz', async () => {
    const invalid = await fleetError(readReleaseManifest((await releaseArchive({ manifest: { upgradeFrom: 'soon' } })).file));
    expect(invalid.code).toBe('bad-manifest');
    expect(invalid.message).toMatch(/upgrader\.json is invalid \(upgradeFrom: is not a semver range\)/);
    const file = join(scratchDir('release-'), 'text.tgz');
    writeFileSync(file, 'not an archive at all, just text that is long enough to be looked at by the parser'.repeat(20));
    const notArchive = await fleetError(readReleaseManifest(file));
    expect(notArchive.code).toBe('bad-archive');
  });
});

/**
 * Releases on a host: fetching a release archive (a local file, a file:/// URL, http:// or https://) into a
 * private file, checked against its SHA-256 before anything reads it as an archive; staging it as a version
 * with installVersion; and reading the manifest an archive carries, for `fleet publish`.
 *
 * Timeout: `timeoutMs` bounds every wait for progress (connecting, the response headers, each gap between
 * two pieces of the body, each read of a local file), not the whole transfer. A slow but moving download
 * of a large release is never cut short; its length is bounded by `maxBytes` and its total time by the
 * caller's `signal`. An overall deadline would fail a slow link on every host of a fleet at once.
 *
 * Retries: connection errors, 5xx answers and stalls are retried, after an exponential backoff with
 * jitter (so that a fleet does not come back in one wave), up to `attempts` in all. Each attempt starts
 * from zero in a new file: a partial download is never resumed, since nothing unverified is trusted. A
 * digest mismatch, a 4xx answer, a too-large body, a full disk or a bad source are final.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants, lstatSync, mkdirSync, readdirSync, realpathSync, rmSync, chmodSync } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { join, normalize, posix } from 'node:path';
import { addAbortSignal, type Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { replaceFileAtomically } from '../durable.js';
import { asUpgraderError, UpgraderError } from '../errors.js';
import { installVersion, type InstallResult } from '../install.js';
import { Layout, selfAndAncestors, unsafeForRoot, versionNameProblem } from '../layout.js';
import { MANIFEST_FILE, parseManifest } from '../manifest.js';
import { readRecord, READ_LIMIT } from '../safe-file.js';
import { FleetError } from './errors.js';

/** An absolute path, `file:///abs/path`, `http://...` or `https://...`; nothing else (see parseArtifactSource). */
export type ArtifactSource = string;

export type Progress = { bytes: number; total: number | null };

export type FetchOptions = {
  source: ArtifactSource;
  sha256: string;
  /** Where the private file is created. */
  dir: string;
  maxBytes: number;
  /** The longest wait for any progress (see the top of this file). */
  timeoutMs: number;
  /** Attempts in all, the first included. */
  attempts: number;
  /** The first pause between attempts; it doubles each time (with jitter), up to MAX_BACKOFF_MS. */
  backoffMs?: number;
  onProgress?: (p: Progress) => void;
  signal?: AbortSignal;
};

export type StageOptions = Omit<FetchOptions, 'dir'> & {
  root: string;
  version: string;
  /** The root's entry point, as `upgrader run --entry` has it (default bin/agent). */
  entry?: string;
};

export type ReleaseManifest = { upgradeFrom: string | null; sequential: boolean | null };

const MAX_REDIRECTS = 5;
const MAX_BACKOFF_MS = 30_000;
const DEFAULT_BACKOFF_MS = 500;
const CHUNK = 1 << 20;

// ---------------------------------------------------------------------------------------------------------
// Sources

type Source = { kind: 'file'; path: string; shown: string } | { kind: 'http'; url: URL; shown: string };

/** A URL as it may be printed and stored in etcd: no user information, and a query (often a signature) elided. */
function showUrl(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}${url.search ? '?…' : ''}`;
}

const quoted = (text: string) => JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}…` : text);

export function parseArtifactSource(source: string): Source {
  const refuse = (what: string, why: string) =>
    new FleetError('bad-source', `The artifact source ${what} ${why}; give an absolute path, a file:/// URL or an http(s):// URL.`);
  if (typeof source !== 'string' || source === '') throw refuse('""', 'is empty');
  if (/[\u0000-\u001f\u007f]/.test(source)) throw refuse(quoted(source), 'contains control characters');
  if (source.startsWith('/')) return { kind: 'file', path: normalize(source), shown: source };
  let url: URL;
  try {
    url = new URL(source);
  } catch {
    throw refuse(quoted(source), 'is a relative path');
  }
  if (url.username !== '' || url.password !== '') {
    // Never echoed: the sentence ends up in logs and in etcd.
    throw refuse(showUrl(url), 'carries a user name or password, which would be stored in the fleet records');
  }
  if (url.protocol === 'http:' || url.protocol === 'https:') return { kind: 'http', url, shown: showUrl(url) };
  if (url.protocol !== 'file:') throw refuse(showUrl(url), `uses the scheme ${url.protocol.slice(0, -1)}, which is not supported`);
  if (url.host !== '' && url.host !== 'localhost') throw refuse(quoted(source), `names the host ${url.host}, but a file URL must name a file on this machine`);
  if (url.search !== '' || url.hash !== '') throw refuse(quoted(source), 'has a query or fragment, which a file has not');
  try {
    return { kind: 'file', path: fileURLToPath(url), shown: source };
  } catch {
    throw refuse(quoted(source), 'is not a usable file path (an encoded "/" or NUL)');
  }
}

// ---------------------------------------------------------------------------------------------------------
// Options

const Limits = z.object({
  sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hexadecimal digits'),
  maxBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  timeoutMs: z.number().int().positive().max(2 ** 31 - 1),
  attempts: z.number().int().min(1).max(100),
  backoffMs: z.number().int().min(0).max(MAX_BACKOFF_MS).optional(),
});

function checkLimits(o: FetchOptions): void {
  const parsed = Limits.safeParse(o);
  if (parsed.success) return;
  const issue = parsed.error.issues[0]!;
  const field = String(issue.path[0]);
  const value = (o as Record<string, unknown>)[field];
  throw new FleetError('bad-options', `The download option ${field} ${issue.message.toLowerCase()}, not ${quoted(String(value))}.`);
}

// ---------------------------------------------------------------------------------------------------------
// Fetching

/** Why one attempt failed, completing "Could not download X: ..."; `transient` ones are tried again. */
class Failure extends Error {
  constructor(
    readonly transient: boolean,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(reason, options);
  }
}

const codeOf = (error: unknown) => (error as NodeJS.ErrnoException | undefined)?.code ?? null;
const isDiskFull = (error: unknown) => ['ENOSPC', 'EDQUOT'].includes(codeOf(error) ?? codeOf((error as Error | undefined)?.cause) ?? '');

/** Fires when nothing has happened for `ms`; paused while we write (a slow disk is not a stalled server). */
class Watchdog {
  private timer: NodeJS.Timeout | undefined;
  constructor(
    private readonly ms: number,
    private readonly onStall: () => void,
  ) {
    this.kick();
  }
  kick(): void {
    this.pause();
    this.timer = setTimeout(this.onStall, this.ms);
  }
  pause(): void {
    clearTimeout(this.timer);
  }
}

export async function fetchArtifact(o: FetchOptions): Promise<{ file: string; bytes: number }> {
  const source = parseArtifactSource(o.source);
  checkLimits(o);
  if (source.kind === 'file') refuseForeignLocalFile(source);
  for (let attempt = 1; ; attempt++) {
    try {
      return await attemptOnce(source, o);
    } catch (error) {
      if (!(error instanceof Failure)) throw error;
      if (!error.transient || attempt >= o.attempts) {
        const tries = attempt > 1 ? ` (${attempt} attempts)` : '';
        throw new FleetError('download-failed', `Could not download ${source.shown}${tries}: ${error.message}.`, { cause: error });
      }
      await pause(backoff(o.backoffMs ?? DEFAULT_BACKOFF_MS, attempt), source, o.signal);
    }
  }
}

/** Exponential, capped, with the upper half jittered. */
function backoff(first: number, attempt: number): number {
  const full = Math.min(first * 2 ** (attempt - 1), MAX_BACKOFF_MS);
  return full / 2 + Math.random() * (full / 2);
}

const aborted = (source: Source) => new FleetError('aborted', `The download of ${source.shown} was cancelled; nothing was kept.`);

function pause(ms: number, source: Source, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted(source));
    const stop = () => {
      clearTimeout(timer);
      reject(aborted(source));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', stop);
      resolve();
    }, ms);
    signal?.addEventListener('abort', stop, { once: true });
  });
}

/**
 * As root, a local source is read only if no other user controls it or the path to it (as installVersion
 * judges its own sources): otherwise a link of theirs, or a tampered release record, could make root copy
 * a file they may not read.
 */
function refuseForeignLocalFile(source: Extract<Source, { kind: 'file' }>): void {
  if (process.geteuid?.() !== 0) return;
  let problem: string | null;
  try {
    problem = unsafeForRoot(selfAndAncestors(source.path)) ?? unsafeForRoot(selfAndAncestors(realpathSync(source.path)));
  } catch {
    return; // missing or unreadable: the attempt says so
  }
  if (problem) throw new FleetError('bad-source', `Refusing the artifact ${source.shown}: ${problem}; as root, use a file that no other user can change.`);
}

/** One attempt, from zero, into a new private file that is removed unless it is returned verified. */
async function attemptOnce(source: Source, o: FetchOptions): Promise<{ file: string; bytes: number }> {
  if (o.signal?.aborted) throw aborted(source);
  const { handle, path } = await createPrivateFile(o.dir, source);
  const controller = new AbortController();
  const cancel = () => controller.abort(aborted(source));
  o.signal?.addEventListener('abort', cancel, { once: true });
  const watchdog = new Watchdog(o.timeoutMs, () => controller.abort(new Failure(true, `nothing arrived for ${o.timeoutMs} ms`)));
  try {
    const body = source.kind === 'file' ? await openLocal(source, o.maxBytes, controller.signal) : await openHttp(source, o.maxBytes, controller.signal, watchdog);
    const { bytes, sha256 } = await drain(body, handle, { path, source, o, watchdog });
    if (sha256 !== o.sha256.toLowerCase()) {
      throw new FleetError('digest-mismatch', `The artifact ${source.shown} has SHA-256 ${sha256}, not the expected ${o.sha256.toLowerCase()}; it was deleted and nothing was installed.`);
    }
    await handle.close();
    return { file: path, bytes };
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(path, { force: true });
    // Whatever broke once the stall timer or the caller cancelled, the cancellation is the reason.
    throw controller.signal.aborted ? controller.signal.reason : error;
  } finally {
    watchdog.pause();
    o.signal?.removeEventListener('abort', cancel);
    // Releases the connection or the local file, whatever state they are in.
    if (!controller.signal.aborted) controller.abort(new Error('done'));
  }
}

async function createPrivateFile(dir: string, source: Source): Promise<{ handle: FileHandle; path: string }> {
  // A temporary name (see durable.ts) that still ends in .tgz, which installVersion takes for an archive.
  const path = join(dir, `.artifact.tmp-${process.pid}-${randomBytes(6).toString('hex')}.tgz`);
  try {
    // O_EXCL: a new file, never whatever (or wherever a link) is already at that name.
    return { handle: await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600), path };
  } catch (error) {
    if (isDiskFull(error)) throw diskFull(dir, source, error);
    throw new FleetError('download-failed', `Could not create a file in ${dir} to download ${source.shown} into (${codeOf(error) ?? String(error)}).`, { cause: error });
  }
}

const diskFull = (dir: string, source: Source, cause: unknown) =>
  new FleetError('disk-full', `No space is left in ${dir} for the artifact ${source.shown} (${codeOf(cause) ?? codeOf((cause as Error).cause)}); the partial download was deleted.`, { cause });

const tooLarge = (source: Source, maxBytes: number, what: string) =>
  new FleetError('too-large', `The artifact ${source.shown} is larger than the limit of ${maxBytes} bytes (${what}); the download was stopped and nothing was kept.`);

type Body = { stream: Readable; total: number | null };

async function openLocal(source: Extract<Source, { kind: 'file' }>, maxBytes: number, signal: AbortSignal): Promise<Body> {
  let input: FileHandle;
  try {
    // O_NONBLOCK: a FIFO planted at the path must not hang the open.
    input = await open(source.path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    const code = codeOf(error);
    throw new Failure(false, code === 'ENOENT' ? `${source.path} does not exist` : `${source.path} cannot be read (${code ?? String(error)})`, { cause: error });
  }
  const stat = await input.stat();
  if (!stat.isFile()) {
    await input.close();
    throw new Failure(false, `${source.path} is not a regular file`);
  }
  if (stat.size > maxBytes) {
    await input.close();
    throw tooLarge(source, maxBytes, `it has ${stat.size}`);
  }
  return { stream: addAbortSignal(signal, input.createReadStream({ highWaterMark: CHUNK })), total: stat.size };
}

async function openHttp(source: Extract<Source, { kind: 'http' }>, maxBytes: number, signal: AbortSignal, watchdog: Watchdog): Promise<Body> {
  let url = source.url;
  for (let hop = 0; ; hop++) {
    const response = await get(url, signal);
    watchdog.kick();
    const status = response.statusCode ?? 0;
    const location = response.headers.location;
    const at = hop > 0 ? ` (redirected to ${showUrl(url)})` : '';
    if (status >= 300 && status < 400 && location !== undefined) {
      response.destroy();
      if (hop >= MAX_REDIRECTS) throw new Failure(false, `it redirected more than ${MAX_REDIRECTS} times`);
      url = redirectTarget(source, url, location);
      continue;
    }
    if (status !== 200) {
      response.destroy();
      throw new Failure(status >= 500, `the server answered ${status}${response.statusMessage ? ` ${response.statusMessage}` : ''}${at}`);
    }
    const total = contentLength(response);
    if (total !== null && total > maxBytes) {
      response.destroy();
      throw tooLarge(source, maxBytes, `the server announced ${total}`);
    }
    return { stream: response, total };
  }
}

function get(url: URL, signal: AbortSignal): Promise<IncomingMessage> {
  const request = url.protocol === 'https:' ? https.request : http.request;
  return new Promise((resolve, reject) => {
    // No shared agent: no connection outlives its attempt, and a stopped download closes its socket.
    const req = request(url, { agent: false, signal, headers: { 'accept-encoding': 'identity', 'user-agent': 'upgrader' } }, resolve);
    req.on('error', (error) => reject(new Failure(true, `the connection failed (${codeOf(error) ?? error.message})`, { cause: error })));
    req.end();
  });
}

function redirectTarget(source: Source, from: URL, location: string): URL {
  let next: URL;
  try {
    next = new URL(location, from);
  } catch {
    throw new Failure(false, `the server redirected to ${quoted(location)}, which is not a URL`);
  }
  if (next.protocol !== 'http:' && next.protocol !== 'https:') {
    throw new FleetError('bad-source', `The artifact ${source.shown} redirects to a ${next.protocol.slice(0, -1)} URL; only http and https are followed.`);
  }
  if (next.username !== '' || next.password !== '') {
    throw new FleetError('bad-source', `The artifact ${source.shown} redirects to ${showUrl(next)} with a user name or password, which is not followed.`);
  }
  return next;
}

function contentLength(response: IncomingMessage): number | null {
  const header = response.headers['content-length'];
  return header !== undefined && /^\d+$/.test(header) ? Number(header) : null;
}

type Sink = { path: string; source: Source; o: FetchOptions; watchdog: Watchdog };

/** Streams the body into the file while hashing it; stops at the first byte over maxBytes. */
async function drain(body: Body, out: FileHandle, sink: Sink): Promise<{ bytes: number; sha256: string }> {
  const { source, o, watchdog } = sink;
  const hash = createHash('sha256');
  const chunks = body.stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let bytes = 0;
  o.onProgress?.({ bytes, total: body.total });
  try {
    for (;;) {
      watchdog.kick();
      const next = await chunks.next().catch((error: unknown) => {
        throw new Failure(true, `the transfer broke after ${bytes} bytes (${codeOf(error) ?? (error as Error).message})`, { cause: error });
      });
      if (next.done) break;
      watchdog.pause();
      bytes += next.value.length;
      if (bytes > o.maxBytes) throw tooLarge(source, o.maxBytes, `more than ${o.maxBytes} arrived`);
      hash.update(next.value);
      await writeAll(out, next.value, bytes - next.value.length, sink);
      o.onProgress?.({ bytes, total: body.total });
    }
  } finally {
    watchdog.pause();
    // Stops the transfer when we leave early (too large, a failed write): the server sees the connection close.
    await chunks.return?.().catch(() => undefined);
  }
  if (body.total !== null && bytes !== body.total) throw new Failure(true, `the transfer ended after ${bytes} of ${body.total} bytes`);
  return { bytes, sha256: hash.digest('hex') };
}

async function writeAll(out: FileHandle, chunk: Buffer, position: number, sink: Sink): Promise<void> {
  try {
    let written = 0;
    while (written < chunk.length) written += (await out.write(chunk, written, chunk.length - written, position + written)).bytesWritten;
  } catch (error) {
    if (isDiskFull(error)) throw diskFull(sink.o.dir, sink.source, error);
    throw new Failure(false, `writing ${sink.path} failed (${codeOf(error) ?? String(error)})`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Staging

/**
 * What a root knows of a staged release's digest. installVersion checks a digest but records none, and
 * an archive's digest cannot be recomputed from the tree it unpacked to; so after each staging the digest
 * is recorded in state/releases/<version>.json, with the identity of versions/<version> at that moment
 * (a version pruned and installed again from something else is a new directory, and is not taken for it).
 */
const DigestRecord = z.object({ sha256: z.string().regex(/^[0-9a-f]{64}$/), ino: z.number(), ctimeMs: z.number() }).strict();

const releasesDir = (layout: Layout) => join(layout.stateDir, 'releases');
const recordPath = (layout: Layout, version: string) => join(releasesDir(layout), `${version}.json`);

function versionIdentity(layout: Layout, version: string): { ino: number; ctimeMs: number } | null {
  try {
    const stat = lstatSync(join(layout.versionsDir, version));
    return stat.isDirectory() ? { ino: stat.ino, ctimeMs: stat.ctimeMs } : null;
  } catch {
    return null;
  }
}

function stagedWithDigest(layout: Layout, version: string, sha256: string): boolean {
  const record = readRecord(recordPath(layout, version), DigestRecord);
  const identity = versionIdentity(layout, version);
  return (
    record !== null &&
    identity !== null &&
    record.sha256 === sha256.toLowerCase() &&
    record.ino === identity.ino &&
    record.ctimeMs === identity.ctimeMs &&
    layout.versionProblem(version) === null
  );
}

function recordDigest(layout: Layout, version: string, sha256: string): void {
  const identity = versionIdentity(layout, version);
  if (identity === null) return;
  mkdirSync(releasesDir(layout), { recursive: true, mode: 0o755 });
  replaceFileAtomically(recordPath(layout, version), `${JSON.stringify({ sha256: sha256.toLowerCase(), ...identity })}\n`);
}

const refused = (version: string, root: string, why: string, cause?: unknown) =>
  new FleetError('install-refused', `Version ${version} was not staged in ${root}: ${why}`, { cause });

function openRoot(root: string, version: string): Layout {
  const badName = versionNameProblem(version);
  if (badName) throw refused(String(version), root, `${badName}.`);
  try {
    return Layout.open(root);
  } catch (error) {
    if (error instanceof UpgraderError) throw refused(version, root, error.message, error);
    throw error;
  }
}

/**
 * state/downloads/: the owner's alone (0700), so that nobody else can reach a download before it is
 * verified and installed. Leftovers of a process that died are removed here: installVersion's own sweep
 * of temporary names does not look in this directory, and must not, since it treats its own process's
 * names as leftovers, and this process's download is in use while it installs.
 */
function downloadsDir(layout: Layout, version: string): string {
  // A root that has never run has no state/ yet; it gets the mode `upgrader run` would give it.
  ownDirectory(layout, version, layout.stateDir, 0o755, { narrow: false });
  const dir = ownDirectory(layout, version, join(layout.stateDir, 'downloads'), 0o700, { narrow: true });
  for (const name of readdirSync(dir)) {
    const pid = Number(/\.tmp-(\d+)-/.exec(name)?.[1]);
    if (!pid || !processRuns(pid)) rmSync(join(dir, name), { recursive: true, force: true });
  }
  return dir;
}

/** `dir`, created with `mode` if missing, checked to be a real directory of this user; `narrow`: made no more open than `mode`. */
function ownDirectory(layout: Layout, version: string, dir: string, mode: number, { narrow }: { narrow: boolean }): string {
  try {
    mkdirSync(dir, { mode });
  } catch (error) {
    if (codeOf(error) !== 'EEXIST') throw refused(version, layout.root, `${dir} cannot be created (${codeOf(error) ?? String(error)}).`, error);
  }
  const stat = lstatSync(dir);
  if (!stat.isDirectory()) throw refused(version, layout.root, `${dir} is not a directory (a link is never followed there).`);
  if (stat.uid !== process.geteuid?.()) throw refused(version, layout.root, `${dir} belongs to uid ${stat.uid}, not to this user.`);
  if (narrow && (stat.mode & 0o777 & ~mode) !== 0) chmodSync(dir, stat.mode & mode);
  return dir;
}

function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return codeOf(error) === 'EPERM';
  }
}

/**
 * Fetches a release and installs it as `version`, unless it is already installed from that digest. The
 * download is verified before installVersion sees it, and installVersion checks the digest again on its
 * own private copy; it never leaves a half-installed version.
 */
export async function stageRelease(o: StageOptions): Promise<{ installed: boolean; bytes: number }> {
  const layout = openRoot(o.root, o.version);
  if (/^[0-9a-fA-F]{64}$/.test(o.sha256) && stagedWithDigest(layout, o.version, o.sha256)) return { installed: false, bytes: 0 };
  const { file, bytes } = await fetchArtifact({ ...o, dir: downloadsDir(layout, o.version) });
  try {
    const result = await install(layout, o, file);
    try {
      recordDigest(layout, o.version, o.sha256);
    } catch {
      // The version is installed; without the record the next staging downloads again and finds it identical.
    }
    return { installed: !result.identical, bytes };
  } finally {
    await rm(file, { force: true });
  }
}

async function install(layout: Layout, o: StageOptions, file: string): Promise<InstallResult> {
  try {
    return await installVersion({ root: layout.root, version: o.version, source: file, sha256: o.sha256, entry: o.entry });
  } catch (error) {
    const source = parseArtifactSource(o.source);
    if (isDiskFull(error)) throw diskFull(layout.versionsDir, source, error);
    const known = asUpgraderError(error);
    // installVersion names the file it was given; the operator knows the release by its source.
    if (known) throw refused(o.version, layout.root, known.message.split(file).join(source.shown), error);
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------------------
// The manifest inside an archive

/**
 * The manifest's `upgradeFrom` and `sequential` if the archive carries one (upgrader.json at its top,
 * where installVersion puts versions/<v>/upgrader.json), else nulls. Read from the archive in memory:
 * nothing is unpacked anywhere.
 */
export async function readReleaseManifest(archive: string): Promise<ReleaseManifest> {
  const found = await manifestText(archive);
  if (found === null) return { upgradeFrom: null, sequential: null };
  const parsed = 'problem' in found ? found : parseManifest(found.text);
  if ('problem' in parsed) throw new FleetError('bad-manifest', `The archive ${archive} cannot be published: ${parsed.problem}.`);
  return { upgradeFrom: parsed.manifest.upgradeFrom ?? null, sequential: parsed.manifest.sequential ?? null };
}

type TarEntry = { path: string; type: string; on(event: 'data', listener: (chunk: Buffer) => void): unknown; resume(): unknown };

async function manifestText(archive: string): Promise<{ text: string } | { problem: string } | null> {
  let input: FileHandle;
  try {
    input = await open(archive, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    throw new FleetError('bad-archive', `The archive ${archive} cannot be read (${codeOf(error) ?? String(error)}).`, { cause: error });
  }
  try {
    if (!(await input.stat()).isFile()) throw new FleetError('bad-archive', `The archive ${archive} is not a regular file.`);
    let found: { chunks: Buffer[]; size: number; problem: string | null } | null = null;
    const tar = await import('tar');
    // strict: a damaged archive is an error, not a warning and a partial listing.
    const parser = new tar.Parser({
      strict: true,
      onReadEntry: (entry: TarEntry) => {
        // A bare Parser waits for each entry to be read (tar.t resumes them itself): the others are skipped.
        if (posix.normalize(entry.path) !== MANIFEST_FILE) return void entry.resume();
        // A later entry of the same name is what unpacking would leave.
        const current: NonNullable<typeof found> = { chunks: [], size: 0, problem: null };
        found = current;
        if (!['File', 'OldFile', 'ContiguousFile'].includes(entry.type)) current.problem = `its ${MANIFEST_FILE} is a ${entry.type}, not a file`;
        entry.on('data', (chunk) => {
          current.size += chunk.length;
          if (current.size > READ_LIMIT) current.problem = `its ${MANIFEST_FILE} is larger than ${READ_LIMIT} bytes`;
          else current.chunks.push(chunk);
        });
        entry.resume();
      },
    });
    await parse(input, parser, archive);
    const last = found as { chunks: Buffer[]; problem: string | null } | null;
    if (last === null) return null;
    return last.problem !== null ? { problem: last.problem } : { text: Buffer.concat(last.chunks).toString('utf8') };
  } finally {
    await input.close().catch(() => undefined);
  }
}

function parse(input: FileHandle, parser: NodeJS.WritableStream & NodeJS.EventEmitter, archive: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (error: Error) =>
      reject(new FleetError('bad-archive', `The archive ${archive} is not a readable .tar.gz (${error.message.replace(/^TAR_\w+: /, '')}).`, { cause: error }));
    const stream = input.createReadStream({ autoClose: false });
    stream.on('error', fail);
    parser.on('error', fail);
    parser.on('finish', () => resolve());
    parser.on('end', () => resolve());
    parser.on('close', () => resolve());
    stream.pipe(parser);
  });
}

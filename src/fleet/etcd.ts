/**
 * The one place an etcd client is made: connection settings from the command line and the environment,
 * the client with the fault handling this project relies on, and how its errors read to an operator.
 *
 * etcd3 and cockatiel are imported lazily, inside connectEtcd: loading etcd3 costs about 25 MB of RSS and
 * 0.3 s of CPU, and `upgrader run`, which may import this module's settings code, must never pay for it.
 * Only type imports of them may appear at the top of this file.
 */
import { readFileSync } from 'node:fs';
import type { IBackoff } from 'cockatiel';
import type { Etcd3 } from 'etcd3';
import { UpgraderError } from '../errors.js';

export type EtcdSettings = {
  endpoints: string[];
  caCert?: string;
  cert?: string;
  key?: string;
  user?: string;
  password?: string;
  callTimeoutMs: number;
};

export const DEFAULT_ETCD = 'http://127.0.0.1:2379';

/** Long enough for an etcd leader election (about 2 s when a leader dies), short enough to notice a frozen etcd. */
export const DEFAULT_CALL_TIMEOUT_MS = 5_000;

/** The connection options shared by every command that talks to etcd (node:util parseArgs form). */
export const ETCD_ARG_OPTIONS = {
  etcd: { type: 'string' },
  'etcd-cacert': { type: 'string' },
  'etcd-cert': { type: 'string' },
  'etcd-key': { type: 'string' },
  'etcd-user': { type: 'string' },
  'etcd-password-file': { type: 'string' },
} as const;

export type EtcdArgValues = { [K in keyof typeof ETCD_ARG_OPTIONS]?: string | boolean | (string | boolean)[] };

const usage = (sentence: string) => new UpgraderError('E_USAGE', sentence);

function stringOption(values: EtcdArgValues, name: keyof typeof ETCD_ARG_OPTIONS): string | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw usage(`--${name} takes one value.`);
  if (value === '') throw usage(`--${name} needs a value; it was given an empty one.`);
  return value;
}

function endpoint(text: string, from: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw usage(`The etcd endpoint ${JSON.stringify(text)} (from ${from}) is not a URL: write it as http://host:port or https://host:port.`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw usage(`The etcd endpoint ${JSON.stringify(text)} (from ${from}) must start with http:// or https://.`);
  }
  // A password in a URL would sit in the process list and in shell history.
  if (url.username !== '' || url.password !== '') {
    throw usage(`The etcd endpoint ${JSON.stringify(text)} (from ${from}) carries a user name or password: use --etcd-user and UPGRADER_ETCD_PASSWORD or --etcd-password-file instead.`);
  }
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') {
    throw usage(`The etcd endpoint ${JSON.stringify(text)} (from ${from}) has a path or query; etcd is reached at host:port only.`);
  }
  if (url.hostname === '') throw usage(`The etcd endpoint ${JSON.stringify(text)} (from ${from}) names no host.`);
  return url;
}

function readPassword(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new UpgraderError('E_USAGE', `The etcd password file ${file} cannot be read (${code}).`, { cause: error });
  }
  // Files written by `echo` or an editor end in a newline that is not part of the password.
  const password = text.replace(/\r?\n$/, '');
  if (password === '') throw usage(`The etcd password file ${file} is empty.`);
  return password;
}

/**
 * The settings for connectEtcd from parsed options (ETCD_ARG_OPTIONS) and the environment: --etcd, else
 * UPGRADER_ETCD, else http://127.0.0.1:2379; the user from --etcd-user or UPGRADER_ETCD_USER; the password
 * from --etcd-password-file or UPGRADER_ETCD_PASSWORD, never from the command line itself.
 */
export function etcdSettings(values: EtcdArgValues, env: NodeJS.ProcessEnv = process.env): EtcdSettings {
  const flag = stringOption(values, 'etcd');
  const fromEnv = env.UPGRADER_ETCD !== undefined && env.UPGRADER_ETCD !== '' ? env.UPGRADER_ETCD : undefined;
  const [list, from] = flag !== undefined ? [flag, '--etcd'] : fromEnv !== undefined ? [fromEnv, 'UPGRADER_ETCD'] : [DEFAULT_ETCD, 'the default'];
  const parts = list.split(',').map((part) => part.trim());
  if (parts.some((part) => part === '')) throw usage(`The etcd endpoint list ${JSON.stringify(list)} (from ${from}) has an empty entry.`);
  const urls = parts.map((part) => endpoint(part, from));
  const schemes = new Set(urls.map((url) => url.protocol));
  if (schemes.size > 1) throw usage(`The etcd endpoints ${JSON.stringify(list)} (from ${from}) mix http:// and https://: use one scheme for all of them.`);

  const caCert = stringOption(values, 'etcd-cacert');
  const cert = stringOption(values, 'etcd-cert');
  const key = stringOption(values, 'etcd-key');
  if ((cert === undefined) !== (key === undefined)) {
    throw usage(cert === undefined ? `--etcd-key ${key} needs --etcd-cert, the client certificate it belongs to.` : `--etcd-cert ${cert} needs --etcd-key, its private key.`);
  }
  const tlsFile = caCert ?? cert;
  if (tlsFile !== undefined && urls[0]!.protocol !== 'https:') {
    throw usage(`TLS files are given (${tlsFile}) but the etcd endpoints ${JSON.stringify(list)} (from ${from}) are http://: write them as https://.`);
  }

  const user = stringOption(values, 'etcd-user') ?? (env.UPGRADER_ETCD_USER || undefined);
  const passwordFile = stringOption(values, 'etcd-password-file');
  const password = passwordFile !== undefined ? readPassword(passwordFile) : env.UPGRADER_ETCD_PASSWORD || undefined;
  if (user !== undefined && password === undefined) {
    throw usage(`The etcd user ${user} needs a password: put it in a file named by --etcd-password-file, or in UPGRADER_ETCD_PASSWORD.`);
  }
  if (user === undefined && password !== undefined) {
    throw usage(`An etcd password is given (${passwordFile !== undefined ? `--etcd-password-file ${passwordFile}` : 'UPGRADER_ETCD_PASSWORD'}) but no user: add --etcd-user or UPGRADER_ETCD_USER.`);
  }

  return {
    endpoints: urls.map((url) => `${url.protocol}//${url.host}`),
    ...(caCert !== undefined ? { caCert } : {}),
    ...(cert !== undefined ? { cert, key: key! } : {}),
    ...(user !== undefined ? { user, password: password! } : {}),
    callTimeoutMs: DEFAULT_CALL_TIMEOUT_MS,
  };
}

function readTlsFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new UpgraderError('E_USAGE', `The etcd ${what} ${path} cannot be read (${code}).`, { cause: error });
  }
}

/** The names of an error's classes, most derived first: etcd3's errors all have name 'Error', and etcd3 may not be loaded. */
function classNames(error: unknown): string[] {
  const names: string[] = [];
  for (let proto = error !== null && typeof error === 'object' ? Object.getPrototypeOf(error) : null; proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    const name = (proto.constructor as { name?: unknown } | undefined)?.name;
    if (typeof name === 'string') names.push(name);
  }
  return names;
}

const is = (error: unknown, ...names: string[]) => classNames(error).some((name) => names.includes(name));

/**
 * A client for the given settings. It connects lazily: nothing is sent until the first call, so a process
 * that starts while etcd is down still starts, and learns of it from its first call (etcdUnreachable).
 * Fails with E_USAGE only when a TLS file cannot be read.
 */
export async function connectEtcd(s: EtcdSettings): Promise<Etcd3> {
  const [{ Etcd3, isRecoverableError }, { ConsecutiveBreaker, ConstantBackoff, ExponentialBackoff, TimeoutStrategy, circuitBreaker, handleWhen, retry, timeout, wrap }] = await Promise.all([
    import('etcd3'),
    import('cockatiel'),
  ]);
  const credentials =
    s.caCert !== undefined || s.cert !== undefined
      ? {
          rootCertificate: s.caCert !== undefined ? readTlsFile(s.caCert, 'CA certificate') : (undefined as unknown as Buffer),
          ...(s.cert !== undefined ? { certChain: readTlsFile(s.cert, 'client certificate'), privateKey: readTlsFile(s.key!, 'client key') } : {}),
        }
      : undefined;
  const deadline = () => ({ deadline: Date.now() + s.callTimeoutMs });
  // A request etcd refuses as too large is "recoverable" to etcd3; retrying it only opens the breaker.
  const transient = (error: Error) => isRecoverableError(error) && !is(error, 'GRPCResourceExhastedError');
  return new Etcd3({
    hosts: s.endpoints,
    ...(credentials ? { credentials } : {}),
    // The token exchange gets the same deadline: without one it waits forever on a frozen etcd.
    ...(s.user !== undefined ? { auth: { username: s.user, password: s.password!, callOptions: deadline } } : {}),
    // Pings notice a frozen or partitioned etcd under a stream that would otherwise just stay silent;
    // etcd answers pings more often than every 5 s with GOAWAY, so 10 s.
    grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 },
    // A function, so each call gets a fresh deadline; never on streams (watches, lease keepalives), which
    // live as long as the client.
    defaultCallOptions: (context) => (context.isStream ? {} : deadline()),
    faultHandling: {
      // Each retry goes to another host, so a refused connection to a dead member is retried at once on a
      // live one; the first call after a leader dies typically times out (etcd drops proposals forwarded to
      // it) and the retry succeeds. The timeout bounds the whole: a call fails within about 2x callTimeoutMs
      // (etcd3's default, three retries of a full deadline each, took 3x and more).
      global: wrap(
        timeout(2 * s.callTimeoutMs + 500, TimeoutStrategy.Aggressive),
        retry(handleWhen(transient), { maxAttempts: 3, backoff: new ConstantBackoff(100) }),
      ),
      // After three failures in a row a host is skipped, and tried again after 1 s (etcd3's default is 5 s,
      // which with one endpoint keeps a client "down" for seconds after etcd is back).
      host: () => circuitBreaker(handleWhen(transient), { halfOpenAfter: 1_000, breaker: new ConsecutiveBreaker(3) }),
      // Watches reconnect within about 1 s of etcd returning (the default grows to 30 s). etcd3 types this
      // as a backoff but calls only next() on it, which is what a backoff factory is.
      watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1_000 }) as unknown as IBackoff<unknown>,
    },
  });
}

const UNREACHABLE_CLASSES = ['GRPCUnavailableError', 'GRPCDeadlineExceededError', 'GRPCCancelledError', 'BrokenCircuitError', 'TaskCancelledError', 'EtcdWatchStreamEnded'];
const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE']);

/** Whether the error says etcd could not be reached or did not answer in time (as opposed to refusing the request). */
export function etcdUnreachable(error: unknown): boolean {
  if (is(error, ...UNREACHABLE_CLASSES)) return true;
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && CONNECTION_CODES.has(code);
}

function detail(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  // grpc-js appends empty or null parts that tell an operator nothing.
  return message.split('\n')[0]!.replace(/^\w+Error: /, '').replace(/ Last error: null\.| Resolution note:\s*$/g, '').trim();
}

/** One sentence for an operator about a failed etcd call; `endpoints` names where it was sent. */
export function describeEtcdError(error: unknown, endpoints?: string[]): string {
  if (error instanceof UpgraderError) return error.message;
  const where = endpoints && endpoints.length > 0 ? `etcd at ${endpoints.join(', ')}` : 'etcd';
  const why = detail(error);
  if (is(error, 'BrokenCircuitError')) return `${where} failed several calls in a row and is not asked again for a second; check that it runs and is reachable.`;
  if (is(error, 'GRPCDeadlineExceededError')) return `${where} did not answer in time (${why}): it may be overloaded, frozen or partitioned.`;
  if (is(error, 'TaskCancelledError')) return `${where} did not answer in time: it may be overloaded, frozen or partitioned.`;
  if (is(error, 'GRPCUnavailableError')) {
    // A refused TLS handshake (no client certificate, another CA) reads "No connection established" too.
    const secure = endpoints?.[0]?.startsWith('https:') || /certificate|ssl|tls|handshake|alert/i.test(why);
    return secure
      ? `${where} cannot be reached or refused the TLS handshake (${why}): check that etcd runs, and that --etcd-cacert, --etcd-cert and --etcd-key are the CA it trusts and a client certificate it accepts.`
      : `${where} cannot be reached (${why}): check --etcd and that etcd runs.`;
  }
  if (etcdUnreachable(error)) return `${where} cannot be reached (${why}).`;
  if (is(error, 'EtcdAuthenticationFailedError')) return `${where} refused the user name or password: check --etcd-user and the password (--etcd-password-file or UPGRADER_ETCD_PASSWORD).`;
  if (is(error, 'GRPCInvalidArgumentError') && /user name is empty/.test(why)) return `${where} requires a user (its authentication is on): give --etcd-user and a password.`;
  if (is(error, 'EtcdPermissionDeniedError')) return `${where} denied the request: the user's role does not allow it on this key prefix.`;
  if (is(error, 'GRPCOutOfRangeError')) return `${where} no longer has the revision asked for (${why}); it was compacted.`;
  if (is(error, 'GRPCResourceExhastedError')) return `${where} refused the request as too large (${why}).`;
  return `${where} failed the request: ${why}`;
}

/**
 * Closes the client without waiting on etcd. Before calling it, the caller must cancel its watchers
 * (`await watcher.cancel()`) and revoke or release its leases: etcd3's close() leaves both running, and
 * their streams and keepalive timer keep the process alive after it. Bound those waits too: against a
 * frozen etcd, a watcher's cancel() waited 15 s here (until the grpc keepalive gave up), and revoke()
 * fails after about 2x callTimeoutMs; release() sends nothing.
 */
export async function closeEtcd(client: Etcd3): Promise<void> {
  try {
    client.close();
  } catch {
    // closed already
  }
}

/** etcdSettings: where the endpoints, TLS files, user and password come from, and which inputs are refused. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_CALL_TIMEOUT_MS, etcdSettings, etcdUnreachable, describeEtcdError } from '../../src/fleet/etcd.js';
import { UpgraderError } from '../../src/errors.js';
import { cleanUpAfterEach, scratchDir } from '../helpers.js';

cleanUpAfterEach();

function refusal(run: () => unknown): UpgraderError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(UpgraderError);
    expect((error as UpgraderError).code).toBe('E_USAGE');
    return error as UpgraderError;
  }
  throw new Error('not refused');
}

describe('etcdSettings', () => {
  it('takes --etcd, else UPGRADER_ETCD, else the local default', () => {
    expect(etcdSettings({ etcd: 'http://a:1,http://b:2' }, { UPGRADER_ETCD: 'http://env:3' }).endpoints).toEqual(['http://a:1', 'http://b:2']);
    expect(etcdSettings({}, { UPGRADER_ETCD: 'http://env:3/' }).endpoints).toEqual(['http://env:3']);
    expect(etcdSettings({}, {})).toEqual({ endpoints: ['http://127.0.0.1:2379'], callTimeoutMs: DEFAULT_CALL_TIMEOUT_MS });
  });

  it('refuses endpoints that are not http(s) URLs of a host and port, and mixed schemes, naming the value', () => {
    expect(refusal(() => etcdSettings({ etcd: 'localhost:2379' }, {})).message).toMatch(/"localhost:2379" \(from --etcd\)/);
    expect(refusal(() => etcdSettings({ etcd: 'unix:///run/etcd.sock' }, {})).message).toMatch(/http:\/\/ or https:\/\//);
    expect(refusal(() => etcdSettings({}, { UPGRADER_ETCD: 'http://a:1,' })).message).toMatch(/empty entry/);
    expect(refusal(() => etcdSettings({ etcd: 'http://a:1,https://b:2' }, {})).message).toMatch(/mix http:\/\/ and https:\/\//);
    expect(refusal(() => etcdSettings({ etcd: 'http://u:secret@a:1' }, {})).message).toMatch(/--etcd-user/);
    expect(refusal(() => etcdSettings({ etcd: 'http://a:1/v3' }, {})).message).toMatch(/path or query/);
  });

  it('requires https:// with TLS files, and a key with a certificate', () => {
    expect(refusal(() => etcdSettings({ 'etcd-cacert': '/ca.pem' }, {})).message).toMatch(/TLS files are given \(\/ca\.pem\).*https:\/\//);
    expect(refusal(() => etcdSettings({ etcd: 'https://a:1', 'etcd-cert': '/c.pem' }, {})).message).toMatch(/--etcd-key/);
    const tls = etcdSettings({ etcd: 'https://a:1', 'etcd-cacert': '/ca.pem', 'etcd-cert': '/c.pem', 'etcd-key': '/k.pem' }, {});
    expect(tls).toMatchObject({ caCert: '/ca.pem', cert: '/c.pem', key: '/k.pem' });
  });

  it('reads the password from a file or the environment, never from the command line, and wants a user with it', () => {
    const file = join(scratchDir('etcd-pw-'), 'password');
    writeFileSync(file, 's3cret\n');
    expect(etcdSettings({ 'etcd-user': 'u', 'etcd-password-file': file }, { UPGRADER_ETCD_PASSWORD: 'other' })).toMatchObject({ user: 'u', password: 's3cret' });
    expect(etcdSettings({}, { UPGRADER_ETCD_USER: 'eu', UPGRADER_ETCD_PASSWORD: 'ep' })).toMatchObject({ user: 'eu', password: 'ep' });
    expect(refusal(() => etcdSettings({ 'etcd-user': 'u' }, {})).message).toMatch(/needs a password/);
    expect(refusal(() => etcdSettings({}, { UPGRADER_ETCD_PASSWORD: 'p' })).message).toMatch(/no user/);
    expect(refusal(() => etcdSettings({ 'etcd-user': 'u', 'etcd-password-file': `${file}.missing` }, {})).message).toMatch(/password file .*missing cannot be read \(ENOENT\)/);
  });
});

describe('etcdUnreachable and describeEtcdError', () => {
  // Stand-ins named like etcd3's and cockatiel's classes, which are told apart by class name so that
  // neither package has to be loaded to classify an error.
  class GRPCUnavailableError extends Error {}
  class BrokenCircuitError extends Error {}
  class EtcdPermissionDeniedError extends Error {}

  it('counts transport failures and system connection errors as unreachable, refusals not', () => {
    expect(etcdUnreachable(new GRPCUnavailableError('14 UNAVAILABLE'))).toBe(true);
    expect(etcdUnreachable(new BrokenCircuitError('open'))).toBe(true);
    expect(etcdUnreachable(Object.assign(new Error('connect'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(etcdUnreachable(new EtcdPermissionDeniedError('denied'))).toBe(false);
    expect(etcdUnreachable('text')).toBe(false);
    expect(etcdUnreachable(null)).toBe(false);
  });

  it('says one sentence naming the endpoints', () => {
    expect(describeEtcdError(new GRPCUnavailableError('14 UNAVAILABLE: No connection established. Last error: null. Resolution note: '), ['http://h:1'])).toBe(
      'etcd at http://h:1 cannot be reached (14 UNAVAILABLE: No connection established.): check --etcd and that etcd runs.',
    );
    expect(describeEtcdError(new EtcdPermissionDeniedError('etcdserver: permission denied'))).toMatch(/^etcd denied the request/);
  });
});

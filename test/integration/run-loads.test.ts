/**
 * `upgrader run` never loads the etcd client: etcd3 (with grpc-js and protobufjs) costs about 25 MB of RSS
 * and 0.3 s of CPU, and a static import of it anywhere `run` reaches would also break the bundle, which
 * keeps etcd3 outside (it reads its .proto files next to itself). Checked on the compiled CLI and on the
 * bundle, by recording every module each loads while it supervises an agent.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { expect, it } from 'vitest';
import { CLI, cleanUpAfterEach, FIXTURES, makeRoot, REPO, scratchDir, Upgrader } from '../helpers.js';
import { FAST } from '../timing.js';

cleanUpAfterEach();

const BUNDLE = join(REPO, 'dist/upgrader.cjs');
const ETCD_PACKAGES = /\/node_modules\/(etcd3|cockatiel|@grpc\/grpc-js|@grpc\/proto-loader|protobufjs)\//;

/** Node's arguments and environment that record every module loaded, by either loader, into `out`. */
function recorder(out: string): { args: string[]; env: NodeJS.ProcessEnv } {
  const hook = pathToFileURL(join(FIXTURES, 'record-loads.mjs')).href;
  const register = `import { register } from 'node:module'; register(${JSON.stringify(hook)}, { data: { out: ${JSON.stringify(out)} } });`;
  return {
    args: ['--require', join(FIXTURES, 'record-requires.cjs'), '--import', `data:text/javascript,${encodeURIComponent(register)}`],
    env: { ...process.env, RECORD_LOADS_OUT: out },
  };
}

const loaded = (out: string) => readFileSync(out, 'utf8').split('\n').filter(Boolean);

it('the recorder sees etcd3 loaded, by import() from an ES module and by require() from a bundle', async () => {
  const dir = scratchDir('loads-');
  const esm = join(dir, 'esm.log');
  await execa(process.execPath, [...recorder(esm).args, '--input-type=module', '-e', `await import('etcd3');`], { cwd: REPO, env: recorder(esm).env });
  expect(loaded(esm).some((file) => ETCD_PACKAGES.test(file))).toBe(true);
  const cjs = join(dir, 'cjs.log');
  writeFileSync(join(dir, 'bundle.cjs'), `require(${JSON.stringify(join(REPO, 'node_modules/etcd3'))});\n`);
  await execa(process.execPath, [...recorder(cjs).args, join(dir, 'bundle.cjs')], { env: recorder(cjs).env });
  expect(loaded(cjs).some((file) => ETCD_PACKAGES.test(file))).toBe(true);
});

for (const [name, entry] of [['the compiled CLI', CLI], ['the bundle', BUNDLE]] as const) {
  it(`${name}: --help and run (start, ready, SIGTERM) load no etcd client`, async () => {
    const dir = scratchDir('loads-');
    const out = join(dir, 'loads.log');
    const { args, env } = recorder(out);
    const help = await execa(process.execPath, [...args, entry, '--help'], { env });
    expect(help.stdout).toMatch(/upgrader run/);

    const root = makeRoot({ '1.0.0': {} }, '1.0.0');
    const child = spawn(process.execPath, [...args, entry, 'run', '--root', root, ...FAST], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    const up = new Upgrader(root, child);
    await up.agentPid('1.0.0');
    await up.waitForTransition('ready', 'running');
    up.kill('SIGTERM');
    expect((await up.waitForExit()).code).toBe(0);

    const files = loaded(out);
    // The recorder ran in this process: it saw the entry itself.
    expect(files.some((file) => file.endsWith(entry) || file.endsWith(pathToFileURL(entry).href))).toBe(true);
    expect(files.filter((file) => ETCD_PACKAGES.test(file))).toEqual([]);
  });
}

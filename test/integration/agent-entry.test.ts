/**
 * The package's entry points, as a user imports them (`upgrader/agent`, `upgrader/install`) from the built
 * package: the agent library loads only the protocol and its validator, never the install machinery (layout,
 * locking, archives, semver, tar), which every agent would otherwise carry.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { afterAll, expect, it } from 'vitest';
import { FIXTURES, REPO } from '../helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'agent-entry-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What a fresh Node process loads for `import(specifier)`: the project's own files and the packages, by name. */
async function loads(specifier: string): Promise<{ files: string[]; packages: string[]; exports: string[] }> {
  const out = join(dir, `${specifier.replace(/\W/g, '_')}.log`);
  const script = [
    `import { register } from 'node:module';`,
    `register(${JSON.stringify(pathToFileURL(join(FIXTURES, 'record-loads.mjs')).href)}, { data: { out: ${JSON.stringify(out)} } });`,
    `const m = await import(${JSON.stringify(specifier)});`,
    `console.log(JSON.stringify(Object.keys(m).sort()));`,
  ].join('\n');
  // cwd is the package, so the specifier resolves through package.json's exports, as it would for a user.
  const { stdout } = await execa(process.execPath, ['--input-type=module', '-e', script], { cwd: REPO });
  const files = new Set<string>();
  const packages = new Set<string>();
  for (const url of readFileSync(out, 'utf8').split('\n').filter(Boolean)) {
    const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
    const own = /\/dist\/(.+)$/.exec(url);
    if (pkg) packages.add(pkg[1]!);
    else if (own) files.add(own[1]!);
    else if (!url.startsWith('node:')) files.add(url);
  }
  return { files: [...files].sort(), packages: [...packages].sort(), exports: JSON.parse(stdout) as string[] };
}

it('upgrader/agent loads the agent library, the protocol and zod, nothing else', async () => {
  const agent = await loads('upgrader/agent');
  expect(agent.files).toEqual(['src/agent.js', 'src/protocol.js']);
  expect(agent.packages).toEqual(['zod']);
  expect(agent.exports).toContain('connectAgent');
  expect(agent.exports).not.toContain('installVersion');
  // The package's main entry is the same library.
  expect((await loads('upgrader')).files).toEqual(agent.files);
});

it('upgrader/install exports installVersion', async () => {
  const install = await loads('upgrader/install');
  expect(install.exports).toEqual(['installVersion']);
  expect(install.files).toContain('src/install.js');
});

/**
 * A version's manifest, versions/<v>/upgrader.json (optional), validated on every read:
 *   { "entry": "bin/agent", "upgradeFrom": ">=1.4.0 <2.0.0", "sequential": false }
 * entry: the entry point inside the version (else --entry); upgradeFrom: a semver range the running
 * version must satisfy for this version to take over; sequential: this version's handoffs must be
 * sequential (it cannot run beside the old one).
 */
import { join } from 'node:path';
import semver from 'semver';
import { z } from 'zod';
import { readSmallFile } from './safe-file.js';

export const MANIFEST_FILE = 'upgrader.json';

const Manifest = z
  .object({
    entry: z.string().min(1).max(4096).optional(),
    upgradeFrom: z.string().refine((range) => semver.validRange(range) !== null, 'is not a semver range').optional(),
    sequential: z.boolean().optional(),
  })
  .strict();
export type Manifest = z.infer<typeof Manifest>;

/** The manifest, {} when there is none, or the reason it is unusable. */
export function readManifest(versionDir: string): { manifest: Manifest } | { problem: string } {
  const file = readSmallFile(join(versionDir, MANIFEST_FILE));
  if (!file.ok) return file.kind === 'missing' ? { manifest: {} } : { problem: `its ${MANIFEST_FILE} ${file.problem}` };
  return parseManifest(file.text);
}

/** A manifest's text, validated; also read from inside an archive (fleet publish), where there is no file to open. */
export function parseManifest(text: string): { manifest: Manifest } | { problem: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { problem: `its ${MANIFEST_FILE} is not valid JSON` };
  }
  const parsed = Manifest.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return { problem: `its ${MANIFEST_FILE} is invalid (${issue.path.join('.') || 'manifest'}: ${issue.message})` };
  }
  return { manifest: parsed.data };
}

/** Why `to` may not take over from `from` under its manifest's upgradeFrom, or null. */
export function jumpProblem(from: string, to: string, manifest: Manifest): string | null {
  if (!manifest.upgradeFrom) return null;
  if (semver.valid(from) && semver.satisfies(from, manifest.upgradeFrom, { includePrerelease: true })) return null;
  return `${to} may only take over from versions in "${manifest.upgradeFrom}" (its ${MANIFEST_FILE}), and ${from} is not one`;
}

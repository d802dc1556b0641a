/** Command-line parsing shared by the core commands (cli.ts) and the fleet's (fleet/cli.ts). */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { describeError, UpgraderError } from './errors.js';

export type Values = Record<string, string | boolean | undefined>;

/** Parses strictly; every mistake is E_USAGE with a sentence. `positionals` names the positional arguments allowed. */
export function parse(args: string[], options: NonNullable<ParseArgsConfig['options']>, positionals: string[] = []): Values {
  try {
    const parsed = parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: positionals.length > 0, strict: true });
    if (parsed.positionals.length > positionals.length) throw new Error(`Unexpected argument ${JSON.stringify(parsed.positionals[positionals.length])}`);
    positionals.forEach((name, i) => ((parsed.values as Values)[name] = parsed.positionals[i]));
    return parsed.values as Values;
  } catch (error) {
    throw new UpgraderError('E_USAGE', `${describeError(error).replace(/^ERR_PARSE_ARGS_\w+: /, '')} (see --help).`);
  }
}

export function requireRoot(root: unknown): string {
  if (typeof root !== 'string' || root === '') throw new UpgraderError('E_USAGE', '--root <dir> is required (see --help).');
  return root;
}

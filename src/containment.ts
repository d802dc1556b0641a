/**
 * Where a symbolic link inside a directory (a version, or one being staged) really leads.
 *
 * A link's text says little: with `d/up -> ..`, the link `x -> d/up/d/up/../../..` reads as `d` but
 * climbs three levels above its directory. So a target is followed one component at a time, as the kernel
 * does, every link met on the way read and followed in turn. The directory is the boundary: an absolute
 * target, or any step above the directory, means the link leads outside. A link that leads to a missing
 * name is allowed if what is left of its path, taken as plain names, stays inside.
 */
import { lstatSync, readlinkSync } from 'node:fs';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { firstProblem } from './tree.js';

/** As the kernel's limit on links followed in one lookup (40). */
export const MAX_LINK_HOPS = 40;

const parts = (path: string) => path.split('/').filter((part) => part !== '' && part !== '.');

/** Why the link at `link` (relative to `boundary`) leads outside `boundary`, or null when it stays inside. */
export function linkEscape(boundary: string, link: string): string | null {
  const at = parts(dirname(link));
  const todo: string[] = [];
  let hops = 0;
  let missing = false;
  const follow = (linkRel: string): string | null => {
    const target = readlinkSync(join(boundary, linkRel));
    if (isAbsolute(target)) return `${link} leads to the absolute path ${target}${linkRel === link ? '' : ` (through the link ${linkRel})`}`;
    todo.unshift(...parts(target));
    return null;
  };
  const absoluteTarget = follow(link);
  if (absoluteTarget) return absoluteTarget;
  while (todo.length > 0) {
    const name = todo.shift()!;
    if (name === '..') {
      if (at.length === 0) return `${link} leads outside the version directory, to ${normalize(join(boundary, '..', ...todo))}`;
      at.pop();
      continue;
    }
    if (missing) {
      at.push(name);
      continue;
    }
    const here = [...at, name].join('/');
    let isLink: boolean;
    try {
      isLink = lstatSync(join(boundary, here)).isSymbolicLink();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw error;
      missing = true;
      at.push(name);
      continue;
    }
    if (!isLink) {
      at.push(name);
      continue;
    }
    if (++hops > MAX_LINK_HOPS) return `${link} goes through more than ${MAX_LINK_HOPS} links (a loop)`;
    const absolute = follow(here);
    if (absolute) return absolute;
  }
  return null;
}

/** The first link in the tree under `dir` that leads outside it, described; or null. */
export function escapingLink(dir: string): string | null {
  return firstProblem(dir, ({ rel, stat }) => (stat.isSymbolicLink() ? linkEscape(dir, rel) : null));
}

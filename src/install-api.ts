/**
 * `upgrader/install`: stages a downloaded version the way `upgrader install` does, before an agent asks for
 * the upgrade. An entry of its own, apart from the agent library (`upgrader/agent`), because it brings the
 * layout, locking, archive and privilege code, which an agent that only speaks the protocol does not need.
 *
 *   import { installVersion } from 'upgrader/install';
 *   await installVersion({ root: agent.root!, version: '1.2.0', source: '/tmp/agent-1.2.0.tgz', sha256 });
 */
export { installVersion, type InstallOptions, type InstallResult } from './install.js';

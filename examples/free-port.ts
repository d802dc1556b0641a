/**
 * A loopback port the kernel considers free right now, for the etcd the fleet demo, the fleet bench and the
 * tests start. Another process may still take it before etcd binds it: callers that care retry.
 */
import { createServer } from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

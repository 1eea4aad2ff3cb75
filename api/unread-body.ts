import type { HttpBindings } from '@hono/node-server';
import type { MiddlewareHandler } from 'hono';
import type { IncomingMessage } from 'node:http';
import type { AppEnv } from './context.ts';

/**
 * An answer made before the request's body has all arrived (a credential refused from the headers,
 * a route or token refused before the body is needed) waits until the rest of the body has been
 * read and thrown away. A provider's sender (GitLab's, Node's http client) writes its whole body
 * before it reads the answer: answered and cut off mid-body, its write fails (EPIPE) and the answer
 * is lost to it. Read to the end, the connection stays usable for its next request.
 *
 * A body over `maxBytes` (declared, or counted as it streams) is not read: the answer says
 * Connection: close, and the connection is cut once it is sent. The wait is bounded in bytes by
 * `maxBytes` and in time by the server's request timeout (the whole request must arrive within it,
 * api/main.ts), after which Node cuts the connection of a sender that stalls.
 */
export function readUnreadBody(maxBytes: number): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    await next();
    const incoming = (c.env as Partial<HttpBindings> | undefined)?.incoming;
    if (!incoming || incoming.complete) return;
    if (!(await discardRest(incoming, maxBytes))) c.header('Connection', 'close');
  };
}

/**
 * Reads the rest of `incoming` and throws it away: true once it has ended within `maxBytes`; false
 * if it is larger, or the connection went away. A body the handler began to read and left (a
 * streamed one refused at the limit) is not read further: its reader may hold the stream paused.
 */
function discardRest(incoming: IncomingMessage, maxBytes: number): Promise<boolean> {
  const declared = incoming.headers['content-length'];
  if (incoming.destroyed || incoming.readableDidRead || (declared !== undefined && !(Number(declared) <= maxBytes))) return Promise.resolve(false);
  return new Promise((resolve) => {
    let received = 0;
    const finish = (ended: boolean) => {
      incoming.off('data', onData).off('end', onEnd).off('close', onGone).off('error', onGone);
      resolve(ended);
    };
    const onData = (chunk: Buffer) => {
      received += chunk.byteLength;
      if (received > maxBytes) {
        incoming.pause();
        finish(false);
      }
    };
    const onEnd = () => finish(true);
    const onGone = () => finish(false);
    incoming.on('data', onData).once('end', onEnd).once('close', onGone).once('error', onGone);
    incoming.resume();
  });
}

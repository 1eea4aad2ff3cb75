import { isStorableText } from '../lib/text.ts';
import { badRequest } from './problem.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** An opaque page cursor: the sort key of a page's last row (strings, the row id last), as base64url JSON. */
export function encodeCursor(key: readonly string[]): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

/**
 * The sort key a cursor holds: `length` strings, the last a row id, each one PostgreSQL can take
 * (lib/text.ts). Anything else is the client's mistake: a 400.
 */
export function decodeCursor(raw: string, length: number): string[] {
  try {
    const value = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(value) && value.length === length && value.every((v) => typeof v === 'string' && isStorableText(v)) && UUID.test(String(value[length - 1]))) return value as string[];
  } catch {
    // Falls through to the 400 below.
  }
  throw notOurs();
}

export const notOurs = () => badRequest('cursor: not one this API handed out');

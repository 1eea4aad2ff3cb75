import { z } from '@hono/zod-openapi';
import { isStorableText, UNSTORABLE_TEXT } from '../lib/text.ts';

/** A request string the database stores or compares: one PostgreSQL could not hold is a 400 naming the field, not a database error. */
export const text = () => z.string().refine(isStorableText, UNSTORABLE_TEXT);

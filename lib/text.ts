/**
 * PostgreSQL stores neither a NUL character (text and jsonb refuse it: 22021, 22P05) nor a lone
 * UTF-16 surrogate (jsonb refuses the escape `\ud800`: 22P02; text gets U+FFFD from the UTF-8
 * encoder). Strings from outside are checked (the API refuses them) or mended (a provider's delivery
 * is recorded) with these, before a query, so such input never fails as a database error.
 */
const UNSTORABLE = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const UNSTORABLE_ALL = new RegExp(UNSTORABLE.source, 'g');

export const UNSTORABLE_TEXT = 'must not contain a NUL character (\\u0000) or an unpaired UTF-16 surrogate (\\ud800-\\udfff)';

export const isStorableText = (value: string): boolean => !UNSTORABLE.test(value);

/** The string with each NUL and each lone surrogate replaced by U+FFFD (the replacement character), the rest kept. */
export const toStorableText = (value: string): string => value.replace(UNSTORABLE_ALL, '\uFFFD');

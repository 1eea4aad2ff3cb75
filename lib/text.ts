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

/**
 * The longest start of `value` that is at most `maxBytes` bytes in UTF-8, cut between characters
 * (never within a surrogate pair; a lone surrogate counts as the 3 bytes of the U+FFFD it is
 * mended to). Stops at the cut: a name of megabytes costs no more than one of `maxBytes`.
 */
export function cutToUtf8Bytes(value: string, maxBytes: number): string {
  // A UTF-16 unit is at most 3 bytes (a surrogate pair is 4 for 2 units): short strings are not measured.
  if (value.length * 3 <= maxBytes) return value;
  let bytes = 0;
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    const pair = unit >= 0xd800 && unit <= 0xdbff && i + 1 < value.length && (value.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    const size = unit < 0x80 ? 1 : unit < 0x800 ? 2 : pair ? 4 : 3;
    if (bytes + size > maxBytes) return value.slice(0, i);
    bytes += size;
    if (pair) i++;
  }
  return value;
}

/**
 * The longest repository name (and project) stored, in UTF-8 bytes (so in characters too): a name is
 * written into an index (repositories_picker: project and name together), and PostgreSQL refuses an
 * index row over ~2,700 bytes (54000), which 1,024 characters of 3-byte ones passed. The webhook
 * receivers leave out an event naming a repository over it, and a listing leaves out such a repository.
 */
export const MAX_NAME_LENGTH = 1024;

/** Whether `name` is at most MAX_NAME_LENGTH bytes in UTF-8 (a UTF-16 unit is at most 3 of them, so short names are not measured). */
export const nameWithinLimit = (name: string): boolean =>
  name.length * 3 <= MAX_NAME_LENGTH || (name.length <= MAX_NAME_LENGTH && Buffer.byteLength(name, 'utf8') <= MAX_NAME_LENGTH);

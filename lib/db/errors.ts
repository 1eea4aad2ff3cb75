/**
 * What a failed statement says about itself: PostgreSQL's SQLSTATE (on pg's error, or a cause of
 * it). Its class tells a statement refused for the data it carries, which fails the same way every
 * time it is sent again, from the database being unavailable (class 08 connection, 53 resources,
 * 57 operator intervention, 40 serialization or deadlock, 55P03 lock timeout, or no SQLSTATE at
 * all: a refused or lost socket), which a later attempt can get past.
 */
export function sqlStateOf(error: unknown): string | undefined {
  for (let e = error, depth = 0; typeof e === 'object' && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && !/^E[A-Z]+$/.test(code)) return code;
  }
  return undefined;
}

/**
 * PostgreSQL refused the statement for its data, so repeating it fails again: class 22 (data
 * exception: a NUL, a lone surrogate's escape, a value out of range), 54 (program limit exceeded:
 * an index row, a jsonb value, a statement's parameters too large), and, with `integrity`, 23 (a
 * row a foreign key needs is gone, a check refused it).
 */
export function refusedForItsData(error: unknown, options: { integrity?: boolean } = {}): boolean {
  const state = sqlStateOf(error);
  if (state === undefined) return false;
  const cls = state.slice(0, 2);
  return cls === '22' || cls === '54' || (options.integrity === true && cls === '23');
}

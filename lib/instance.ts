import type { Provider } from './domain.ts';

/**
 * Which provider instance a delivery came from. GitLab project ids and Bitbucket Data Center
 * repository ids are only unique within one instance: two organizations connected to different
 * instances can each attach a repository with the same id. A delivery names its instance in the
 * URLs of its payload; a connection in its base URL.
 */

/** Whether `url` (from a payload) lies under the connection's `baseUrl` (same origin, same path prefix). */
export function isUnderBaseUrl(url: string, baseUrl: string): boolean {
  let u: URL;
  let base: URL;
  try {
    u = new URL(url);
    base = new URL(baseUrl);
  } catch {
    return false;
  }
  if (u.origin !== base.origin) return false;
  const prefix = base.pathname.replace(/\/+$/, '');
  return prefix === '' || u.pathname === prefix || u.pathname.startsWith(`${prefix}/`);
}

/**
 * GitHub: an App delivery concerns only connections bound to its installation (their external
 * key), which the install flow proved: repository ids are global, and an attachment made through
 * another binding must not receive the installation's events. Other providers: all kept.
 */
export function attachmentsOfInstallation<T extends { connectionKey: string | null }>(provider: Provider, rows: readonly T[], installationId: string | undefined): T[] {
  return provider === 'github' ? rows.filter((r) => installationId !== undefined && r.connectionKey === installationId) : [...rows];
}

/**
 * Keeps, of the attachments a delivery's repository ids match, those of the instance it came
 * from. An id attached on one instance only is kept as it is (a connection's base URL may not be
 * the URL the instance puts in its payloads, e.g. an internal address). An id attached on several
 * instances keeps only the attachments whose base URL holds `instanceUrl`; with no instance URL,
 * none: a delivery that cannot be placed is not handed to an organization it may not belong to.
 * Returns what was kept and the ids left out that way.
 */
export function attachmentsOfInstance<T extends { externalId: string; baseUrl: string }>(rows: readonly T[], instanceUrl: string | undefined): { kept: T[]; ambiguous: string[] } {
  const byId = new Map<string, T[]>();
  for (const row of rows) byId.set(row.externalId, [...(byId.get(row.externalId) ?? []), row]);
  const kept: T[] = [];
  const ambiguous: string[] = [];
  for (const [externalId, group] of byId) {
    const instances = new Set(group.map((r) => r.baseUrl.replace(/\/+$/, '').toLowerCase()));
    if (instances.size <= 1) {
      kept.push(...group);
      continue;
    }
    const matching = instanceUrl ? group.filter((r) => isUnderBaseUrl(instanceUrl, r.baseUrl)) : [];
    if (matching.length === 0) ambiguous.push(externalId);
    kept.push(...matching);
  }
  return { kept: rows.filter((r) => kept.includes(r)), ambiguous };
}

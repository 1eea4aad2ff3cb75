/**
 * How a run reads in the Temporal UI: the search attributes an operator types to find it, and a
 * one-line summary with a few details ("acme: attach acme/web (azure-devops)"). The API, the intake
 * relay and workflows starting children all build them here, so every run of a kind reads the same.
 *
 * Anyone with access to the namespace sees these (they are neither encoded nor encrypted): they
 * hold ids, organization slugs, repository names, the provider and event kinds, never a credential,
 * a URL or anything else a tenant sent. No Node imports (workflows use it).
 */
import type { SearchAttributePair } from '@temporalio/common';
import type { Provider } from '../lib/domain.ts';
import {
  SA_CONNECTION,
  SA_ORG_SLUGS,
  SA_ORGANIZATION,
  SA_PROVIDER,
  SA_REPOSITORY,
  SA_REPOSITORY_NAMES,
  type DeliverySummary,
} from './contract.ts';

/**
 * Child workflow starts carry RunLabels from this patch on (`patched()` around them): runs recorded
 * before it replay their start commands as they were, with the id attributes only.
 */
export const LABELLED_CHILD_STARTS = 'child-starts-labelled-for-the-ui';

/** What a workflow start carries for the Temporal UI (spread into the start options). */
export interface RunLabels {
  typedSearchAttributes: SearchAttributePair[];
  staticSummary: string;
  staticDetails: string;
}

/** The one organization a run concerns: its slug where the starter knows it (an activity result recorded before slugs were passed lacks it). */
export interface RunOrganization {
  id: string;
  slug?: string;
}

export interface RunSubject {
  organization: RunOrganization;
  provider?: Provider;
  connectionId?: string;
  repository?: { id: string; fullName?: string };
}

/**
 * A run about one organization: the whole organization, one of its connections, or one of its
 * repositories. `action` reads before the subject: "attach" gives "acme: attach acme/web (gitlab)",
 * "check hook health of" gives "acme: check hook health of connection <id> (gitlab)".
 */
export function runLabels(action: string, subject: RunSubject): RunLabels {
  const { organization, provider, connectionId, repository } = subject;
  const object = repository ? ` ${repository.fullName !== undefined ? markdownText(repository.fullName) : `repository ${repository.id}`}` : connectionId ? ` connection ${connectionId}` : '';
  const details = [
    `- **organization** ${organization.slug ?? ''} (\`${organization.id}\`)`,
    ...(provider ? [`- **provider** ${provider}`] : []),
    ...(connectionId ? [`- **connection** \`${connectionId}\``] : []),
    ...(repository ? [`- **repository** ${markdownText(repository.fullName ?? '')} (\`${repository.id}\`)`] : []),
  ];
  return {
    typedSearchAttributes: [
      { key: SA_ORGANIZATION, value: organization.id },
      ...(organization.slug ? [{ key: SA_ORG_SLUGS, value: [organization.slug] }] : []),
      ...(provider ? [{ key: SA_PROVIDER, value: provider }] : []),
      ...(connectionId ? [{ key: SA_CONNECTION, value: connectionId }] : []),
      ...(repository ? [{ key: SA_REPOSITORY, value: repository.id }] : []),
      ...(repository?.fullName ? [{ key: SA_REPOSITORY_NAMES, value: [repository.fullName] }] : []),
    ],
    staticSummary: oneLine(`${organization.slug ?? organization.id}: ${action}${object}${provider ? ` (${provider})` : ''}`),
    staticDetails: details.join('\n'),
  };
}

/**
 * What the receiver found a delivery concerns, as the intake row keeps it for the relay: bounded
 * (see `boundedKeywords`), so a delivery for many organizations or repositories stays one small row.
 */
export interface DeliveryTargets {
  /** Slugs of the organizations it concerns (the first that fit), and how many more there are. */
  organizationSlugs: string[];
  moreOrganizations?: number;
  /** Full names (as forgelink's repository cache has them) of the attached repositories it concerns. */
  repositoryNames: string[];
  moreRepositories?: number;
  /** Set when every attachment it concerns is of one connection. */
  connectionId?: string;
}

/** The targets an intake row holds, read defensively (rows outlive the version that wrote them); undefined when unusable. */
export function deliveryTargetsFrom(value: unknown): DeliveryTargets | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  const strings = (x: unknown) => (Array.isArray(x) ? x.filter((s): s is string => typeof s === 'string') : []);
  const count = (x: unknown) => (typeof x === 'number' && x > 0 ? { n: x } : undefined);
  const moreOrganizations = count(v.moreOrganizations);
  const moreRepositories = count(v.moreRepositories);
  return {
    organizationSlugs: boundedKeywords(strings(v.organizationSlugs)).values,
    ...(moreOrganizations ? { moreOrganizations: moreOrganizations.n } : {}),
    repositoryNames: boundedKeywords(strings(v.repositoryNames)).values,
    ...(moreRepositories ? { moreRepositories: moreRepositories.n } : {}),
    ...(typeof v.connectionId === 'string' ? { connectionId: v.connectionId } : {}),
  };
}

export interface DeliveryRun {
  provider: Provider;
  deliveryId: string;
  summary?: DeliverySummary;
  /** Absent from intake rows stored before they were kept: the run reads as before, by ids. */
  targets?: DeliveryTargets;
  /** The single organization / repository (ids), as older rows and older queries have them. */
  organizationId?: string;
  repositoryId?: string;
}

/** "acme, beta: push ×2 on acme/web (github)": one delivery, for every organization it concerns. */
export function deliveryRunLabels(run: DeliveryRun): RunLabels {
  const { provider, deliveryId, summary, targets, organizationId, repositoryId } = run;
  const slugs = targets?.organizationSlugs ?? [];
  const names = targets?.repositoryNames.length ? targets.repositoryNames : (summary?.repositories ?? []);
  const moreNames = targets?.repositoryNames.length ? (targets.moreRepositories ?? 0) : (summary?.moreRepositories ?? 0);
  const kinds = Object.entries(summary?.kinds ?? {}).map(([kind, n]) => (n === 1 ? kind : `${kind} ×${n}`));
  const who = slugs.length > 0 ? listed(slugs, targets?.moreOrganizations ?? 0, 3) : 'delivery';
  const what = kinds.length > 0 ? kinds.join(', ') : 'events';
  const where = names.length > 0 ? ` on ${markdownText(listed(names, moreNames, 3))}` : '';
  const details = [
    `- **delivery** ${codeText(deliveryId)} (${provider})`,
    ...(targets?.connectionId ? [`- **connection** \`${targets.connectionId}\``] : []),
    ...(slugs.length > 0 ? [`- **organizations** ${listed(slugs, targets?.moreOrganizations ?? 0, slugs.length)}`] : []),
    ...(names.length > 0 ? [`- **repositories** ${markdownText(listed(names, moreNames, names.length))}`] : []),
    ...(summary ? [`- **events** ${summary.events}${kinds.length > 0 ? ` (${kinds.join(', ')})` : ''}`] : []),
  ];
  return {
    typedSearchAttributes: [
      { key: SA_PROVIDER, value: provider },
      ...(organizationId ? [{ key: SA_ORGANIZATION, value: organizationId }] : []),
      ...(repositoryId ? [{ key: SA_REPOSITORY, value: repositoryId }] : []),
      ...(slugs.length > 0 ? [{ key: SA_ORG_SLUGS, value: slugs }] : []),
      ...(targets?.repositoryNames.length ? [{ key: SA_REPOSITORY_NAMES, value: targets.repositoryNames }] : []),
      ...(targets?.connectionId ? [{ key: SA_CONNECTION, value: targets.connectionId }] : []),
    ],
    staticSummary: oneLine(`${who}: ${what}${where} (${provider})`),
    staticDetails: details.join('\n'),
  };
}

/**
 * Temporal refuses a search attribute value over 2 KB (`limit.searchAttributesSizeOfValue`): a
 * KeywordList is one value, so it keeps the distinct values, in order, while their JSON stays under
 * `maxBytes`; the rest are counted in `more`.
 */
export function boundedKeywords(values: readonly string[], maxBytes = KEYWORD_LIST_BYTES): { values: string[]; more: number } {
  const kept: string[] = [];
  let bytes = 2;
  let more = 0;
  for (const value of new Set(values)) {
    const size = utf8Length(JSON.stringify(value)) + 1;
    if (bytes + size > maxBytes) more++;
    else {
      kept.push(value);
      bytes += size;
    }
  }
  return { values: kept, more };
}
const KEYWORD_LIST_BYTES = 1500;

function utf8Length(text: string): number {
  let n = 0;
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    n += code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
  }
  return n;
}

const listed = (values: readonly string[], more: number, shown: number) => {
  const rest = more + Math.max(0, values.length - shown);
  return `${values.slice(0, shown).join(', ')}${rest > 0 ? ` +${rest} more` : ''}`;
};

/**
 * Repository names are the tenant's: in the summary and the details (both Temporal markdown, which
 * the operators' UI renders) they show as text, never as a link or markup.
 */
const markdownText = (text: string) => text.replace(/[\\`*_{}[\]()#+!|<>~]/g, (c) => `\\${c}`);

/**
 * A delivery id is the sender's (a header, or Azure DevOps' body): shown as code whatever it holds.
 * A backslash does not escape inside a code span, so the fence is one backtick longer than the
 * longest run of backticks in it (CommonMark), and whitespace is one space: an id cannot end the
 * span early or start a line of its own.
 */
const codeText = (text: string) => {
  const flat = text.replace(/\s+/g, ' ');
  const fence = '`'.repeat(Math.max(0, ...(flat.match(/`+/g) ?? []).map((run) => run.length)) + 1);
  const pad = flat.startsWith('`') || flat.endsWith('`') ? ' ' : '';
  return `${fence}${pad}${flat}${pad}${fence}`;
};

/** The summary is single-line; a name cannot break it. */
const oneLine = (text: string) => text.replace(/\s+/g, ' ').slice(0, SUMMARY_LENGTH);
const SUMMARY_LENGTH = 400;

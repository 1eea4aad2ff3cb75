import { createHash } from 'node:crypto';
import { isAccessChange, type EventKind, type NormalizedEvent, type Provider } from '../../lib/domain.ts';
import { MAX_REF_NAME_LENGTH } from '../../lib/ref-glob.ts';
import { cutToUtf8Bytes, isStorableText, MAX_NAME_LENGTH, nameWithinLimit, toStorableText } from '../../lib/text.ts';

/** Header names in lower case, as Node and Hono hand them over. */
export type WebhookHeaders = Readonly<Record<string, string | undefined>>;
export type RawBody = string | Uint8Array;

/** A delivery that is not the provider's JSON, or lacks what its event needs. The receiver answers 400. */
export class WebhookPayloadError extends Error {
  override name = 'WebhookPayloadError';
}

/**
 * Turns one provider delivery into the events the service acts on: one per ref change, none for an event it
 * ignores. Pure, so the receiver can call it before anything durable happens and tests can feed it recorded payloads.
 */
export function normalizeWebhook(provider: Provider, headers: WebhookHeaders, rawBody: RawBody): NormalizedEvent[] {
  return normalizeDelivery(provider, headers, rawBody).events;
}

export interface NormalizedDelivery {
  events: NormalizedEvent[];
  /**
   * A URL of the repository on the instance that sent the delivery (GitLab `project.web_url`,
   * Bitbucket's `links.self`): GitLab and Bitbucket ids are unique per instance only.
   */
  instanceUrl?: string;
  /** The GitHub App installation the delivery is for: only connections bound to it act on it. */
  installationId?: string;
  /** Events left out because a name in them is longer than the limits (withinNameLimits). */
  overlong?: number;
  /**
   * Set (with no events) when the events were sure to take more than NormalizeOptions.maxEventsLength
   * characters as JSON, told before they were made (see boundRefChanges).
   */
  overLimit?: true;
}

export interface NormalizeOptions {
  /** The most characters the delivery's events may take as JSON (serializeEvents' limit): see NormalizedDelivery.overLimit. */
  maxEventsLength?: number;
}

/**
 * The longest repository name (and project) an event is recorded with, in UTF-8 bytes (so in
 * characters too). In bytes because a name is written into an index:
 * an event renames the attached repository it names, and PostgreSQL refuses an index row over
 * ~2,700 bytes (54000), which the picker's (project and name together) passed with 1,024
 * characters of 3-byte ones; the run then failed its recording on every retry. Defined in
 * lib/text.ts, shared with the repository listings (storableRepository).
 */
export { MAX_NAME_LENGTH };

/** The most UTF-8 bytes of a sender's name an event keeps (a GitHub login is at most 39 characters; a user or display name of 255 bytes is far past the ones providers send). */
export const MAX_SENDER_BYTES = 255;

/**
 * Whether an event's names are short enough to act on: its branch or tag (MAX_REF_NAME_LENGTH,
 * as the subscribers' globs match them) and its repository. An event over them is left out like one
 * the service does not act on, not refused: the delivery is the provider's, verified, and a 4xx
 * makes GitLab and Azure DevOps disable the hook. No provider sends names anywhere near so long
 * (GitHub refuses refs over ~250 bytes), so only a name made to cost the matching reaches this.
 */
function withinNameLimits(event: NormalizedEvent): boolean {
  const refs = [event.ref?.name, event.pullRequest?.sourceBranch, event.pullRequest?.targetBranch];
  return (
    refs.every((name) => name === undefined || name.length <= MAX_REF_NAME_LENGTH) &&
    nameWithinLimit(event.repository.fullName) &&
    nameWithinLimit(event.repository.project ?? '')
  );
}

/** normalizeWebhook, plus where the delivery came from, from one parse of the body. */
export function normalizeDelivery(provider: Provider, headers: WebhookHeaders, rawBody: RawBody, options: NormalizeOptions = {}): NormalizedDelivery {
  const text = bodyText(rawBody);
  const parsed = parseJsonObject(text);
  const payload = new PayloadReader(parsed, providerLabel[provider]);
  const bound = options.maxEventsLength;
  let events: NormalizedEvent[];
  try {
    switch (provider) {
      case 'github':
        events = normalizeGithub(headers, payload, bound);
        break;
      case 'gitlab':
        events = normalizeGitlab(headers, payload, rawBody);
        break;
      case 'bitbucket':
        events = normalizeBitbucket(headers, payload, bound);
        break;
      case 'azure-devops':
        events = normalizeAzureDevOps(payload, bound);
        break;
    }
  } catch (error) {
    if (error instanceof EventsOverLimit) return error.overlong === undefined ? { events: [], overLimit: true } : { events: [], overlong: error.overlong };
    throw error;
  }
  const named = events.filter(withinNameLimits);
  const overlong = events.length - named.length;
  // A sender's name is only shown, never acted on, and every event of the delivery repeats it: one
  // over MAX_SENDER_BYTES is cut there, between characters (a 1,000-ideograph sender on each of
  // 41,500 ref changes made 124 MB of events). Copied only when one is cut.
  const overlongSender = (event: NormalizedEvent) => event.sender !== undefined && cutToUtf8Bytes(event.sender, MAX_SENDER_BYTES) !== event.sender;
  if (named.some(overlongSender)) {
    // The events of a delivery share one sender: cut once.
    let [from, to] = ['', ''];
    const cut = (sender: string) => (sender === from ? to : ((from = sender), (to = cutToUtf8Bytes(sender, MAX_SENDER_BYTES))));
    events = named.map((event) => (event.sender === undefined ? event : { ...event, sender: cut(event.sender) }));
  } else events = named;
  const instanceUrl = events.length > 0 ? instanceUrlOf(provider, parsed) : undefined;
  const installationId = provider === 'github' && events.length > 0 ? installationIdOf(parsed) : undefined;
  const delivery = { events, ...(instanceUrl ? { instanceUrl } : {}), ...(installationId ? { installationId } : {}), ...(overlong ? { overlong } : {}) };
  // Decoded bytes hold neither a NUL nor a lone surrogate except as an escape (a raw control character
  // is not JSON, and the decoder reads an encoded surrogate as U+FFFD); header values hold no NUL: without
  // either, the copy that mends them is skipped.
  const mend = typeof rawBody === 'string' ? !isStorableText(text) || UNSTORABLE_ESCAPE.test(text) : UNSTORABLE_ESCAPE.test(text);
  return mend || Object.values(headers).some((v) => v !== undefined && !isStorableText(v)) ? storable(delivery) : delivery;
}

/** `\u0000`, or a surrogate's escape (`\ud800`-`\udfff`, paired or not: the copy tells them apart). */
const UNSTORABLE_ESCAPE = /\\u(?:0000|[dD][89a-fA-F])/;

/**
 * PostgreSQL cannot store a NUL character or a lone surrogate (lib/text.ts), and a provider may send
 * either in any string (a commit message, a branch name): each is replaced by U+FFFD (the
 * replacement character), keeping the rest of the string, so the delivery is recorded, not refused
 * (a refused one is delivered again and again, until the provider disables the hook).
 */
function storable<T>(value: T): T {
  if (typeof value === 'string') return toStorableText(value) as T;
  if (Array.isArray(value)) return value.map(storable) as T;
  if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, storable(v)])) as T;
  return value;
}

function installationIdOf(parsed: unknown): string | undefined {
  const id = (parsed as { installation?: { id?: unknown } } | null)?.installation?.id;
  return typeof id === 'number' || typeof id === 'string' ? String(id) : undefined;
}

const INSTANCE_URL_PATHS: Record<Provider, (string | number)[][]> = {
  github: [],
  gitlab: [
    ['project', 'web_url'],
    ['repository', 'homepage'],
  ],
  bitbucket: [
    ['repository', 'links', 'self', 0, 'href'],
    ['pullRequest', 'toRef', 'repository', 'links', 'self', 0, 'href'],
    ['pullRequest', 'links', 'self', 0, 'href'],
  ],
  'azure-devops': [],
};

function instanceUrlOf(provider: Provider, parsed: unknown): string | undefined {
  for (const path of INSTANCE_URL_PATHS[provider]) {
    let value = parsed;
    for (const key of path) value = typeof value === 'object' && value !== null ? (value as Record<string | number, unknown>)[key] : undefined;
    if (typeof value === 'string' && /^https?:\/\//i.test(value)) return value;
  }
  return undefined;
}

/**
 * A provider's connectivity check rather than an event. Bitbucket's `diagnostics:ping` arrives unsigned, so the
 * receiver asks this before verifying. GitLab test deliveries are real-looking events and Azure DevOps has none.
 */
export function isPing(provider: Provider, headers: WebhookHeaders, body: RawBody): boolean {
  switch (provider) {
    case 'github':
      return headers['x-github-event'] === 'ping';
    case 'bitbucket':
      // Bitbucket sends X-Event-Key; only without it does the body have to be read for the key.
      if (headers['x-event-key']) return headers['x-event-key'] === 'diagnostics:ping';
      return bitbucketEventKey(headers, new PayloadReader(tryParseBody(body), providerLabel.bitbucket)) === 'diagnostics:ping';
    case 'gitlab':
    case 'azure-devops':
      return false;
  }
}

const providerLabel: Record<Provider, string> = {
  github: 'GitHub',
  gitlab: 'GitLab',
  bitbucket: 'Bitbucket',
  'azure-devops': 'Azure DevOps',
};

/**
 * Bytes that are not UTF-8 (a commit message written in Latin-1, a cut-off sequence) are each
 * decoded as U+FFFD, as a NUL is mended: the provider would send the same bytes again on every
 * redelivery, so refusing them would only end in a disabled hook. What is left must be JSON.
 */
const UTF8 = new TextDecoder('utf-8');

function bodyText(rawBody: RawBody): string {
  return typeof rawBody === 'string' ? rawBody : UTF8.decode(rawBody);
}

function parseBody(rawBody: RawBody): unknown {
  return parseJsonObject(bodyText(rawBody));
}

function parseJsonObject(text: string): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new WebhookPayloadError(`webhook body is not JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new WebhookPayloadError('webhook body is not a JSON object');
  }
  return value;
}

function tryParseBody(rawBody: RawBody): unknown {
  try {
    return parseBody(rawBody);
  } catch {
    return undefined;
  }
}

/** Reads a payload's fields; a field the event needs but the payload lacks fails naming the event and the field. */
class PayloadReader {
  constructor(
    private readonly value: unknown,
    readonly context: string,
    private readonly prefix = '',
  ) {}

  within(context: string): PayloadReader {
    return new PayloadReader(this.value, `${this.context} ${context}`, this.prefix);
  }

  string(path: string): string {
    const value = this.get(path);
    if (typeof value !== 'string' || value === '') this.fail(path, 'is missing or not a string');
    return value;
  }

  optionalString(path: string): string | undefined {
    const value = this.get(path);
    return typeof value === 'string' && value !== '' ? value : undefined;
  }

  /** Providers give ids as numbers (GitHub, GitLab, Bitbucket) or GUID strings (Azure DevOps); both become strings. */
  id(path: string): string {
    const value = this.get(path);
    if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value);
    if (typeof value === 'string' && value !== '') return value;
    this.fail(path, 'is missing or not an id');
  }

  optionalId(path: string): string | undefined {
    return this.get(path) === undefined ? undefined : this.id(path);
  }

  integer(path: string): number {
    const value = this.get(path);
    if (typeof value !== 'number' || !Number.isSafeInteger(value)) this.fail(path, 'is missing or not an integer');
    return value;
  }

  isTrue(path: string): boolean {
    return this.get(path) === true;
  }

  list(path: string): PayloadReader[] {
    const value = this.get(path);
    if (!Array.isArray(value)) this.fail(path, 'is missing or not an array');
    return value.map((item, index) => new PayloadReader(item, this.context, `${this.prefix}${path}[${index}].`));
  }

  optionalList(path: string): PayloadReader[] {
    return this.get(path) == null ? [] : this.list(path);
  }

  /** The array at `path` as the payload has it (none: empty), for counting before list() reads each item. */
  items(path: string): readonly unknown[] {
    const value = this.get(path);
    return Array.isArray(value) ? value : [];
  }

  private get(path: string): unknown {
    let current = this.value;
    for (const key of path.split('.')) {
      if (typeof current !== 'object' || current === null) return undefined;
      current = (current as Record<string, unknown>)[key];
    }
    return current;
  }

  private fail(path: string, problem: string): never {
    throw new WebhookPayloadError(`${this.context}: "${this.prefix}${path}" ${problem}`);
  }
}

/**
 * Thrown by a list's normalization when its events are sure to pass the caller's maxEventsLength as
 * JSON, before any of them is made; `overlong` when none would be kept anyway (the repository they
 * all name is over the limits: the answer is the one for names over the limits, as without the bound).
 */
class EventsOverLimit extends Error {
  constructor(readonly overlong?: number) {
    super('the delivery\'s events are over the size limit');
  }
}

/**
 * What the events of a list (a push's ref changes, an installation's repositories) take as JSON at
 * least, counted from the payload's items before any event is made: each repeats its repository's
 * name, its sender and the delivery id, so a 25 MiB body of 446,158 short ref changes made ~1 GB of
 * events, and making them took seconds of the acknowledging thread before the size limit answered
 * (serializeEvents). A lower bound: JSON.stringify writes each character of a string as at least one
 * (more when escaped), and mending (storable) replaces a character by one; an event left out for its
 * names (withinNameLimits) counts nothing, a sender no more than its cut to MAX_SENDER_BYTES keeps. So a delivery over it is
 * surely over the limit, and one under it is made and measured exactly as before.
 */
const jsonLength = (value: unknown) => JSON.stringify(value).length;
/** `,"key":""` (or `{"key":""}` less one): a field beside others, an empty string. */
const FIELD = (key: string) => jsonLength({ [key]: '' }) - 1;
/** An event with every string empty, and its comma in the list. */
const EVENT_MIN = jsonLength({ provider: '', deliveryId: '', kind: '', repository: { externalId: '', fullName: '' } }) + 1;
/** `,"ref":{"type":"","name":"","before":"","after":""}`, less before's and after's quotes (objectIdLength counts them). */
const REF_MIN = jsonLength({ ref: { type: '', name: '', before: '', after: '' } }) - 1 - 4;

/** Whether refChangeEvent reads the object id as none (a creation's before, a deletion's after). */
const isZero = (value: unknown) => typeof value === 'string' && value[0] === '0' && ZERO_OBJECT_ID.test(value);
/** An object id as JSON at least: `null` when all zero, else the string (anything else fails when the event is made). */
const objectIdLength = (value: unknown, zero: boolean) => (zero || typeof value !== 'string' ? 4 : value.length + 2);

/** What every event of `delivery` repeats, as JSON at least (the sender only if it is kept). */
function sharedLength(delivery: Delivery): number {
  const { repository, sender } = delivery;
  return (
    EVENT_MIN +
    delivery.provider.length +
    delivery.deliveryId.length +
    repository.externalId.length +
    repository.fullName.length +
    (repository.project === undefined ? 0 : FIELD('project') + repository.project.length) +
    // Cut at MAX_SENDER_BYTES when the events are made: that keeps at least a quarter as many characters.
    (sender === undefined ? 0 : FIELD('sender') + Math.min(sender.length, Math.floor(MAX_SENDER_BYTES / 4)))
  );
}

const repositoryWithinLimits = (repository: Delivery['repository']) => nameWithinLimit(repository.fullName) && nameWithinLimit(repository.project ?? '');

/**
 * Throws EventsOverLimit when the ref changes `items` (each's ref, before and after read by `fields`)
 * make events of `delivery` surely over `bound` characters as JSON. Reads each item's three strings
 * and nothing else: a field an event needs and lacks is found when the events are made, as before.
 */
function boundRefChanges(bound: number | undefined, delivery: Delivery, items: readonly unknown[], fields: (item: Record<string, unknown>) => [unknown, unknown, unknown]): void {
  if (bound === undefined) return;
  const shared = sharedLength(delivery) + REF_MIN;
  let made = 0;
  let total = 1;
  for (const item of items) {
    if (typeof item !== 'object' || item === null) continue;
    const [fullName, before, after] = fields(item as Record<string, unknown>);
    if (typeof fullName !== 'string') continue;
    const branch = fullName.startsWith('refs/heads/');
    if (!branch && !fullName.startsWith('refs/tags/')) continue;
    made++;
    const name = fullName.length - (branch ? 11 : 10);
    if (name > MAX_REF_NAME_LENGTH) continue;
    const created = isZero(before);
    const deleted = isZero(after);
    // The kind as refChangeEvent names it: <type>.created, <type>.deleted, push, tag.updated.
    const type = branch ? 6 : 3;
    const kind = created || deleted ? type + 8 : branch ? 4 : 11;
    total += shared + type + kind + name + objectIdLength(before, created) + objectIdLength(after, deleted);
  }
  if (total > bound) throw new EventsOverLimit(repositoryWithinLimits(delivery.repository) ? undefined : made);
}

interface Delivery {
  provider: Provider;
  deliveryId: string;
  repository: NormalizedEvent['repository'];
  sender: string | undefined;
}

type EventDetail = Pick<NormalizedEvent, 'ref' | 'pullRequest' | 'commitCount'>;

function toEvent(delivery: Delivery, kind: EventKind, detail: EventDetail = {}): NormalizedEvent {
  const { provider, deliveryId, repository, sender } = delivery;
  return withoutUndefined({ provider, deliveryId, kind, repository, ...detail, sender });
}

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

function requireHeader(headers: WebhookHeaders, provider: Provider, ...names: string[]): string {
  for (const name of names) {
    const value = headers[name];
    if (value) return value;
  }
  throw new WebhookPayloadError(`${providerLabel[provider]} delivery has no ${names.join(' or ')} header`);
}

// Zeros only: Azure DevOps documentation samples use dashed zero GUIDs as placeholder object ids, which are values.
const ZERO_OBJECT_ID = /^0+$/;

/** A fully qualified ref we act on; other namespaces (refs/notes, refs/pull, …) give undefined. */
function parseRef(fullName: string): { type: 'branch' | 'tag'; name: string } | undefined {
  if (fullName.startsWith('refs/heads/')) return { type: 'branch', name: fullName.slice('refs/heads/'.length) };
  if (fullName.startsWith('refs/tags/')) return { type: 'tag', name: fullName.slice('refs/tags/'.length) };
  return undefined;
}

function branchName(fullName: string): string {
  return fullName.startsWith('refs/heads/') ? fullName.slice('refs/heads/'.length) : fullName;
}

/** One ref change as an event: all-zero before is a creation, all-zero after a deletion. */
function refChangeEvent(
  delivery: Delivery,
  fullName: string,
  before: string,
  after: string,
  commitCount: () => number | undefined,
): NormalizedEvent | undefined {
  const ref = parseRef(fullName);
  if (!ref) return undefined;
  const created = ZERO_OBJECT_ID.test(before);
  const deleted = ZERO_OBJECT_ID.test(after);
  const kind: EventKind = created
    ? `${ref.type}.created`
    : deleted
      ? `${ref.type}.deleted`
      : ref.type === 'branch'
        ? 'push'
        : 'tag.updated';
  return toEvent(delivery, kind, {
    ref: { ...ref, before: created ? null : before, after: deleted ? null : after },
    commitCount: kind === 'push' ? commitCount() : undefined,
  });
}

// GitHub: the App delivers every event of every installation; the event name is only in X-GitHub-Event.
function normalizeGithub(headers: WebhookHeaders, body: PayloadReader, bound?: number): NormalizedEvent[] {
  const eventName = requireHeader(headers, 'github', 'x-github-event');
  const payload = body.within(eventName);
  const delivery = (repository: Delivery['repository']): Delivery => ({
    provider: 'github',
    deliveryId: requireHeader(headers, 'github', 'x-github-delivery'),
    repository,
    sender: payload.optionalString('sender.login'),
  });
  const repository = () => ({ externalId: payload.id('repository.id'), fullName: payload.string('repository.full_name') });
  const action = payload.optionalString('action');

  switch (eventName) {
    case 'push': {
      const event = refChangeEvent(
        delivery(repository()),
        payload.string('ref'),
        payload.string('before'),
        payload.string('after'),
        () => payload.list('commits').length,
      );
      return event ? [event] : [];
    }
    case 'pull_request': {
      const kind = githubPullRequestKind(action, payload.isTrue('pull_request.merged'));
      if (!kind) return [];
      return [
        toEvent(delivery(repository()), kind, {
          pullRequest: withoutUndefined({
            number: payload.integer('pull_request.number'),
            sourceBranch: payload.string('pull_request.head.ref'),
            targetBranch: payload.string('pull_request.base.ref'),
            headSha: payload.optionalString('pull_request.head.sha'),
            title: payload.optionalString('pull_request.title'),
          }),
        }),
      ];
    }
    case 'installation_repositories':
      if (action === 'added') return githubRepositoryAccess(payload, delivery, 'repositories_added', 'repository.added', bound);
      if (action === 'removed') return githubRepositoryAccess(payload, delivery, 'repositories_removed', 'repository.removed', bound);
      return [];
    case 'installation':
      if (action === 'created') return githubRepositoryAccess(payload, delivery, 'repositories', 'repository.added', bound);
      if (action === 'deleted') return githubRepositoryAccess(payload, delivery, 'repositories', 'repository.removed', bound);
      return [];
    default:
      // `create`/`delete` repeat what `push` already said; `ping` and the rest are not acted on.
      return [];
  }
}

function githubPullRequestKind(action: string | undefined, merged: boolean): EventKind | undefined {
  switch (action) {
    case 'opened':
    case 'reopened':
      return 'pull_request.opened';
    case 'synchronize':
      return 'pull_request.updated';
    case 'closed':
      return merged ? 'pull_request.merged' : 'pull_request.closed';
    default:
      return undefined;
  }
}

function githubRepositoryAccess(
  payload: PayloadReader,
  delivery: (repository: Delivery['repository']) => Delivery,
  listPath: string,
  kind: 'repository.added' | 'repository.removed',
  bound: number | undefined,
): NormalizedEvent[] {
  const repos = bound === undefined ? [] : payload.items(listPath);
  if (bound !== undefined && repos.length > 0) {
    // Each repository's event, as JSON at least (boundRefChanges): an id (a string) and a name kept.
    const shared = sharedLength(delivery({ externalId: '', fullName: '' })) + kind.length;
    let total = 1;
    for (const repo of repos) {
      if (typeof repo !== 'object' || repo === null) continue;
      const { id, full_name: fullName } = repo as Record<string, unknown>;
      if (typeof fullName !== 'string' || !nameWithinLimit(fullName)) continue;
      total += shared + (typeof id === 'number' ? String(id).length : typeof id === 'string' ? id.length : 0) + fullName.length;
    }
    if (total > bound) throw new EventsOverLimit();
  }
  // GitHub's schema makes `repositories` of installation events optional.
  return payload
    .optionalList(listPath)
    .map((repo) => toEvent(delivery({ externalId: repo.id('id'), fullName: repo.string('full_name') }), kind));
}

// GitLab: one project hook per repository; object_kind names the event in the body itself.
function normalizeGitlab(headers: WebhookHeaders, body: PayloadReader, rawBody: RawBody): NormalizedEvent[] {
  const objectKind = body.string('object_kind');
  const payload = body.within(objectKind);
  const delivery = (sender: string | undefined): Delivery => ({
    provider: 'gitlab',
    // Idempotency-Key (GitLab 17.4+) stays the same across retries; older versions only send the
    // event UUID, and the oldest neither: then the body's digest, which a retry repeats exactly (a
    // valid delivery must not be refused, or GitLab disables the hook).
    deliveryId: headers['idempotency-key'] || headers['x-gitlab-event-uuid'] || `sha256-${createHash('sha256').update(rawBody).digest('hex')}`,
    repository: {
      externalId: payload.optionalId('project.id') ?? payload.id('project_id'),
      fullName: payload.string('project.path_with_namespace'),
    },
    sender,
  });

  switch (objectKind) {
    case 'push':
    case 'tag_push': {
      const event = refChangeEvent(
        delivery(payload.optionalString('user_username')),
        payload.string('ref'),
        payload.string('before'),
        payload.string('after'),
        () => payload.integer('total_commits_count'),
      );
      return event ? [event] : [];
    }
    case 'merge_request': {
      const kind = gitlabMergeRequestKind(
        payload.optionalString('object_attributes.action'),
        payload.optionalString('object_attributes.oldrev') !== undefined,
      );
      if (!kind) return [];
      return [
        toEvent(delivery(payload.optionalString('user.username')), kind, {
          pullRequest: withoutUndefined({
            number: payload.integer('object_attributes.iid'),
            sourceBranch: payload.string('object_attributes.source_branch'),
            targetBranch: payload.string('object_attributes.target_branch'),
            headSha: payload.optionalString('object_attributes.last_commit.id'),
            title: payload.optionalString('object_attributes.title'),
          }),
        }),
      ];
    }
    default:
      return [];
  }
}

function gitlabMergeRequestKind(action: string | undefined, sourcePushed: boolean): EventKind | undefined {
  switch (action) {
    case 'open':
    case 'reopen':
      return 'pull_request.opened';
    case 'update':
      // oldrev is present only when the update brought new commits; title, label or reviewer edits lack it.
      return sourcePushed ? 'pull_request.updated' : undefined;
    case 'merge':
      return 'pull_request.merged';
    case 'close':
      return 'pull_request.closed';
    default:
      return undefined;
  }
}

function bitbucketEventKey(headers: WebhookHeaders, payload: PayloadReader): string | undefined {
  return headers['x-event-key'] || payload.optionalString('eventKey');
}

const bitbucketPullRequestKinds: Record<string, EventKind> = {
  'pr:opened': 'pull_request.opened',
  'pr:from_ref_updated': 'pull_request.updated',
  'pr:merged': 'pull_request.merged',
  'pr:declined': 'pull_request.closed',
};

// Bitbucket Data Center: one repository webhook; a push of several refs arrives as one repo:refs_changed.
function normalizeBitbucket(headers: WebhookHeaders, body: PayloadReader, bound?: number): NormalizedEvent[] {
  const eventKey = bitbucketEventKey(headers, body);
  if (!eventKey) throw new WebhookPayloadError('Bitbucket delivery has no x-event-key header and no eventKey');
  const payload = body.within(eventKey);
  const delivery = (repositoryPath: string): Delivery => ({
    provider: 'bitbucket',
    deliveryId: requireHeader(headers, 'bitbucket', 'x-request-id'),
    repository: {
      externalId: payload.id(`${repositoryPath}.id`),
      fullName: `${payload.string(`${repositoryPath}.project.key`)}/${payload.string(`${repositoryPath}.slug`)}`,
    },
    sender: payload.optionalString('actor.name'),
  });

  if (eventKey === 'repo:refs_changed') {
    const push = delivery('repository');
    boundRefChanges(bound, push, payload.items('changes'), (change) => [change.refId, change.fromHash, change.toHash]);
    return payload
      .list('changes')
      .map((change) =>
        // The payload carries no commit count for a ref change.
        refChangeEvent(push, change.string('refId'), change.string('fromHash'), change.string('toHash'), () => undefined),
      )
      .filter((event) => event !== undefined);
  }

  const kind = bitbucketPullRequestKinds[eventKey];
  if (!kind) return [];
  return [
    // The pull request belongs to its target repository; the source may be a fork.
    toEvent(delivery('pullRequest.toRef.repository'), kind, {
      pullRequest: withoutUndefined({
        number: payload.integer('pullRequest.id'),
        sourceBranch: branchName(payload.string('pullRequest.fromRef.id')),
        targetBranch: branchName(payload.string('pullRequest.toRef.id')),
        headSha: payload.optionalString('pullRequest.fromRef.latestCommit'),
        title: payload.optionalString('pullRequest.title'),
      }),
    }),
  ];
}

// Azure DevOps: Service Hook subscriptions post the event with its own id; no header identifies the delivery.
function normalizeAzureDevOps(body: PayloadReader, bound?: number): NormalizedEvent[] {
  const eventType = body.string('eventType');
  const payload = body.within(eventType);
  const delivery = (sender: string | undefined): Delivery => {
    const project = payload.string('resource.repository.project.name');
    return {
      provider: 'azure-devops',
      deliveryId: payload.id('id'),
      repository: {
        externalId: payload.id('resource.repository.id'),
        fullName: `${project}/${payload.string('resource.repository.name')}`,
        project,
      },
      sender,
    };
  };

  if (eventType === 'git.push') {
    const push = delivery(payload.optionalString('resource.pushedBy.uniqueName'));
    boundRefChanges(bound, push, payload.items('resource.refUpdates'), (update) => [update.name, update.oldObjectId, update.newObjectId]);
    const refUpdates = payload.list('resource.refUpdates');
    // `commits` describes the whole push, so it counts a ref's commits only when the push moved that ref alone.
    const commitCount = () => (refUpdates.length === 1 ? payload.optionalList('resource.commits').length : undefined);
    return refUpdates
      .map((update) =>
        refChangeEvent(push, update.string('name'), update.string('oldObjectId'), update.string('newObjectId'), commitCount),
      )
      .filter((event) => event !== undefined);
  }

  const kind = azurePullRequestKind(eventType, payload.optionalString('resource.status'));
  if (!kind) return [];
  const sender =
    kind === 'pull_request.opened'
      ? payload.optionalString('resource.createdBy.uniqueName')
      : payload.optionalString('resource.closedBy.uniqueName');
  return [
    toEvent(delivery(sender), kind, {
      pullRequest: withoutUndefined({
        number: payload.integer('resource.pullRequestId'),
        sourceBranch: branchName(payload.string('resource.sourceRefName')),
        targetBranch: branchName(payload.string('resource.targetRefName')),
        headSha: payload.optionalString('resource.lastMergeSourceCommit.commitId'),
        title: payload.optionalString('resource.title'),
      }),
    }),
  ];
}

function azurePullRequestKind(eventType: string, status: string | undefined): EventKind | undefined {
  switch (eventType) {
    case 'git.pullrequest.created':
      return 'pull_request.opened';
    case 'git.pullrequest.updated':
      // The subscription is filtered to source-branch pushes (the payload does not say what changed), but a
      // completion or abandonment reaches it too: the status tells those apart.
      if (status === 'completed') return 'pull_request.merged';
      if (status === 'abandoned') return 'pull_request.closed';
      return 'pull_request.updated';
    case 'git.pullrequest.merged':
      // Also sent for merge attempts (conflicts, test merges of an active pull request): only a completed one counts.
      return status === 'completed' ? 'pull_request.merged' : undefined;
    default:
      return undefined;
  }
}

import { createRequesterFn, type RequestOptions } from '@gitbeaker/requester-utils';
import { Gitlab } from '@gitbeaker/rest';
import { ProviderHttpError, parseRetryAfter, type ProviderAdapter, type ProviderTarget, type ValidationOutcome } from './port.ts';

export const GITLAB_DEFAULT_BASE_URL = 'https://gitlab.com';
/** Scopes a GitLab token needs: hooks and project listing (api), identity (read_user), repository metadata. */
export const GITLAB_REQUIRED_SCOPES = ['api', 'read_user', 'read_repository'] as const;

async function readBody(response: Response): Promise<unknown> {
  if (response.status === 204) return null;
  const type = (response.headers.get('content-type') ?? '').split(';')[0]!.trim();
  if (type === 'application/json') return response.json().then((v) => v ?? {});
  return response.text();
}

function gitlabErrorMessage(body: unknown, status: number): string {
  if (body && typeof body === 'object') {
    const b = body as { error?: unknown; error_description?: unknown; message?: unknown };
    if (typeof b.error_description === 'string') return b.error_description;
    if (typeof b.message === 'string') return b.message;
    if (b.message !== undefined) return JSON.stringify(b.message);
    if (typeof b.error === 'string') return b.error;
  }
  if (typeof body === 'string' && body.trim()) return body.trim().slice(0, 500);
  return `HTTP ${status}`;
}

/**
 * gitbeaker's own handler retries 429 and 502 ten times within ~0.3 s and ignores Retry-After.
 * This one makes a single attempt and throws ProviderHttpError with Retry-After, so the activity's
 * retry policy decides when to try again.
 */
async function singleAttemptHandler(endpoint: string, options?: RequestOptions): Promise<{ body: unknown; headers: Record<string, string>; status: number }> {
  const { prefixUrl, searchParams, method, rateLimiters: _limiters, agent: _agent, asStream: _asStream, ...rest } = (options ?? {}) as RequestOptions & {
    rateLimiters?: unknown;
    agent?: unknown;
  };
  const base = prefixUrl ? (prefixUrl.endsWith('/') ? prefixUrl : `${prefixUrl}/`) : undefined;
  const url = new URL(endpoint, base);
  url.search = (searchParams as string | undefined) ?? '';
  const response = await fetch(url, { ...(rest as RequestInit), method });
  const body = await readBody(response);
  if (!response.ok) {
    throw new ProviderHttpError('gitlab', response.status, gitlabErrorMessage(body, response.status), parseRetryAfter(response.headers.get('retry-after')));
  }
  return { body, headers: Object.fromEntries(response.headers.entries()), status: response.status };
}

const requesterFn = createRequesterFn((_, reqo) => Promise.resolve(reqo), singleAttemptHandler as never);

export function createGitlabClient(baseUrl: string, token: string) {
  return new Gitlab({ host: baseUrl, token, requesterFn, queryTimeout: 30_000 });
}

export function createGitlabAdapter(target: ProviderTarget): Pick<ProviderAdapter, "provider" | "validate"> {
  if (!target.secret) throw new Error('a GitLab connection needs a token');
  const api = createGitlabClient(target.baseUrl, target.secret);
  return {
    provider: 'gitlab',
    async validate(): Promise<ValidationOutcome> {
      let token;
      try {
        token = await api.PersonalAccessTokens.show();
      } catch (error) {
        if (error instanceof ProviderHttpError && error.status === 401) {
          const detail = error.message;
          if (/expired/i.test(detail)) return { ok: false, reason: `token expired: GitLab says "${detail}"` };
          if (/revoked/i.test(detail)) return { ok: false, reason: `token revoked: GitLab says "${detail}"` };
          return { ok: false, reason: `token rejected by GitLab (401): ${detail}` };
        }
        throw error;
      }
      if (token.revoked) return { ok: false, reason: 'token revoked' };
      if (token.expires_at && Date.parse(`${token.expires_at}T23:59:59Z`) < Date.now()) {
        return { ok: false, reason: `token expired on ${token.expires_at}` };
      }
      if (token.active === false) return { ok: false, reason: 'token is not active' };
      const scopes = new Set((token.scopes ?? []) as string[]);
      const missing = GITLAB_REQUIRED_SCOPES.filter((s) => !scopes.has(s));
      if (missing.length > 0) {
        return { ok: false, reason: `token is missing scope${missing.length > 1 ? 's' : ''} ${missing.map((s) => `\`${s}\``).join(', ')}` };
      }
      const user = await api.Users.showCurrentUser();
      return { ok: true, identity: { account: String(user.username), accountId: String(user.id) } };
    },
  };
}

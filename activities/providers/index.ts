import { createAzureDevOpsAdapter } from './azure-devops.ts';
import { createBitbucketAdapter } from './bitbucket.ts';
import { createGithubAdapter } from './github.ts';
import { createGitlabAdapter } from './gitlab.ts';
import { cancellableSleep, type Outbound } from '../outbound.ts';
import type { WorkerMetrics } from '../../lib/metrics.ts';
import type { Provider } from '../../lib/domain.ts';
import type { ProviderAdapter, ProviderFactory, ProviderTarget } from './port.ts';
import { withinAnswerBudget, type AnswerBudget } from './answer-budget.ts';
import { workerAnswerBudget } from './answer.ts';

export interface ProviderSettings {
  /** The worker's guarded HTTP layer: every adapter's calls go through it. */
  outbound: Outbound;
  /** The GitHub App's credentials; GitHub connections fail validation clearly without them. */
  github?: { appId: string; privateKey: string };
  /** Counts the rate-limit pauses adapters take inside a call (their only sleeps). */
  metrics?: Pick<WorkerMetrics, 'rateLimitWait'>;
  /** What the adapters' parsed answers may hold at once (default: the process's, sized from its heap and container; worker/main.ts gives the configured one; activities/providers/answer-budget.ts). */
  answerBudget?: AnswerBudget;
}

/** Builds the adapter for a connection's provider, pointed at the connection's base URL. */
export function createProviderFactory(settings: ProviderSettings): ProviderFactory {
  const { outbound, metrics } = settings;
  const counted = (provider: Provider) =>
    metrics
      ? {
          sleep: (ms: number) => {
            metrics.rateLimitWait(provider, ms);
            return cancellableSleep(ms);
          },
        }
      : {};
  const answerBudget = settings.answerBudget ?? workerAnswerBudget();
  const adapterFor = (target: ProviderTarget): ProviderAdapter => {
    switch (target.provider) {
      case 'gitlab':
        return createGitlabAdapter(target, { outbound, ...counted('gitlab') });
      case 'bitbucket':
        return createBitbucketAdapter(target, { outbound, ...counted('bitbucket') });
      case 'azure-devops':
        return createAzureDevOpsAdapter(target, { outbound });
      case 'github':
        if (!settings.github) throw new Error('the GitHub App is not configured (gitProviders.github.appId / privateKey)');
        return createGithubAdapter(target, { ...settings.github, baseUrl: target.baseUrl }, { outbound, ...counted('github') });
    }
  };
  return (target) => budgeted(adapterFor(target), { budget: answerBudget, organizationId: target.organizationId ?? `connection ${target.connectionId}` });
}

const ADAPTER_CALLS = ['validate', 'listRepositoriesPage', 'getRepository', 'repositoryIdAtName', 'listHooks', 'createHook', 'updateHook', 'deleteHook'] as const satisfies readonly (keyof ProviderAdapter)[];
/** Every call of the port is in ADAPTER_CALLS (a new one left out fails to compile here, instead of escaping the budget). */
const EVERY_CALL_BUDGETED: [Exclude<keyof ProviderAdapter, 'provider' | (typeof ADAPTER_CALLS)[number]>] extends [never] ? true : never = true;
void EVERY_CALL_BUDGETED;

/**
 * The adapter whose every call counts its parsed answers against `call`'s budget, held by the
 * caller's hold (its activity or step) or, without one, by the call itself until it ends
 * (withinAnswerBudget).
 */
function budgeted(adapter: ProviderAdapter, call: Parameters<typeof withinAnswerBudget>[0]): ProviderAdapter {
  const wrapped: Record<string, unknown> = { provider: adapter.provider };
  for (const name of ADAPTER_CALLS) {
    const method = adapter[name] as ((...args: unknown[]) => Promise<unknown>) | undefined;
    // An optional call (repositoryIdAtName) stays absent where the adapter has none.
    if (!method) continue;
    wrapped[name] = (...args: unknown[]) => withinAnswerBudget(call, () => method.apply(adapter, args));
  }
  return wrapped as unknown as ProviderAdapter;
}

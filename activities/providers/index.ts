import { createAzureDevOpsAdapter } from './azure-devops.ts';
import { createBitbucketAdapter } from './bitbucket.ts';
import { createGithubAdapter } from './github.ts';
import { createGitlabAdapter } from './gitlab.ts';
import { cancellableSleep, type Outbound } from '../outbound.ts';
import type { WorkerMetrics } from '../../lib/metrics.ts';
import type { Provider } from '../../lib/domain.ts';
import type { ProviderAdapter, ProviderFactory } from './port.ts';

export interface ProviderSettings {
  /** The worker's guarded HTTP layer: every adapter's calls go through it. */
  outbound: Outbound;
  /** The GitHub App's credentials; GitHub connections fail validation clearly without them. */
  github?: { appId: string; privateKey: string };
  /** Counts the rate-limit pauses adapters take inside a call (their only sleeps). */
  metrics?: Pick<WorkerMetrics, 'rateLimitWait'>;
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
  return (target): ProviderAdapter => {
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
}

import { createAzureDevOpsAdapter } from './azure-devops.ts';
import { createBitbucketAdapter } from './bitbucket.ts';
import { createGithubAdapter } from './github.ts';
import { createGitlabAdapter } from './gitlab.ts';
import type { ProviderAdapter, ProviderFactory } from './port.ts';

export interface ProviderSettings {
  /** The GitHub App's credentials; GitHub connections fail validation clearly without them. */
  github?: { appId: string; privateKey: string };
}

/** Builds the adapter for a connection's provider, pointed at the connection's base URL. */
export function createProviderFactory(settings: ProviderSettings = {}): ProviderFactory {
  return (target): ProviderAdapter => {
    switch (target.provider) {
      case 'gitlab':
        return createGitlabAdapter(target);
      case 'bitbucket':
        return createBitbucketAdapter(target);
      case 'azure-devops':
        return createAzureDevOpsAdapter(target);
      case 'github':
        if (!settings.github) throw new Error('the GitHub App is not configured (gitProviders.github.appId / privateKey)');
        return createGithubAdapter(target, { ...settings.github, baseUrl: target.baseUrl });
    }
  };
}

import type { ProviderAdapter, ProviderFactory } from './port.ts';
import { createGitlabAdapter } from './gitlab.ts';

/** Builds the adapter for a connection's provider. Providers not wired yet fail loudly, never silently. */
export function createProviderFactory(): ProviderFactory {
  return (target) => {
    switch (target.provider) {
      case 'gitlab':
        return createGitlabAdapter(target) as ProviderAdapter;
      default:
        throw new Error(`provider ${target.provider} is not supported yet`);
    }
  };
}

import { describe, expect, it } from 'vitest';
import { SA_ORG_SLUGS, SA_REPOSITORY_NAMES } from '../../workflows/contract.ts';
import { boundedKeywords, deliveryRunLabels, deliveryTargetsFrom, runLabels } from '../../workflows/run-labels.ts';

describe('run labels (workflows/run-labels.ts)', () => {
  it('names a repository run "org: action repository (provider)", with ids in the details', () => {
    const labels = runLabels('attach', { organization: { id: 'o-1', slug: 'acme' }, provider: 'azure-devops', connectionId: 'c-1', repository: { id: 'r-1', fullName: 'web/app' } });
    expect(labels.staticSummary).toBe('acme: attach web/app (azure-devops)');
    expect(labels.staticDetails).toBe('- **organization** acme (`o-1`)\n- **provider** azure-devops\n- **connection** `c-1`\n- **repository** web/app (`r-1`)');
    expect(labels.typedSearchAttributes.map((p) => [p.key.name, p.value])).toEqual([
      ['ForgelinkOrganization', 'o-1'],
      ['ForgelinkOrgSlugs', ['acme']],
      ['ForgelinkProvider', 'azure-devops'],
      ['ForgelinkConnection', 'c-1'],
      ['ForgelinkRepository', 'r-1'],
      ['ForgelinkRepositoryNames', ['web/app']],
    ]);
  });

  it('keeps a tenant\'s repository name from breaking the summary line or becoming markup in the details', () => {
    const labels = runLabels('attach', { organization: { id: 'o-1', slug: 'acme' }, provider: 'gitlab', repository: { id: 'r-1', fullName: 'g/[click](https://x.test)\nnext' } });
    expect(labels.staticSummary).toBe('acme: attach g/\\[click\\]\\(https://x.test\\) next (gitlab)');
    expect(labels.staticDetails).toContain('g/\\[click\\]\\(https://x.test\\)');
  });

  it("shows a sender's delivery id as code whatever it holds, and a delivery's repository names as text in its summary", () => {
    // A GitLab Idempotency-Key chosen to close the code span and add a link for the operator.
    const labels = deliveryRunLabels({ provider: 'gitlab', deliveryId: 'x` [Open the runbook](https://evil.example/login) `', summary: { events: 1, kinds: { push: 1 }, repositories: ['g/[a](https://evil.example)'] } });
    expect(labels.staticDetails.split('\n')[0]).toBe('- **delivery** `` x` [Open the runbook](https://evil.example/login) ` `` (gitlab)');
    expect(labels.staticSummary).toBe('delivery: push on g/\\[a\\]\\(https://evil.example\\) (gitlab)');
    expect(deliveryRunLabels({ provider: 'azure-devops', deliveryId: 'a``b\n- **organization** other' }).staticDetails.split('\n')[0]).toBe('- **delivery** ```a``b - **organization** other``` (azure-devops)');
    expect(deliveryRunLabels({ provider: 'github', deliveryId: 'd-1' }).staticDetails).toBe('- **delivery** `d-1` (github)');
  });

  it('falls back to ids where a slug or a name is unknown (lists recorded before they were read)', () => {
    const labels = runLabels('detach', { organization: { id: 'o-1' }, provider: 'gitlab', repository: { id: 'r-1' } });
    expect(labels.staticSummary).toBe('o-1: detach repository r-1 (gitlab)');
    expect(labels.typedSearchAttributes.some((p) => p.key === SA_ORG_SLUGS || p.key === SA_REPOSITORY_NAMES)).toBe(false);
  });

  it('bounds a KeywordList under Temporal\'s 2 KB per value, counting what it leaves out', () => {
    const slugs = Array.from({ length: 100 }, (_, i) => `organization-${String(i).padStart(3, '0')}`);
    const { values, more } = boundedKeywords([...slugs, slugs[0]!]);
    expect(JSON.stringify(values).length).toBeLessThanOrEqual(1500);
    expect(values).toEqual(slugs.slice(0, values.length));
    expect(values.length + more).toBe(100);
    const labels = deliveryRunLabels({ provider: 'github', deliveryId: 'd-1', summary: { events: 2, kinds: { push: 2 }, repositories: ['a/b'] }, targets: { organizationSlugs: values, moreOrganizations: more, repositoryNames: ['a/b'] } });
    expect(labels.staticSummary).toBe('organization-000, organization-001, organization-002 +97 more: push ×2 on a/b (github)');
  });

  it('reads an intake row\'s targets defensively: junk gives empty lists, not a failed start', () => {
    expect(deliveryTargetsFrom(undefined)).toBeUndefined();
    expect(deliveryTargetsFrom({ organizationSlugs: 'acme', repositoryNames: [1, 'a/b'], moreOrganizations: -1 })).toEqual({ organizationSlugs: [], repositoryNames: ['a/b'] });
    const labels = deliveryRunLabels({ provider: 'gitlab', deliveryId: 'd-1', targets: deliveryTargetsFrom({}) });
    expect(labels.staticSummary).toBe('delivery: events (gitlab)');
  });
});

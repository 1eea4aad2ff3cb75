import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, stringify as toYaml } from 'yaml';
import { loadConfig, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';

/**
 * The Helm chart (deploy/helm/forgelink): `helm lint` and `helm template` for the default values
 * and for the GHES + Temporal Cloud example, and the config file it renders, with the environment
 * its Deployments give forgelink (secrets resolved from the chart's Secret or the named ones),
 * accepted by forgelink's own loader. helm: $HELM, ~/.cache/forgelink/bin/helm (.ci/run builds it
 * there with `go install helm.sh/helm/v4/cmd/helm@v4.3.2`), or on PATH.
 */
const CHART = 'deploy/helm/forgelink';
const cacheBin = path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'forgelink', 'bin', 'helm');
const HELM = process.env.HELM ?? (existsSync(cacheBin) ? cacheBin : 'helm');
const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-helm-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Manifest {
  kind: string;
  metadata: { name: string; annotations?: Record<string, string> };
  data?: Record<string, string>;
  spec?: any;
}

function helm(...args: string[]): string {
  const result = spawnSync(HELM, args, { encoding: 'utf8' });
  if (result.error) throw new Error(`helm not found (${HELM}): build it with go install helm.sh/helm/v4/cmd/helm@v4.3.2 (GOBIN=~/.cache/forgelink/bin), or set HELM`);
  if (result.status !== 0) throw new Error(`helm ${args.join(' ')} failed:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

function render(valuesFiles: string[]): Manifest[] {
  const out = helm('template', 'forgelink', CHART, '--namespace', 'forgelink', ...valuesFiles.flatMap((f) => ['-f', f]));
  return parseAllDocuments(out).map((d) => d.toJS() as Manifest).filter(Boolean);
}

const find = (manifests: Manifest[], kind: string, name: string) => {
  const found = manifests.find((m) => m.kind === kind && m.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name} in ${manifests.map((m) => `${m.kind}/${m.metadata.name}`).join(', ')}`);
  return found;
};

/** The config file and environment a container of `deployment` gets; `existing` holds the Secrets the values name. */
function forgelinkConfigOf(manifests: Manifest[], deployment: string, existing: Record<string, Record<string, string>> = {}) {
  const pod = find(manifests, 'Deployment', deployment).spec.template.spec;
  const container = pod.containers[0];
  const configMap = pod.volumes.find((v: any) => v.name === 'config').configMap.name;
  const file = path.join(dir, `${deployment}-${configMap}.yml`);
  writeFileSync(file, find(manifests, 'ConfigMap', configMap).data!['forgelink.yml']!);
  const env: Record<string, string> = {};
  for (const e of container.env) {
    if (e.value !== undefined) continue;
    const { name, key } = e.valueFrom.secretKeyRef;
    const chartSecret = manifests.find((m) => m.kind === 'Secret' && m.metadata.name === name);
    const value = chartSecret ? Buffer.from(chartSecret.data![key]!, 'base64').toString('utf8') : existing[name]?.[key];
    if (value === undefined) throw new Error(`${e.name}: Secret ${name} has no key ${key}`);
    env[e.name] = value;
  }
  return { load: () => loadConfig(file, env), container, pod };
}

const PEM_KEY = '-----BEGIN PRIVATE KEY-----\nMIIfake\n-----END PRIVATE KEY-----\n';

describe('Helm chart', () => {
  it('lints and renders with the default values; its config file lacks only the secrets the values leave empty', () => {
    expect(helm('lint', CHART)).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    const manifests = render([]);
    const kinds = manifests.map((m) => `${m.kind}/${m.metadata.name}`);
    expect(kinds).toEqual(expect.arrayContaining(['Deployment/forgelink-api', 'Deployment/forgelink-worker', 'Service/forgelink-api', 'PodDisruptionBudget/forgelink-api', 'PodDisruptionBudget/forgelink-worker', 'Job/forgelink-migrate', 'ConfigMap/forgelink-config']));
    expect(() => forgelinkConfigOf(manifests, 'forgelink-api').load()).toThrow(/invalid configuration:\n {2}auth: is required\n {2}encryption\.key: is required$/);
  });

  it('renders a config forgelink accepts from inline values, and probes, drain and migrations as a pre-install/pre-upgrade hook', () => {
    const values = path.join(dir, 'inline.yaml');
    writeFileSync(
      values,
      toYaml({
        publicUrl: 'https://forgelink.example.com',
        database: { url: 'postgres://forgelink:pw@db:5432/forgelink' },
        auth: { adminToken: 'x'.repeat(32) },
        encryption: { key: Buffer.alloc(32, 3).toString('base64') },
        temporal: { address: 'temporal:7233', requestDeadlineSeconds: 3, tls: { enabled: true, ca: 'CA PEM', cert: 'CERT PEM', key: 'KEY PEM', serverName: 'temporal.internal' } },
        gitProviders: { gitlab: { enabled: true, webhookSecret: 'g'.repeat(32) }, azureDevOps: { enabled: true, webhookBasicAuthUser: 'forgelink', webhookBasicAuthPass: 'p'.repeat(32) } },
        config: { repositoryCache: { schedule: '30 1 * * *' }, webhooks: { acceptLegacyHooks: true } },
        worker: { sizing: { maxCachedWorkflows: 60, maxConcurrentWorkflowTaskExecutions: 6, answerBudgetBytes: 512 * 1024 * 1024 } },
      }),
    );
    const manifests = render([values]);
    for (const deployment of ['forgelink-api', 'forgelink-worker']) {
      const config = forgelinkConfigOf(manifests, deployment).load();
      expect(config.database.url).toBe('postgres://forgelink:pw@db:5432/forgelink');
      expect(config.gitProviders.gitlab).toMatchObject({ enabled: true, webhookSecret: 'g'.repeat(32) });
      expect(config.gitProviders.azureDevOps).toMatchObject({ enabled: true, webhookBasicAuthUser: 'forgelink', webhookBasicAuthPass: 'p'.repeat(32) });
      expect(config.temporal.tls).toEqual({ enabled: true, serverName: 'temporal.internal', caFile: '/etc/forgelink/temporal-tls/ca.crt', certFile: '/etc/forgelink/temporal-tls/tls.crt', keyFile: '/etc/forgelink/temporal-tls/tls.key' });
      expect(config.temporal.requestDeadlineSeconds).toBe(3);
      expect(config.repositoryCache.schedule).toBe('30 1 * * *');
      expect(config.api.host).toBe('0.0.0.0');
      // The worker's sizing: the values given, the chart's defaults for the rest.
      expect(config.worker).toEqual({ ...WORKER_SIZING_DEFAULTS, maxCachedWorkflows: 60, maxConcurrentWorkflowTaskExecutions: 6, answerBudgetBytes: 512 * 1024 * 1024 });
    }
    expect(find(manifests, 'Secret', 'forgelink-temporal-tls').data).toEqual({ 'ca.crt': btoa('CA PEM'), 'tls.crt': btoa('CERT PEM'), 'tls.key': btoa('KEY PEM') });
    // No secret in the ConfigMap.
    const file = find(manifests, 'ConfigMap', 'forgelink-config').data!['forgelink.yml']!;
    for (const secret of ['x'.repeat(32), 'g'.repeat(32), 'p'.repeat(32), 'pw@db', 'KEY PEM']) expect(file).not.toContain(secret);

    const { container, pod } = forgelinkConfigOf(manifests, 'forgelink-api');
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    expect(container.command).toEqual(['node', 'dist/api/main.js']);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(5 + 20);
    expect(container.resources.limits.memory).toBe('1536Mi');
    const job = find(manifests, 'Job', 'forgelink-migrate');
    expect(job.metadata.annotations!['helm.sh/hook']).toBe('pre-install,pre-upgrade');
    expect(job.spec.template.spec.containers[0].command).toEqual(['node', 'dist/lib/db/migrate-cli.js']);
    const migrateConfig = { spec: { template: { spec: job.spec.template.spec } }, kind: 'Deployment', metadata: { name: 'migrate' } } as Manifest;
    expect(forgelinkConfigOf([...manifests, migrateConfig], 'migrate').load().database.url).toBe('postgres://forgelink:pw@db:5432/forgelink');
  });

  it('renders the GHES + Temporal Cloud example (existing Secrets, mTLS without a CA) into a config forgelink accepts', () => {
    const example = `${CHART}/examples/ghes-temporal-cloud.yaml`;
    expect(helm('lint', CHART, '-f', example)).toMatch(/0 chart\(s\) failed/);
    const manifests = render([example]);
    const existing = {
      'forgelink-core': { adminToken: 'a'.repeat(32), key: Buffer.alloc(32, 9).toString('base64'), url: 'postgres://db/forgelink' },
      'forgelink-github': { privateKey: PEM_KEY, webhookSecret: 'w'.repeat(32), clientSecret: 'client-secret' },
    };
    const config = forgelinkConfigOf(manifests, 'forgelink-worker', existing).load();
    expect(config.gitProviders.github).toMatchObject({ enabled: true, appId: '42', baseUrl: 'https://github.platform.example.com/api/v3', webUrl: 'https://github.platform.example.com', privateKey: PEM_KEY, clientSecret: 'client-secret' });
    expect(config.temporal).toMatchObject({ address: 'forgelink.a1b2c.tmprl.cloud:7233', namespace: 'forgelink.a1b2c', tls: { enabled: true, certFile: '/etc/forgelink/temporal-tls/tls.crt', keyFile: '/etc/forgelink/temporal-tls/tls.key' } });
    expect(config.temporal.tls?.caFile).toBeUndefined();
    expect(config.security.allowPrivateNetworks).toEqual(['10.20.0.0/16']);
    const pod = find(manifests, 'Deployment', 'forgelink-worker').spec.template.spec;
    expect(pod.volumes.find((v: any) => v.name === 'temporal-tls').secret.secretName).toBe('forgelink-temporal-mtls');
    expect(manifests.some((m) => m.kind === 'Ingress')).toBe(true);
  });

  it('registers the search attributes in a hook Job after the migrations only when asked, with hook copies of its config, secrets and TLS', () => {
    expect(render([]).some((m) => m.metadata.name === 'forgelink-search-attributes')).toBe(false);
    const values = path.join(dir, 'search-attributes.yaml');
    writeFileSync(
      values,
      toYaml({
        database: { url: 'postgres://forgelink:pw@db:5432/forgelink' },
        auth: { adminToken: 'x'.repeat(32) },
        encryption: { key: Buffer.alloc(32, 3).toString('base64') },
        temporal: { address: 'temporal:7233', namespace: 'ci', tls: { enabled: true, ca: 'CA PEM', cert: 'CERT PEM', key: 'KEY PEM' } },
        searchAttributes: { register: true },
      }),
    );
    const manifests = render([values]);
    const job = find(manifests, 'Job', 'forgelink-search-attributes');
    expect(job.metadata.annotations).toMatchObject({ 'helm.sh/hook': 'pre-install,pre-upgrade', 'helm.sh/hook-weight': '5' });
    expect(Number(job.metadata.annotations!['helm.sh/hook-weight'])).toBeGreaterThan(Number(find(manifests, 'Job', 'forgelink-migrate').metadata.annotations!['helm.sh/hook-weight']));
    const pod = job.spec.template.spec;
    expect(pod.containers[0].command).toEqual(['node', 'dist/worker/register-search-attributes-cli.js']);
    // Hook resources exist before the release's own: the Job reads only hook copies.
    const tlsSecret = pod.volumes.find((v: any) => v.name === 'temporal-tls').secret.secretName;
    expect(tlsSecret).toBe('forgelink-search-attributes-temporal-tls');
    for (const [kind, name] of [['ConfigMap', 'forgelink-search-attributes'], ['Secret', 'forgelink-search-attributes'], ['Secret', tlsSecret]]) {
      expect(find(manifests, kind!, name!).metadata.annotations!['helm.sh/hook']).toBe('pre-install,pre-upgrade');
    }
    const registerConfig = { spec: { template: { spec: pod } }, kind: 'Deployment', metadata: { name: 'search-attributes' } } as Manifest;
    expect(forgelinkConfigOf([...manifests, registerConfig], 'search-attributes').load().temporal).toMatchObject({ address: 'temporal:7233', namespace: 'ci' });
  });

  it('refuses values the schema does not know', () => {
    const values = path.join(dir, 'typo.yaml');
    writeFileSync(values, toYaml({ gitProviders: { github: { webhookSecrett: 'x' } } }));
    expect(() => render([values])).toThrow(/webhookSecrett/);
    // As forgelink's own loader: an answer budget below two answers at their bound (80 MiB).
    const small = path.join(dir, 'small-budget.yaml');
    writeFileSync(small, toYaml({ worker: { sizing: { answerBudgetBytes: 64 * 1024 * 1024 } } }));
    expect(() => render([small])).toThrow(/answerBudgetBytes/);
  });
});

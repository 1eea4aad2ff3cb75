import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { githubAppFromConfig, webhookSecretsFromConfig } from '../../api/main.ts';
import { settingsFromConfig } from '../../activities/index.ts';
import { deadlinesFromConfig, QUERY_READ_MARGIN_MS, sizedStatementMs, WRITE_MS_PER_MIB } from '../../lib/db/index.ts';
import { type Config, ConfigError, legacyHookWindow, EXAMPLE_ENCRYPTION_KEY, loadConfig, MAX_WEBHOOK_BODY_BYTES, parseConfig, WORKER_SIZING_DEFAULTS } from '../../lib/config.ts';

const KEY = Buffer.alloc(32, 7).toString('base64');
const minimal = { publicUrl: 'https://forgelink.example.com', auth: { adminToken: 'a'.repeat(32) }, encryption: { key: KEY } };

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe('config', () => {
  it('fills defaults for a minimal config', () => {
    const config = parseConfig(minimal);
    expect(config.api).toEqual({ host: '127.0.0.1', port: 8080, maxBodyBytes: 64 * 1024 });
    expect(config.temporal).toMatchObject({ namespace: 'default', taskQueue: 'forgelink' });
    expect(config.temporal.address).toBeUndefined();
    // The API's Temporal calls for one request: 5 s, then a 503 (api/temporal-deadline.ts).
    expect(config.temporal.requestDeadlineSeconds).toBe(5);
    expect(config.gitProviders.github.baseUrl).toBe('https://api.github.com');
    expect(config.repositoryCache.schedule).toBe('0 2 * * *');
    // The hook-health reconcile runs after the refresh.
    expect(config.hookHealth).toEqual({ schedule: '0 4 * * *', timeZone: 'UTC', connectionsAtOnce: 4 });
    expect(config.security.allowHttpHosts).toEqual([]);
    expect(config.security.allowPrivateNetworks).toEqual([]);
  });

  it("bounds the API pool's database calls by default, well under a provider's 10 s webhook timeout", () => {
    const { database } = parseConfig(minimal);
    expect(database).toEqual({ connectTimeoutSeconds: 2, statementTimeoutSeconds: 5, lockTimeoutSeconds: 2, serverDeadlines: true });
    // One statement's worst: connect, then the statement and the client's 1 s past it.
    expect(database.connectTimeoutSeconds + database.statementTimeoutSeconds + QUERY_READ_MARGIN_MS / 1000).toBeLessThan(10);
    expect(deadlinesFromConfig({ connectTimeoutSeconds: 0.5, statementTimeoutSeconds: 1.25, lockTimeoutSeconds: 1 })).toEqual({ connectMs: 500, statementMs: 1250, lockMs: 1000 });
    expect(deadlinesFromConfig({ ...database, serverDeadlines: false })).toEqual({ connectMs: 2000, statementMs: 5000, lockMs: 2000, server: false });
    // The intake INSERT of the largest delivery (events of twice webhooks.maxBodyBytes) gets its own deadline, more than twice its worst measured (5.8 s).
    const largest = 2 * parseConfig(minimal).webhooks.maxBodyBytes;
    expect(sizedStatementMs(deadlinesFromConfig(database), largest)).toBe(5000 + 50 * WRITE_MS_PER_MIB);
    expect(sizedStatementMs(deadlinesFromConfig(database), largest)).toBeGreaterThan(2 * 5800);
    expect(errorOf(() => parseConfig({ ...minimal, database: { statementTimeoutSeconds: 1, lockTimeoutSeconds: 2 } }))).toMatch(/database\.lockTimeoutSeconds: must be at most statementTimeoutSeconds/);
    expect(errorOf(() => parseConfig({ ...minimal, database: { statementTimeoutSeconds: 0 } }))).toMatch(/database\.statementTimeoutSeconds/);
  });

  it('leaves tracing off and logs at info unless told otherwise; environment variables turn tracing on', () => {
    const config = parseConfig(minimal);
    expect(config.tracing).toEqual({ enabled: false, headers: {}, sampleRatio: 1 });
    expect(config.logging).toEqual({ level: 'info', accessLogLevel: 'info' });
    const fromEnv = parseConfig(minimal, { FORGELINK_TRACING_ENABLED: 'true', FORGELINK_TRACING_ENDPOINT: 'http://collector:4318/v1/traces', LOG_LEVEL: 'WARN' });
    expect(fromEnv.tracing).toMatchObject({ enabled: true, endpoint: 'http://collector:4318/v1/traces' });
    expect(fromEnv.logging.level).toBe('warn');
    expect(errorOf(() => parseConfig({ ...minimal, tracing: { sampleRatio: 2 } }))).toMatch(/tracing\.sampleRatio/);
    expect(errorOf(() => parseConfig({ ...minimal, logging: { accessLogLevel: 'loud' } }))).toMatch(/logging\.accessLogLevel/);
  });

  it('takes the GitHub web URL (where OAuth codes are exchanged) from gitProviders.github.webUrl, else from baseUrl', () => {
    const app = (github: Record<string, unknown>) =>
      githubAppFromConfig(parseConfig({ ...minimal, gitProviders: { github: { appName: 'forgelink', clientId: 'Iv1.x', clientSecret: 's', ...github } } }));
    expect(app({})).toEqual({ appName: 'forgelink', webUrl: 'https://github.com', clientId: 'Iv1.x', clientSecret: 's' });
    expect(app({ baseUrl: 'https://ghe.example.com/api/v3' })?.webUrl).toBe('https://ghe.example.com');
    expect(app({ baseUrl: 'https://ghe.example.com/api/v3', webUrl: 'https://login.ghe.example.com/' })?.webUrl).toBe('https://login.ghe.example.com');
    expect(errorOf(() => parseConfig({ ...minimal, gitProviders: { github: { webUrl: 'ftp://github.com' } } }))).toContain('gitProviders.github.webUrl');
    // Without an App name there is no install flow.
    expect(githubAppFromConfig(parseConfig(minimal))).toBeUndefined();
  });

  it('bounds webhooks.maxBodyBytes at 100 MiB (events are stored up to twice it, under jsonb\'s and V8\'s string limits)', () => {
    expect(parseConfig({ ...minimal, webhooks: { maxBodyBytes: MAX_WEBHOOK_BODY_BYTES } }).webhooks.maxBodyBytes).toBe(100 * 1024 * 1024);
    expect(errorOf(() => parseConfig({ ...minimal, webhooks: { maxBodyBytes: MAX_WEBHOOK_BODY_BYTES + 1 } }))).toMatch(/webhooks\.maxBodyBytes/);
    expect(errorOf(() => parseConfig({ ...minimal, webhooks: { maxBodyBytes: 300 * 1024 * 1024, unverifiedBodyBytes: 600 * 1024 * 1024 } }))).toMatch(/webhooks\.maxBodyBytes/);
  });

  it('reads webhooks.verifiedDeliveryBytes: unset unless told (the receivers derive it), at least 5 times maxBodyBytes (a delivery of the limit)', () => {
    expect(parseConfig(minimal).webhooks.verifiedDeliveryBytes).toBeUndefined();
    expect(parseConfig({ ...minimal, webhooks: { maxBodyBytes: 1024, verifiedDeliveryBytes: 5 * 1024 } }).webhooks.verifiedDeliveryBytes).toBe(5 * 1024);
    expect(errorOf(() => parseConfig({ ...minimal, webhooks: { maxBodyBytes: 1024, verifiedDeliveryBytes: 5 * 1024 - 1 } }))).toMatch(/webhooks\.verifiedDeliveryBytes: verifiedDeliveryBytes must be at least 5 times maxBodyBytes/);
  });

  it("reads webhooks.maxBacklogDeliveries and maxBacklogBytes (an organization's unstarted deliveries past which they are answered 503): 1,000,000 and 4 GiB unless told, at least 1", () => {
    expect(parseConfig(minimal).webhooks).toMatchObject({ maxBacklogDeliveries: 1_000_000, maxBacklogBytes: 4 * 1024 * 1024 * 1024 });
    expect(parseConfig({ ...minimal, webhooks: { maxBacklogDeliveries: 5, maxBacklogBytes: 1024 } }).webhooks).toMatchObject({ maxBacklogDeliveries: 5, maxBacklogBytes: 1024 });
    expect(errorOf(() => parseConfig({ ...minimal, webhooks: { maxBacklogDeliveries: 0 } }))).toMatch(/webhooks\.maxBacklogDeliveries/);
    expect(errorOf(() => parseConfig({ ...minimal, webhooks: { maxBacklogBytes: 0.5 } }))).toMatch(/webhooks\.maxBacklogBytes/);
  });

  it('reads security.allowPrivateNetworks as addresses or CIDR ranges', () => {
    expect(parseConfig({ ...minimal, security: { allowPrivateNetworks: ['10.0.0.0/8', '127.0.0.1'] } }).security.allowPrivateNetworks).toEqual(['10.0.0.0/8', '127.0.0.1']);
    expect(errorOf(() => parseConfig({ ...minimal, security: { allowPrivateNetworks: ['intranet'] } }))).toMatch(/security\.allowPrivateNetworks\.0: must be an IP address or a CIDR range/);
  });

  it('reads security.dnsServers and .dnsTimeoutSeconds: the system name servers and 5 s unless told', () => {
    expect(parseConfig(minimal).security).toMatchObject({ dnsServers: [], dnsTimeoutSeconds: 5 });
    expect(parseConfig({ ...minimal, security: { dnsServers: ['10.0.0.2', '10.0.0.3:5353'], dnsTimeoutSeconds: 2.5 } }).security).toMatchObject({ dnsServers: ['10.0.0.2', '10.0.0.3:5353'], dnsTimeoutSeconds: 2.5 });
    expect(errorOf(() => parseConfig({ ...minimal, security: { dnsTimeoutSeconds: 0 } }))).toMatch(/security\.dnsTimeoutSeconds/);
  });

  it("sizes the worker's cache and slots from the worker keys, refusing slots a cache cannot hold", () => {
    expect(parseConfig(minimal).worker).toEqual(WORKER_SIZING_DEFAULTS);
    expect(parseConfig({ ...minimal, worker: { maxCachedWorkflows: 0, maxConcurrentWorkflowTaskExecutions: 50 } }).worker).toMatchObject({ maxCachedWorkflows: 0, maxConcurrentWorkflowTaskExecutions: 50 });
    expect(errorOf(() => parseConfig({ ...minimal, worker: { maxCachedWorkflows: 4, maxConcurrentWorkflowTaskExecutions: 8 } }))).toMatch(/worker\.maxConcurrentWorkflowTaskExecutions: must not exceed maxCachedWorkflows/);
    expect(errorOf(() => parseConfig({ ...minimal, worker: { maxConcurrentLocalActivityExecutions: 0 } }))).toMatch(/worker\.maxConcurrentLocalActivityExecutions/);
    expect(errorOf(() => parseConfig({ ...minimal, worker: { maxCachedWorkflow: 10 } }))).toMatch(/worker/);
  });

  it('names a missing key', () => {
    expect(errorOf(() => parseConfig({ ...minimal, auth: undefined }))).toMatch(/^\s+auth: is required$/m);
  });

  it('names every bad key at once', () => {
    const message = errorOf(() => parseConfig({ ...minimal, publicUrl: 'not a url', encryption: { key: 'c2hvcnQ=' }, api: { port: 'x' } }));
    expect(message).toMatch(/publicUrl:/);
    expect(message).toMatch(/encryption\.key: must be the base64 of 32 random bytes/);
    expect(message).toMatch(/api\.port:/);
  });

  it('rejects unknown top-level keys (typos must not pass silently)', () => {
    expect(errorOf(() => parseConfig({ ...minimal, gitProvider: {} }))).toMatch(/gitProvider/);
  });

  it("requires the GitHub App's secrets; the global hook secrets of GitLab, Bitbucket and Azure DevOps are optional (legacy hooks only)", () => {
    const config = parseConfig({ ...minimal, gitProviders: { gitlab: { enabled: true }, bitbucket: { enabled: true }, azureDevOps: { enabled: true } } });
    expect(config.gitProviders.gitlab).toEqual({ enabled: true });
    // Legacy Azure DevOps hooks deliver with a user and a password: one without the other is a mistake.
    const message = errorOf(() => parseConfig({ ...minimal, gitProviders: { azureDevOps: { enabled: true, webhookBasicAuthUser: 'u' } } }));
    expect(message).toMatch(/gitProviders\.azureDevOps\.webhookBasicAuthPass: is required/);
    expect(message).not.toMatch(/webhookBasicAuthUser/);
    expect(errorOf(() => parseConfig({ ...minimal, gitProviders: { github: { enabled: true, appId: 1 } } }))).toMatch(/gitProviders\.github\.privateKey/);
  });

  it('lets the environment override keys (PORT wins over api.port)', () => {
    const config = parseConfig({ ...minimal, api: { port: 9000 } }, { PORT: '7000', FORGELINK_DATABASE_URL: 'postgres://db/x' });
    expect(config.api.port).toBe(7000);
    expect(config.database.url).toBe('postgres://db/x');
  });

  it('loads YAML from FORGELINK_CONFIG and reports bad YAML and missing files', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-config-'));
    const file = path.join(dir, 'forgelink.yml');
    writeFileSync(file, `publicUrl: https://x.example\nauth:\n  adminToken: ${'b'.repeat(30)}\nencryption:\n  key: ${KEY}\n`);
    expect(loadConfig(file, {}).publicUrl).toBe('https://x.example');
    writeFileSync(file, 'publicUrl: [unclosed');
    expect(errorOf(() => loadConfig(file, {}))).toMatch(/not valid YAML/);
    expect(errorOf(() => loadConfig(path.join(dir, 'missing.yml'), {}))).toMatch(/cannot read config file/);
  });

  it('accepts the example config shipped in the repo once its secrets are its own, never with the example key', () => {
    const own = {
      FORGELINK_ENCRYPTION_KEY: KEY,
      FORGELINK_ADMIN_TOKEN: 'o'.repeat(40),
      FORGELINK_GITHUB_WEBHOOK_SECRET: 'w'.repeat(40),
      FORGELINK_GITHUB_CLIENT_SECRET: 'c'.repeat(40),
      FORGELINK_GITHUB_PRIVATE_KEY: '-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n',
    };
    const config = loadConfig('config/forgelink.example.yml', own);
    expect(config.gitProviders.gitlab.enabled).toBe(true);
    expect(config.auth.adminToken).toBe(own.FORGELINK_ADMIN_TOKEN);
    expect(errorOf(() => loadConfig('config/forgelink.example.yml', {}))).toMatch(/encryption\.key: is the example key/);
    expect(errorOf(() => parseConfig({ ...minimal, encryption: { key: KEY, previousKeys: [{ id: 'old', key: EXAMPLE_ENCRYPTION_KEY }] } }))).toMatch(/encryption\.previousKeys\.0\.key: is the example key/);
  });

  it("refuses every secret value the example config ships, set or commented out, naming the key: its admin token is a break-glass token over every tenant", () => {
    const text = readFileSync('config/forgelink.example.yml', 'utf8');
    // Only the encryption key of its own: the example's admin token and GitHub secrets are refused.
    const set = errorOf(() => loadConfig('config/forgelink.example.yml', { FORGELINK_ENCRYPTION_KEY: KEY }));
    for (const key of ['auth.adminToken', 'gitProviders.github.webhookSecret', 'gitProviders.github.clientSecret', 'gitProviders.github.privateKey']) {
      expect(set).toContain(`${key}: is the example value from config/forgelink.example.yml`);
    }
    // The legacy hooks' global secrets it shows commented out, as someone would uncomment them.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'forgelink-config-'));
    const file = path.join(dir, 'forgelink.yml');
    writeFileSync(file, text.replace(/^(\s*)# (webhookSecret|webhookBasicAuthUser|webhookBasicAuthPass): /gm, '$1$2: '));
    const uncommented = errorOf(() => loadConfig(file, { FORGELINK_ENCRYPTION_KEY: KEY, FORGELINK_ADMIN_TOKEN: 'o'.repeat(40) }));
    for (const key of ['gitProviders.gitlab.webhookSecret', 'gitProviders.bitbucket.webhookSecret']) {
      expect(uncommented).toContain(`${key}: is the example value from config/forgelink.example.yml`);
    }
    // the-old-password is under 24 characters too.
    expect(uncommented).toMatch(/gitProviders\.azureDevOps\.webhookBasicAuthPass: (must be at least 24 characters|is the example value)/);
    // Nor under another key, or with spaces around it, nor through the environment.
    const adminToken = 'change-me-to-a-long-random-string';
    expect(text).toContain(`adminToken: ${adminToken}`);
    expect(errorOf(() => parseConfig({ ...minimal, gitProviders: { gitlab: { enabled: true, webhookSecret: 'the-old-bitbucket-secret' } } }))).toContain('gitProviders.gitlab.webhookSecret: is the example value');
    expect(errorOf(() => parseConfig({ ...minimal, auth: { adminToken: ` ${adminToken} ` } }))).toContain('auth.adminToken: is the example value');
    expect(errorOf(() => parseConfig(minimal, { FORGELINK_ADMIN_TOKEN: adminToken }))).toContain('auth.adminToken: is the example value');
    expect(errorOf(() => parseConfig({ ...minimal, gitProviders: { github: { previousWebhookSecret: adminToken } } }))).toContain('gitProviders.github.previousWebhookSecret: is the example value');
  });

  it('checks previous encryption keys like the current one', () => {
    expect(parseConfig({ ...minimal, encryption: { key: KEY, previousKeys: [{ id: 'old', key: Buffer.alloc(32, 1).toString('base64') }] } }).encryption.previousKeys).toHaveLength(1);
    expect(errorOf(() => parseConfig({ ...minimal, encryption: { key: KEY, previousKeys: [{ id: 'old', key: 'c2hvcnQ=' }] } }))).toMatch(/encryption\.previousKeys\.0\.key: must be the base64 of 32 random bytes/);
  });

  it('refuses webhook and admin secrets shorter than 24 characters', () => {
    const short = 'x'.repeat(23);
    const message = errorOf(() =>
      parseConfig({
        ...minimal,
        auth: { adminToken: short },
        gitProviders: {
          github: { webhookSecret: short, previousWebhookSecret: short },
          gitlab: { enabled: true, webhookSecret: short },
          bitbucket: { previousWebhookSecret: short },
          azureDevOps: { enabled: true, webhookBasicAuthUser: 'forgelink', webhookBasicAuthPass: short },
        },
      }),
    );
    for (const key of ['auth.adminToken', 'github.webhookSecret', 'github.previousWebhookSecret', 'gitlab.webhookSecret', 'bitbucket.previousWebhookSecret', 'azureDevOps.webhookBasicAuthPass']) {
      expect(message).toContain(`${key}: must be at least 24 characters`);
    }
    expect(parseConfig({ ...minimal, gitProviders: { gitlab: { enabled: true, webhookSecret: 'x'.repeat(24) } }, webhooks: { acceptLegacyHooks: true } }).gitProviders.gitlab.webhookSecret).toHaveLength(24);
  });

  it("accepts the legacy hooks' global secrets only with webhooks.acceptLegacyHooks, off by default; keys without it are unused, never a reason not to start", () => {
    const secret = 's'.repeat(32);
    const legacyKeys = {
      gitlab: { enabled: true, webhookSecret: secret },
      bitbucket: { enabled: true, previousWebhookSecret: secret },
      azureDevOps: { enabled: true, webhookBasicAuthUser: 'forgelink', webhookBasicAuthPass: secret },
    };
    expect(parseConfig(minimal).webhooks.acceptLegacyHooks).toBe(false);
    // An existing deployment's config still holding them starts (the contract has them optional); the receivers get none.
    const closed = parseConfig({ ...minimal, gitProviders: legacyKeys });
    expect(webhookSecretsFromConfig(closed)).toMatchObject({ gitlab: [], bitbucket: [], azureDevOps: undefined });
    expect(legacyHookWindow(closed)).toEqual({ open: [], unusedKeys: ['gitProviders.gitlab.webhookSecret', 'gitProviders.bitbucket.previousWebhookSecret', 'gitProviders.azureDevOps.webhookBasicAuthPass'] });
    expect(settingsFromConfig(closed).legacyHookProviders).toEqual([]);
    // A disabled provider's keys are out of use either way.
    expect(legacyHookWindow(parseConfig({ ...minimal, gitProviders: { gitlab: { enabled: false, webhookSecret: secret } } }))).toEqual({ open: [], unusedKeys: [] });
    expect(errorOf(() => parseConfig({ ...minimal, webhooks: { acceptLegacyHooks: true } }))).toMatch(/webhooks\.acceptLegacyHooks: needs the legacy hooks' global secret of an enabled provider/);
    const open = parseConfig({ ...minimal, gitProviders: legacyKeys, webhooks: { acceptLegacyHooks: true } });
    expect(webhookSecretsFromConfig(open)).toMatchObject({ gitlab: [secret], bitbucket: [secret], azureDevOps: { user: 'forgelink', passwords: [secret] } });
    expect(legacyHookWindow(open)).toEqual({ open: ['gitlab', 'bitbucket', 'azure-devops'], unusedKeys: [] });
    expect(settingsFromConfig(open).legacyHookProviders).toEqual(['gitlab', 'bitbucket', 'azure-devops']);
  });

  it('an Azure DevOps password without webhookBasicAuthUser verifies nothing: it does not open the window, and with another provider open it is named unused', () => {
    const secret = 's'.repeat(32);
    const previousOnly = { enabled: true, previousWebhookBasicAuthPass: secret };
    expect(errorOf(() => parseConfig({ ...minimal, gitProviders: { azureDevOps: previousOnly }, webhooks: { acceptLegacyHooks: true } }))).toMatch(/webhooks\.acceptLegacyHooks: needs/);
    const config = parseConfig({ ...minimal, gitProviders: { gitlab: { enabled: true, webhookSecret: secret }, azureDevOps: previousOnly }, webhooks: { acceptLegacyHooks: true } });
    expect(legacyHookWindow(config)).toEqual({ open: ['gitlab'], unusedKeys: ['gitProviders.azureDevOps.previousWebhookBasicAuthPass'] });
    expect(webhookSecretsFromConfig(config).azureDevOps).toBeUndefined();
  });

  it("webhookSecretsFromConfig hands the receivers the legacy global secrets only with the window on, whatever the config's validation let through", () => {
    // Built directly, not parsed: only webhookSecretsFromConfig's own gates stand between these keys and the receivers.
    const secret = 's'.repeat(32);
    const base = parseConfig(minimal);
    const withKeys = (acceptLegacyHooks: boolean): Config => ({
      ...base,
      gitProviders: {
        ...base.gitProviders,
        gitlab: { ...base.gitProviders.gitlab, enabled: true, webhookSecret: secret },
        bitbucket: { ...base.gitProviders.bitbucket, enabled: true, webhookSecret: secret },
        azureDevOps: { ...base.gitProviders.azureDevOps, enabled: true, webhookBasicAuthUser: 'forgelink', webhookBasicAuthPass: secret },
      },
      webhooks: { ...base.webhooks, acceptLegacyHooks },
    });
    expect(webhookSecretsFromConfig(withKeys(false))).toMatchObject({ gitlab: [], bitbucket: [], azureDevOps: undefined });
    expect(webhookSecretsFromConfig(withKeys(true))).toMatchObject({ gitlab: [secret], bitbucket: [secret], azureDevOps: { user: 'forgelink', passwords: [secret] } });
  });

  it('refuses a plain http publicUrl unless it is loopback or in security.allowHttpHosts', () => {
    expect(errorOf(() => parseConfig({ ...minimal, publicUrl: 'http://forgelink.example.com' }))).toMatch(/publicUrl: must be https/);
    for (const publicUrl of ['http://127.0.0.1:8080', 'http://localhost:8080', 'http://[::1]:8080']) expect(parseConfig({ ...minimal, publicUrl }).publicUrl).toBe(publicUrl);
    expect(parseConfig({ ...minimal, publicUrl: 'http://forgelink:8080', security: { allowHttpHosts: ['forgelink'] } }).publicUrl).toBe('http://forgelink:8080');
  });
});

/**
 * `npm run fake:gitlab`: a fake GitLab (the one the tests use) on 127.0.0.1, with one token that
 * has every scope forgelink needs, so the quick start can connect GitLab without a real instance.
 */
import { startFakeGitlab } from '../test/fakes/gitlab.ts';

const gitlab = await startFakeGitlab();
const token = 'glpat-quickstart-token';
gitlab.addToken({ token, username: 'quickstart', scopes: ['api', 'read_user', 'read_repository'] });
gitlab.addProject({ pathWithNamespace: 'quickstart/app' });
console.log(`fake GitLab at ${gitlab.url} — connect with {"provider":"gitlab","baseUrl":"${gitlab.url}","token":"${token}"}`);
process.once('SIGINT', () => void gitlab.close().then(() => process.exit(0)));
process.once('SIGTERM', () => void gitlab.close().then(() => process.exit(0)));

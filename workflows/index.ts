export { connectWorkflow } from './connect.ts';
export { disconnectWorkflow } from './disconnect.ts';
export { eventWorkflow } from './event.ts';
export { connectionHookHealthWorkflow, hookHealthWorkflow } from './hook-health.ts';
export { repositoryWorkflow } from './repository.ts';
export { refreshConnectionWorkflow, refreshRepositoriesWorkflow } from './refresh.ts';
export { webhookCredentialRotationWorkflow } from './webhook-credential-rotation.ts';

export { connectWorkflow } from './connect.ts';
export { disconnectWorkflow } from './disconnect.ts';

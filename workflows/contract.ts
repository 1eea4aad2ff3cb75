/** Workflow names, inputs, ids and search attributes shared by api, worker and workflows. No Node imports. */
import { defineSearchAttributeKey } from '@temporalio/common';
import type { ConnectionStatus, Provider } from '../lib/domain.ts';

export const DEFAULT_TASK_QUEUE = 'forgelink';

export const SA_ORGANIZATION = defineSearchAttributeKey('ForgelinkOrganization', 'KEYWORD');
export const SA_PROVIDER = defineSearchAttributeKey('ForgelinkProvider', 'KEYWORD');
export const SA_REPOSITORY = defineSearchAttributeKey('ForgelinkRepository', 'KEYWORD');
export const SA_CONNECTION = defineSearchAttributeKey('ForgelinkConnection', 'KEYWORD');
export const SEARCH_ATTRIBUTES = [SA_ORGANIZATION, SA_PROVIDER, SA_REPOSITORY, SA_CONNECTION];

export interface ConnectInput {
  organizationId: string;
  connectionId: string;
}
export interface ConnectResult {
  status: Extract<ConnectionStatus, 'active' | 'failed'>;
  reason?: string;
  account?: string;
}

export interface DisconnectInput {
  organizationId: string;
  connectionId: string;
}
export interface DisconnectResult {
  status: 'disconnected';
  detachedRepositories: number;
}

/**
 * Workflow ids are `<kind>:<organizationId>:<subject>[:<suffix>]`: the organization is always the
 * second field so the API can tell which organization a run belongs to from its id alone.
 */
export const workflowIds = {
  connect: (organizationId: string, connectionId: string) => `connect:${organizationId}:${connectionId}`,
  disconnect: (organizationId: string, connectionId: string) => `disconnect:${organizationId}:${connectionId}`,
};

export interface ParsedWorkflowId {
  kind: string;
  organizationId: string;
  subject: string;
}

export function parseWorkflowId(workflowId: string): ParsedWorkflowId | undefined {
  const [kind, organizationId, ...rest] = workflowId.split(':');
  if (!kind || !organizationId || rest.length === 0) return undefined;
  return { kind, organizationId, subject: rest.join(':') };
}


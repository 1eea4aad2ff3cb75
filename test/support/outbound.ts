import { createOutbound } from '../../activities/outbound.ts';

/** The tests' guarded HTTP layer: the fake servers listen on 127.0.0.1, as the test config allows. */
export const TEST_ADDRESS_POLICY = { allowHttpHosts: ['127.0.0.1', 'localhost'], allowPrivateNetworks: ['127.0.0.1'] };
export const testOutbound = createOutbound(TEST_ADDRESS_POLICY);

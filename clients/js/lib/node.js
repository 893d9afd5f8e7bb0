// nautilus-client for Node: the verification core (./index.js, the same
// module browsers load) plus what needs Node: the HTTP `Client`.

import { webcrypto } from 'node:crypto';

// Node 18 has Web Crypto only as `require('node:crypto').webcrypto`; from
// Node 19 it is also `globalThis.crypto`, which the core uses.
if (!globalThis.crypto) globalThis.crypto = webcrypto;

export * from './index.js';
export { Client } from './client.js';

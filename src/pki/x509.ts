/**
 * @peculiar/x509, loaded the one way it works in canopy: after the reflect-metadata polyfill, with Node's
 * WebCrypto as its provider. The rest of src/pki imports x509 from here, never from the
 * package, so the load order below holds everywhere.
 */

// Must stay first: tsyringe (under @peculiar/x509) checks for Reflect.getMetadata on load.
import 'reflect-metadata';

import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

export { x509 };

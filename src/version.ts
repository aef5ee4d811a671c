import { PACKAGE_JSON } from './package-root.js';

export const VERSION = PACKAGE_JSON.version;

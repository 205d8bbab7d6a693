import { join } from 'node:path';

import { CairnError } from '../../shared/errors.js';
import type { Catalog } from './catalog.js';
import { PostgresCatalog } from './postgres-catalog.js';
import { SqliteCatalog } from './sqlite-catalog.js';

export interface OpenCatalogOptions {
  /** The control plane's folder: the SQLite catalog lives at `<dataDir>/catalog.sqlite`. */
  dataDir: string;
  /** `postgres://…` or `postgresql://…`: the catalog on PostgreSQL instead; absent: SQLite. */
  database?: string;
}

/**
 * The catalog the control plane runs on: SQLite in its folder by default; PostgreSQL for a
 * postgres:// or postgresql:// URL, connected and migrated before this returns (several control-plane
 * instances may share that database). Anything else as `database` is a CairnError USAGE. Errors
 * name the server and database, never the password.
 */
export async function openCatalog(options: OpenCatalogOptions): Promise<Catalog> {
  if (options.database === undefined) return new SqliteCatalog(join(options.dataDir, 'catalog.sqlite'));
  if (/^postgres(ql)?:\/\//i.test(options.database)) return PostgresCatalog.open(options.database);
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(options.database)?.[1];
  throw new CairnError(
    'USAGE',
    `the catalog database must be a postgres:// or postgresql:// URL (or absent, for SQLite in the data folder), got ${scheme ? `a ${scheme}: URL` : 'something else'}`,
  );
}

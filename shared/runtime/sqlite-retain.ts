import type Database from 'better-sqlite3';

/**
 * Keeps better-sqlite3 objects referenced until the process exits. better-sqlite3 12 on Node.js 24
 * (the runtime of the single executable) aborts the process when the garbage collector frees a
 * Statement or Database from a V8 task, outside a Node.js environment: its destructor asserts on
 * one ("Assertion failed: (env) != nullptr" in RemoveEnvironmentCleanupHook). Retained, they are
 * freed by the environment's cleanup at exit instead. Only objects made a bounded number of times
 * belong here (a statement per SQL text, a database per opened file).
 */
const retained: object[] = [];

export function retain<T extends object>(o: T): T {
  retained.push(o);
  return o;
}

/** The prepared statements of one database, one per SQL text, each retained. */
export class StatementCache {
  private readonly statements = new Map<string, Database.Statement>();

  constructor(private readonly db: Database.Database) {}

  get(sql: string): Database.Statement {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = retain(this.db.prepare(sql));
      this.statements.set(sql, statement);
    }
    return statement;
  }
}

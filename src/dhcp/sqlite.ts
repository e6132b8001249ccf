// The part of better-sqlite3 (v12) that the lease store uses, loaded through createRequire so the module
// needs no @types package. Synchronous by design: a commit finishes (fsync included) before the call returns.
import { createRequire } from 'node:module';

export interface Statement {
  run(...params: unknown[]): { changes: number };
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}

export interface Database {
  readonly open: boolean;
  prepare(sql: string): Statement;
  exec(sql: string): void;
  pragma(source: string, options?: { simple?: boolean }): unknown;
  transaction<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void;
  close(): void;
}

type DatabaseCtor = new (
  file: string,
  options?: { readonly?: boolean; fileMustExist?: boolean; timeout?: number },
) => Database;

let ctor: DatabaseCtor | undefined;

export function openDatabase(file: string, options?: { readonly?: boolean; fileMustExist?: boolean }): Database {
  ctor ??= createRequire(import.meta.url)('better-sqlite3') as DatabaseCtor;
  return new ctor(file, { ...options, timeout: 5000 });
}

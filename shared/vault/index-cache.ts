/**
 * A local cache of index objects, so a vault in object storage need not be read whole on every run.
 * Bodies are the sealed objects exactly as stored (they are decrypted on use, so a tampered cache
 * cannot inject locations). Index objects are immutable, so a cached body is valid while its key
 * exists in the vault; `retainIndexes` drops the ones that no longer do.
 */
export interface IndexCache {
  getIndex(vaultId: string, key: string): Buffer | undefined;
  putIndex(vaultId: string, key: string, body: Buffer): void;
  retainIndexes(vaultId: string, keys: string[]): void;
}

/**
 * The environment Cairn gives the programs it runs (hooks, qemu tools, rbd, fsfreeze): its own,
 * minus the secrets it was given. The vault passphrase and the passwords of vCenters and arrays are
 * for Cairn alone; a hook or a third-party tool that needs a credential gets it explicitly.
 */
const SECRET = /^CAIRN_(PASSPHRASE|.*_PASSWORD)$/;

export function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!SECRET.test(k)) env[k] = v;
  return { ...env, ...extra };
}

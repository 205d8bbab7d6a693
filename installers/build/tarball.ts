import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PackageOptions } from './deb.js';

/**
 * Builds `${outDir}/cairn-${version}-linux-x64.tar.gz` for distributions without dpkg and returns
 * its path. It holds one folder, `cairn-${version}-linux-x64/`, with the executable, install.sh,
 * the units, the default configuration and a README; install.sh installs them in the .deb's layout.
 * Entries are owned by root:root, so unpacking as root gives no stray owners.
 */
export function buildTarball(opts: PackageOptions): string {
  if (!/^[0-9][A-Za-z0-9.+~-]*$/.test(opts.version)) {
    throw new Error(`'${opts.version}' is not a usable version for the tarball name: start with a digit; letters, digits and . + ~ - only`);
  }
  const name = `cairn-${opts.version}-linux-x64`;
  const stage = join(opts.workDir, 'tarball');
  const folder = join(stage, name);
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(folder, { recursive: true });
  chmodSync(folder, 0o755);

  const put = (from: string, to: string, mode: number): void => {
    copyFileSync(from, join(folder, to));
    chmodSync(join(folder, to), mode);
  };
  const linux = join(opts.repo, 'installers', 'linux');
  put(opts.binary, 'cairn', 0o755);
  put(join(linux, 'install.sh'), 'install.sh', 0o755);
  for (const file of ['cairn-agent.service', 'cairn-control-plane.service', 'agent.json', 'control-plane.env']) put(join(linux, file), file, 0o644);
  writeFileSync(join(folder, 'README'), readme(opts.version), { mode: 0o644 });

  mkdirSync(opts.outDir, { recursive: true });
  const output = join(opts.outDir, `${name}.tar.gz`);
  try {
    execFileSync('tar', ['--create', '--gzip', '--file', output, '--owner=0', '--group=0', '--numeric-owner', '--sort=name', '-C', stage, name], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`tar could not build ${output}: ${stderr || (err as Error).message} (GNU tar is needed)`, { cause: err });
  }
  return output;
}

function readme(version: string): string {
  return `Cairn ${version} for Linux x86-64
==================================

To install (as root; systemd distributions):

  ./install.sh

This puts the executable in /usr/bin/cairn, the systemd units in /etc/systemd/system,
the default configuration in /etc/cairn (existing files are kept), makes /var/lib/cairn,
/var/log/cairn and the system user 'cairn', then enables and starts cairn-agent.

  ./install.sh --help                  every option (--root DIR, --binary PATH, --no-start)
  ./install.sh                         again, from a newer release: upgrade (config and state kept)
  ./install.sh --uninstall             remove the program; keep /etc/cairn and /var/lib/cairn
  ./install.sh --uninstall --purge     also delete configuration, state, logs and the 'cairn' user

After installing:
  edit /etc/cairn/agent.json (vaults, resources, policies), then: systemctl restart cairn-agent
  on the one control plane host: edit /etc/cairn/control-plane.env, then
    systemctl enable --now cairn-control-plane
    cat /var/lib/cairn/control-plane/admin-token  (the admin token, written at the first start)

Without installing, the executable runs as it is: ./cairn --help
`;
}

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface PackageOptions {
  /** The repository's root folder (installers/ is read from it). */
  repo: string;
  /** The Linux x86-64 `cairn` executable to package. */
  binary: string;
  version: string;
  outDir: string;
  /** A scratch folder; the package tree is staged in it (replaced on every build). */
  workDir: string;
}

/**
 * `[epoch:]upstream[-revision]` (Debian Policy 5.6.12): upstream starts with a digit and may hold
 * `.+~` (and `-` only when a revision follows); the revision holds `.+~`.
 */
const DEBIAN_VERSION = /^(?:\d+:)?[0-9][A-Za-z0-9.+~]*(?:(?:-[A-Za-z0-9.+~]+)*-[A-Za-z0-9.+~]+)?$/;

/** Throws unless `version` is a valid Debian package version. */
export function checkDebianVersion(version: string): void {
  if (!DEBIAN_VERSION.test(version)) {
    throw new Error(
      `'${version}' is not a valid Debian package version: it must start with a digit and hold only ` +
        `letters, digits and . + ~ (with -REVISION and EPOCH: optional), e.g. 0.1.0, 0.1.0~rc1, 0.1.0+git20250101`,
    );
  }
}

/**
 * Builds `${outDir}/cairn_${version}_amd64.deb` (an epoch is left out of the file name, as dpkg
 * names files) and returns its path. The tree is staged under `workDir`; owners in the package are
 * root:root (`--root-owner-group`), so no fakeroot is needed; postinst gives control-plane.env to
 * group cairn once that group exists.
 *
 * Compression: gzip level 6 (`-Zgzip -z6`). For a 120 MB executable on two cores, xz -6 took
 * 43-80 s (30 MB package), xz -3 34 s (33 MB), gzip -6 5 s (44 MB), zstd -3 1 s (42 MB). xz's
 * 14 MB saving is not worth a minute per build; zstd is faster still, but dpkg reads zstd members
 * only from 1.21.18 (not Debian 11), while every dpkg reads gzip. Timings: installers/README.md.
 */
export function buildDeb(opts: PackageOptions): string {
  checkDebianVersion(opts.version);
  const linux = join(opts.repo, 'installers', 'linux');
  const debian = join(opts.repo, 'installers', 'debian');
  const root = join(opts.workDir, 'deb-root');
  rmSync(root, { recursive: true, force: true });

  const dir = (path: string): string => {
    const full = join(root, path);
    mkdirSync(full, { recursive: true });
    for (let d = full; d.length > root.length; d = join(d, '..')) chmodSync(d, 0o755);
    chmodSync(root, 0o755);
    return full;
  };
  const put = (from: string, to: string, mode: number): void => {
    copyFileSync(from, to);
    chmodSync(to, mode);
  };

  put(opts.binary, join(dir('usr/bin'), 'cairn'), 0o755);
  // /usr/lib/systemd/system: the same folder as /lib/systemd/system on merged-/usr systems, where DEP17 moves packaged files.
  for (const unit of ['cairn-agent.service', 'cairn-control-plane.service']) put(join(linux, unit), join(dir('usr/lib/systemd/system'), unit), 0o644);
  put(join(linux, 'agent.json'), join(dir('etc/cairn'), 'agent.json'), 0o640);
  put(join(linux, 'control-plane.env'), join(dir('etc/cairn'), 'control-plane.env'), 0o640);
  const doc = dir('usr/share/doc/cairn');
  writeFileSync(join(doc, 'copyright'), COPYRIGHT, { mode: 0o644 });
  writeFileSync(join(doc, 'README.Debian'), README_DEBIAN, { mode: 0o644 });

  const control = dir('DEBIAN');
  const installedKiB = installedSize(root);
  const template = readFileSync(join(debian, 'control'), 'utf8');
  writeFileSync(join(control, 'control'), template.replace('@VERSION@', opts.version).replace('@INSTALLED_SIZE@', String(installedKiB)), { mode: 0o644 });
  put(join(debian, 'conffiles'), join(control, 'conffiles'), 0o644);
  for (const script of ['postinst', 'prerm', 'postrm']) put(join(debian, script), join(control, script), 0o755);
  writeFileSync(join(control, 'md5sums'), md5sums(root), { mode: 0o644 });

  mkdirSync(opts.outDir, { recursive: true });
  const output = join(opts.outDir, `cairn_${opts.version.replace(/^\d+:/, '')}_amd64.deb`);
  try {
    execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '-z6', '--build', root, output], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`dpkg-deb could not build ${output}: ${stderr || (err as Error).message} (dpkg-deb comes with the 'dpkg' package)`, { cause: err });
  }
  return output;
}

/** Files below `root` other than DEBIAN/, root-relative, sorted. */
function payloadFiles(root: string): string[] {
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(root, join(e.parentPath, e.name)))
    .filter((p) => !p.startsWith('DEBIAN/'))
    .sort();
}

/** Installed-Size as dpkg-gencontrol counts it: KiB per file rounded up, plus one per folder. */
function installedSize(root: string): number {
  const entries = readdirSync(root, { recursive: true, withFileTypes: true }).filter((e) => !relative(root, join(e.parentPath, e.name)).startsWith('DEBIAN'));
  let kib = 0;
  for (const e of entries) kib += e.isDirectory() ? 1 : Math.ceil(statSync(join(e.parentPath, e.name)).size / 1024);
  return kib;
}

/** DEBIAN/md5sums: what `dpkg --verify` and debsums check the installed files against. */
function md5sums(root: string): string {
  return payloadFiles(root)
    .map((p) => `${createHash('md5').update(readFileSync(join(root, p))).digest('hex')}  ${p}\n`)
    .join('');
}

const COPYRIGHT = `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: cairn

Files: *
Copyright: Cairn maintainers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
 .
 The executable embeds Node.js and third-party modules, each under its own
 license (MIT, BSD or Apache-2.0).
`;

const README_DEBIAN = `Cairn for Debian
================

cairn-agent.service is enabled and started at installation. Its configuration is
/etc/cairn/agent.json (a conffile: kept on upgrade); after editing it:
  systemctl restart cairn-agent

cairn-control-plane.service is installed but not enabled. On the control plane host,
set the listen address and host name in /etc/cairn/control-plane.env, then:
  systemctl enable --now cairn-control-plane
  cat /var/lib/cairn/control-plane/admin-token   # the admin token, written at the first start

The agent may write only to /var/lib/cairn, /var/log/cairn and block devices. Allow every
other folder it must write with a drop-in: vault folders, restore targets, folders of
offline qcow2 images (Cairn keeps its dirty bitmap in the image) and whatever a quiesce
hook writes:
  systemctl edit cairn-agent            # [Service] then ReadWritePaths=/srv/vault /var/lib/libvirt/images
Keep vaults out of /var/lib/cairn itself.

Upgrades keep /etc/cairn and /var/lib/cairn. 'apt purge cairn' deletes /etc/cairn,
/var/lib/cairn, /var/log/cairn, /var/cache/cairn and the 'cairn' system user; a vault
found under /var/lib/cairn keeps that folder (backups in vaults are never deleted).
`;

import { CairnError } from '../../../shared/errors.js';
import { parseThumbprint } from '../../../shared/net/pinned-https.js';

/**
 * `vsphere://USER@HOST[:PORT]/VM?password-file=PATH&thumbprint=HEX&quiesce=auto|require|off&transport=https|nbd&nbd-helper=PATH`
 *
 * - USER: the vCenter (or ESXi) user; an `@` in it (backup@vsphere.local) may stay as is or be %40.
 * - VM: the VM's name, its managed object id (vm-NN) or its instance UUID.
 * - The password comes from password-file= (first line) or CAIRN_VSPHERE_PASSWORD, never from the URL.
 * - thumbprint=: SHA-1 or SHA-256 of the server's certificate, for a certificate no CA vouches for.
 * - quiesce=: auto (default; quiesce with VMware Tools, fall back to crash-consistent with a warning),
 *   require (fail with QUIESCE_FAILED instead), off (crash-consistent snapshot).
 * - transport=: https (default; datastore file access with Range) or nbd (nbd-helper= serves each
 *   snapshot disk on a Unix socket, see README.md).
 */
export interface VsphereUrl {
  host: string;
  port: number;
  user: string;
  vm: string;
  passwordFile: string | undefined;
  thumbprint: string | undefined;
  quiesce: 'auto' | 'require' | 'off';
  transport: 'https' | 'nbd';
  nbdHelper: string | undefined;
  /** `vsphere://USER@HOST:PORT/VM`, for messages. */
  display: string;
}

const EXAMPLE = 'vsphere://USER@VCENTER[:PORT]/VM?password-file=PATH[&thumbprint=HEX][&quiesce=auto|require|off][&transport=https|nbd&nbd-helper=PATH]';
const PARAMS = new Set(['password-file', 'thumbprint', 'quiesce', 'transport', 'nbd-helper']);

export function isVsphereUrl(spec: string): boolean {
  return /^vsphere:\/\//i.test(spec);
}

export function parseVsphereUrl(url: string): VsphereUrl {
  const bad = (why: string): CairnError => new CairnError('USAGE', `invalid vSphere URL '${redact(url)}': ${why}; use ${EXAMPLE}`);
  const m = /^vsphere:\/\/([^/?#]*)\/([^?#]*)(?:\?([^#]*))?$/i.exec(url);
  if (!m) throw bad('not of the form vsphere://USER@HOST/VM');
  const [, authority = '', vmPart = '', query] = m;
  const at = authority.lastIndexOf('@');
  if (at < 0) throw bad('no user (USER@HOST)');
  const userInfo = authority.slice(0, at);
  const hostPort = authority.slice(at + 1);
  if (userInfo.includes(':')) {
    throw bad('a password in the URL is not accepted (it would show in process lists and logs); put it in a file named by password-file=PATH (mode 0600) or in CAIRN_VSPHERE_PASSWORD');
  }
  const user = decode(userInfo, 'user', bad);
  if (!user) throw bad('the user is empty');
  const hp = /^(\[[0-9a-f:.]+\]|[^:[\]]+)(?::(\d+))?$/i.exec(hostPort);
  if (!hp) throw bad(`'${hostPort}' is not HOST or HOST:PORT`);
  const host = hp[1]!.replace(/^\[|\]$/g, '').toLowerCase();
  const port = hp[2] === undefined ? 443 : Number(hp[2]);
  if (!(port > 0 && port < 65536)) throw bad(`port ${hp[2]} is out of range`);
  const vm = decode(vmPart, 'VM', bad);
  if (!vm || vm.includes('/')) throw bad('name one VM after the host: its name, its id (vm-NN) or its instance UUID');

  const params = new Map<string, string>();
  for (const part of query ? query.split('&') : []) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (key === 'password') throw bad('a password in the URL is not accepted; put it in a file named by password-file=PATH (mode 0600) or in CAIRN_VSPHERE_PASSWORD');
    if (!PARAMS.has(key)) throw bad(`unknown parameter '${key}'`);
    if (params.has(key)) throw bad(`'${key}' is given twice`);
    params.set(key, decode(eq < 0 ? '' : part.slice(eq + 1), key, bad));
  }
  const quiesce = params.get('quiesce') ?? 'auto';
  if (quiesce !== 'auto' && quiesce !== 'require' && quiesce !== 'off') throw bad(`quiesce=${quiesce} is not auto, require or off`);
  const transport = params.get('transport') ?? 'https';
  if (transport !== 'https' && transport !== 'nbd') throw bad(`transport=${transport} is not https or nbd`);
  const nbdHelper = params.get('nbd-helper');
  if (transport === 'nbd' && !nbdHelper) throw bad('transport=nbd needs nbd-helper=PATH, the program that serves a snapshot disk over NBD');
  if (transport !== 'nbd' && nbdHelper) throw bad('nbd-helper= is only used with transport=nbd');
  const thumbprintText = params.get('thumbprint');
  const hostShown = host.includes(':') ? `[${host}]` : host;
  return {
    host,
    port,
    user,
    vm,
    passwordFile: params.get('password-file') || undefined,
    thumbprint: thumbprintText === undefined ? undefined : parseThumbprint(thumbprintText, `thumbprint= of ${redact(url)}`),
    quiesce,
    transport,
    nbdHelper,
    display: `vsphere://${encodeURIComponent(user).replace(/%40/g, '@')}@${hostShown}${port === 443 ? '' : `:${port}`}/${vm}`,
  };
}

function decode(text: string, what: string, bad: (why: string) => CairnError): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw bad(`the ${what} '${text}' is not valid percent-encoding`);
  }
}

/** The URL without a password that a user may have put in it, for messages. */
function redact(url: string): string {
  return url.replace(/(\/\/[^/@:]*):[^/@]*@/, '$1:***@').replace(/([?&]password=)[^&]*/, '$1***');
}

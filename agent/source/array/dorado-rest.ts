import { request, type Agent } from 'node:https';
import { CairnError, isCairnError } from '../../../shared/errors.js';
import { isTlsTrustError, trustedAgent, untrustedCertificate } from '../../../shared/net/pinned-https.js';

/**
 * The session and request layer of OceanStor Dorado's REST interface (DeviceManager REST API), as
 * Huawei's own clients use it (the Cinder driver's rest_client.py, the CSI driver eSDK_K8S_Plugin):
 *
 *   POST https://HOST:8088/deviceManager/rest/xxxxx/sessions {username, password, scope: "0"[, vstorename]}
 *     -> data {deviceid, iBaseToken, accountstate, ...} and a session cookie
 *   every later call: https://HOST:8088/deviceManager/rest/<deviceid>/<resource>, with the cookie and the
 *     iBaseToken header; the answer is always {"data": ..., "error": {"code": 0, "description": "0"}}
 *   DELETE .../<deviceid>/sessions ends the session.
 *
 * Many numbers come back as strings ("CAPACITY": "2097152"); callers convert. A call answered with
 * -401 (session expired) logs in again once and repeats the call, unless the session was ended
 * (`logout`): from then on every call fails at once and nothing logs in again.
 */

/** Error codes of the array this layer and the driver act on (from Huawei's clients named above). */
export const DoradoCode = {
  UNAUTHORIZED: -401,
  IP_LOCKED: 1077949071,
  USER_OFFLINE: 1077949069,
  OBJECT_NOT_EXIST: 1077948996,
  LUN_NOT_EXIST: 1077936859,
  SNAPSHOT_NOT_EXIST: 1077937880,
  SNAPSHOT_NOT_ACTIVATED: 1077937891,
  NAME_ALREADY_EXISTS: 1077948993,
} as const;

/**
 * Login refusals, as Huawei's CSI driver (eSDK_K8S_Plugin, the OceanStor base client) sorts them:
 * WrongPasswordErrorCodes {1077987870, 1077949081, 1077949061} (user or password incorrect) and
 * AccountBeenLocked {1077949070, 1077987871}; open-eBackup's StorageCommonErrorCode names the same
 * codes (1077949081: user or password wrong, or an LDAP user named like a local one).
 */
const WRONG_CREDENTIALS = new Set([1077987870, 1077949081, 1077949061]);
const ACCOUNT_LOCKED = new Set([1077949070, 1077987871]);

/** account states of a login that must change the password first (Cinder's PWD_EXPIRED, PWD_RESET) */
const PASSWORD_MUST_CHANGE = new Set([3, 4]);

/** An error the array answered with: SOURCE_UNREADABLE (or NOT_FOUND) carrying the array's code and description. */
export class DoradoApiError extends CairnError {
  constructor(
    code: 'SOURCE_UNREADABLE' | 'NOT_FOUND' | 'SOURCE_AUTH_FAILED',
    message: string,
    readonly arrayCode: number,
    readonly description: string,
  ) {
    super(code, message);
  }
}

export function isArrayCode(err: unknown, ...codes: number[]): boolean {
  return err instanceof DoradoApiError && codes.includes(err.arrayCode);
}

export interface DoradoEndpoint {
  host: string;
  port: number;
  user: string;
  password: string;
  /** Log in to this vStore (tenant) rather than the system vStore. */
  vstore?: string;
  /** Normalised certificate thumbprint to trust (parseThumbprint). */
  thumbprint?: string;
}

interface Envelope<T> {
  data?: T;
  error?: { code?: number | string; description?: string; suggestion?: string };
}

const TIMEOUT_MS = 60_000;

export class DoradoSession {
  private deviceId = '';
  private token = '';
  private cookie = '';
  /** Set by logout: no call is sent and no login made after it. */
  private closed = false;
  private ending: Promise<void> | undefined;
  private relogin: Promise<void> | undefined;
  private readonly agent: Agent;
  readonly what: string;

  private constructor(private readonly ep: DoradoEndpoint) {
    this.what = `the OceanStor Dorado array ${ep.host}:${ep.port}`;
    this.agent = trustedAgent({ what: this.what, ...(ep.thumbprint ? { thumbprint: ep.thumbprint } : {}) });
  }

  /** Logs in; SOURCE_AUTH_FAILED when the array refuses the user or password, CERT_UNTRUSTED for its certificate. */
  static async login(ep: DoradoEndpoint): Promise<DoradoSession> {
    const s = new DoradoSession(ep);
    try {
      await s.logIn();
      return s;
    } catch (err) {
      s.agent.destroy();
      throw err;
    }
  }

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }
  post<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>('POST', path, body);
  }
  put<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>('PUT', path, body);
  }
  delete<T>(path: string, body?: unknown): Promise<T> {
    return this.call<T>('DELETE', path, body);
  }

  /** `path` is relative to the device, e.g. '/lun/12'; the answer's data (undefined when there is none). */
  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    this.checkOpen(method, path);
    const token = this.token;
    let env = await this.send<T>(method, `/deviceManager/rest/${this.deviceId}${path}`, body);
    if (codeOf(env) === DoradoCode.UNAUTHORIZED || codeOf(env) === DoradoCode.USER_OFFLINE) {
      // A call still in flight when the session was ended must not open a new one.
      this.checkOpen(method, path);
      // Calls that failed together log in once.
      if (this.token === token) {
        this.relogin ??= this.logIn().finally(() => (this.relogin = undefined));
        await this.relogin;
      }
      this.checkOpen(method, path);
      env = await this.send<T>(method, `/deviceManager/rest/${this.deviceId}${path}`, body);
    }
    const code = codeOf(env);
    if (code !== 0) {
      const description = env.error?.description ?? '';
      const suggestion = env.error?.suggestion ? ` ${env.error.suggestion}` : '';
      throw new DoradoApiError('SOURCE_UNREADABLE', `${this.what}: ${method} ${stripQuery(path)} failed with error ${code} (${description})${suggestion}`, code, description);
    }
    return env.data as T;
  }

  /** Ends the session; later calls fail at once and do not log in again. Never throws; a second call waits for the first. */
  logout(): Promise<void> {
    this.ending ??= this.end();
    return this.ending;
  }

  private async end(): Promise<void> {
    this.closed = true;
    if (this.deviceId) await this.send('DELETE', `/deviceManager/rest/${this.deviceId}/sessions`).catch(() => undefined);
    this.deviceId = '';
    this.agent.destroy();
  }

  private checkOpen(method: string, path: string): void {
    if (this.closed) {
      throw new CairnError('SOURCE_UNREADABLE', `${this.what}: ${method} ${stripQuery(path)} given up: the session with the array was ended (the backup is being stopped)`);
    }
  }

  private async logIn(): Promise<void> {
    this.cookie = '';
    this.token = '';
    const body: Record<string, string> = { username: this.ep.user, password: this.ep.password, scope: '0' };
    if (this.ep.vstore) body.vstorename = this.ep.vstore;
    const env = await this.send<{ deviceid?: string; iBaseToken?: string; accountstate?: number | string }>('POST', '/deviceManager/rest/xxxxx/sessions', body);
    const code = codeOf(env);
    const who = `${this.what} refused the login of user '${this.ep.user}'${this.ep.vstore ? ` in vStore '${this.ep.vstore}'` : ''}: error ${code} (${env.error?.description ?? ''})`;
    const refused = (what: string): DoradoApiError => new DoradoApiError('SOURCE_AUTH_FAILED', `${who}; ${what}`, code, env.error?.description ?? '');
    if (WRONG_CREDENTIALS.has(code) || code === DoradoCode.UNAUTHORIZED) throw refused('check the user and password (password-file= or CAIRN_DORADO_PASSWORD)');
    if (ACCOUNT_LOCKED.has(code)) throw refused('the account is locked: unlock it on the array or wait until the lock ends');
    if (code === DoradoCode.IP_LOCKED) throw refused("this machine's address is locked out after failed logins: unlock it on the array or wait until the lock ends");
    if (code !== 0 || !env.data?.deviceid || !env.data.iBaseToken) {
      throw new DoradoApiError('SOURCE_UNREADABLE', `${this.what}: login failed with error ${code} (${env.error?.description ?? 'no session in the answer'})`, code, env.error?.description ?? '');
    }
    this.deviceId = env.data.deviceid;
    this.token = env.data.iBaseToken;
    if (this.closed) {
      // logout ran while this login was on its way: end the session it made too.
      await this.send('DELETE', `/deviceManager/rest/${this.deviceId}/sessions`).catch(() => undefined);
      this.deviceId = '';
      this.agent.destroy();
      throw new CairnError('SOURCE_UNREADABLE', `${this.what}: the session was ended (the backup is being stopped) while logging in again`);
    }
    if (PASSWORD_MUST_CHANGE.has(Number(env.data.accountstate))) {
      await this.logout();
      throw new DoradoApiError('SOURCE_AUTH_FAILED', `${this.what}: the password of user '${this.ep.user}' has expired or was reset; change it on the array first`, code, '');
    }
  }

  private send<T>(method: string, path: string, body?: unknown): Promise<Envelope<T>> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { 'Content-Type': 'application/json', Accept: 'application/json' };
    if (this.token) headers.iBaseToken = this.token;
    if (this.cookie) headers.Cookie = this.cookie;
    if (payload) headers['Content-Length'] = String(payload.length);
    return new Promise<Envelope<T>>((resolve, reject) => {
      const req = request({ host: this.ep.host, port: this.ep.port, method, path, headers, agent: this.agent, timeout: TIMEOUT_MS }, (res) => {
        const cookies = res.headers['set-cookie'];
        if (cookies?.length) this.cookie = cookies.map((c) => c.split(';')[0]).join('; ');
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          try {
            const env = JSON.parse(text) as Envelope<T>;
            if (typeof env !== 'object' || env === null || typeof env.error !== 'object') throw new Error('no error object');
            resolve(env);
          } catch {
            reject(new CairnError('SOURCE_UNREADABLE', `${this.what}: ${method} ${stripQuery(path)} answered HTTP ${res.statusCode} without the REST envelope (is this the DeviceManager REST port?)`));
          }
        });
      });
      req.on('timeout', () => req.destroy(new CairnError('SOURCE_UNREADABLE', `${this.what}: ${method} ${stripQuery(path)} got no answer within ${TIMEOUT_MS / 1000} s`, { retryable: true })));
      req.on('error', (err) => {
        if (isCairnError(err)) reject(err);
        else if (isTlsTrustError(err)) untrustedCertificate(err, this.ep.host, this.ep.port, this.what, 'thumbprint=HEX in the dorado:// URL').then(reject, reject);
        else reject(new CairnError('SOURCE_UNREADABLE', `cannot reach ${this.what}: ${(err as Error).message}`, { cause: err, retryable: true }));
      });
      req.end(payload);
    });
  }
}

function codeOf(env: Envelope<unknown>): number {
  return Number(env.error?.code ?? -1);
}

function stripQuery(path: string): string {
  const q = path.indexOf('?');
  return q < 0 ? path : path.slice(0, q);
}

/** `filter=FIELD::value` (exact match) query part, the form Huawei's clients use to find objects by name. */
export function exact(field: string, value: string): string {
  return `filter=${field}::${encodeURIComponent(value)}`;
}

/** Reads every page of a list resource (`range=[from-to]`, 100 objects a call). */
export async function listAll<T>(session: DoradoSession, path: string): Promise<T[]> {
  const PAGE = 100;
  const out: T[] = [];
  const sep = path.includes('?') ? '&' : '?';
  for (let from = 0; ; from += PAGE) {
    const page = (await session.get<T[] | undefined>(`${path}${sep}range=[${from}-${from + PAGE}]`)) ?? [];
    out.push(...page);
    if (page.length < PAGE) return out;
  }
}

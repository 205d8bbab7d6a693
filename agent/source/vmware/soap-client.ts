import { request, type Agent } from 'node:https';
import { CairnError, isCairnError } from '../../../shared/errors.js';
import { isTlsTrustError, trustedAgent, untrustedCertificate } from '../../../shared/net/pinned-https.js';
import { child, escapeXml, parseXml, type XmlElement } from './xml.js';

/**
 * vim25 SOAP over HTTPS (the vSphere Web Services API), as vCenter and ESXi serve it at /sdk:
 * one POST per method call, a document/literal body in namespace urn:vim25, the session kept in the
 * `vmware_soap_session` cookie that SessionManager.Login sets. The same connection pool and cookie
 * serve datastore file access (/folder/...), which vSphere authorises by that session.
 *
 * Contract: `call` returns the method's response element, or throws a VimFault for a SOAP fault
 * (the caller decides what a fault means) and a CairnError for everything else: CERT_UNTRUSTED for
 * a certificate neither the system CAs nor the pinned thumbprint vouch for (nothing is sent to such
 * a server), SOURCE_UNREADABLE for a server that cannot be reached or does not speak vim25.
 */

/** A managed object reference: type (VirtualMachine, Task, ...) and its id (vm-42, task-7). */
export interface MoRef {
  type: string;
  value: string;
}

/** A SOAP fault from the server: `faultType` is the vim25 fault's type (InvalidLogin, FileFault, ...). */
export class VimFault extends Error {
  constructor(
    readonly method: string,
    readonly faultType: string,
    readonly text: string,
    readonly detail: XmlElement | undefined,
  ) {
    super(`${method}: ${faultType}${text ? `: ${text}` : ''}`);
    this.name = 'VimFault';
  }
}

export interface SoapEndpoint {
  host: string;
  port: number;
  /** Normalised pinned thumbprint (parseThumbprint), if the user gave one. */
  thumbprint?: string;
}

/** The API release the requests are written against (SOAPAction urn:vim25/VERSION). */
const API_VERSION = '6.7';
const MAX_SOCKETS = 8;

export function moRefXml(tag: string, ref: MoRef): string {
  return `<${tag} type="${escapeXml(ref.type)}">${escapeXml(ref.value)}</${tag}>`;
}

export function parseMoRef(el: XmlElement | undefined): MoRef | undefined {
  if (!el) return undefined;
  return { type: el.attrs['type'] ?? '', value: el.text.trim() };
}

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export class SoapClient {
  private cookie: string | undefined;
  private readonly agent: Agent;
  /** 'vCenter HOST:PORT', for messages. */
  readonly what: string;

  constructor(readonly endpoint: SoapEndpoint) {
    this.what = `vCenter ${endpoint.host}:${endpoint.port}`;
    this.agent = trustedAgent({ thumbprint: endpoint.thumbprint, what: this.what }, { maxSockets: MAX_SOCKETS });
  }

  /** Calls `method` on `self` with `params` (XML of the parameters after _this, escaped by the caller); returns the response element. */
  async call(method: string, self: MoRef, params = ''): Promise<XmlElement> {
    const envelope =
      '<?xml version="1.0" encoding="UTF-8"?>' +
      '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">' +
      `<soapenv:Body><${method} xmlns="urn:vim25">${moRefXml('_this', self)}${params}</${method}></soapenv:Body></soapenv:Envelope>`;
    const res = await this.send('POST', '/sdk', {
      'content-type': 'text/xml; charset=utf-8',
      soapaction: `urn:vim25/${API_VERSION}`,
    }, Buffer.from(envelope, 'utf8'));
    const setCookie = res.headers['set-cookie'];
    for (const c of Array.isArray(setCookie) ? setCookie : setCookie ? [setCookie] : []) {
      const m = /^(vmware_soap_session=[^;]*)/.exec(c);
      if (m) this.cookie = m[1];
    }
    let doc: XmlElement;
    try {
      doc = parseXml(res.body.toString('utf8'));
    } catch (err) {
      throw new CairnError('SOURCE_UNREADABLE', `${this.what} answered ${method} with HTTP ${res.status} and no SOAP message (${(err as Error).message}); is this a vCenter or ESXi /sdk endpoint?`, { cause: err });
    }
    const body = child(doc, 'Body');
    const fault = child(body, 'Fault');
    if (fault) {
      const detail = child(fault, 'detail');
      const vimFault = detail?.children[0];
      const faultType = vimFault?.type ?? vimFault?.name.replace(/Fault$/, '') ?? 'SystemError';
      throw new VimFault(method, faultType, (child(fault, 'faultstring')?.text ?? '').trim(), vimFault);
    }
    const response = child(body, `${method}Response`);
    if (!response) {
      throw new CairnError('SOURCE_UNREADABLE', `${this.what} answered ${method} with HTTP ${res.status} but no ${method}Response; is this a vCenter or ESXi /sdk endpoint?`);
    }
    return response;
  }

  /**
   * GETs a datastore file (`/folder/PATH?dcPath=DC&dsName=DS`), `length` bytes at `offset` (HTTP Range),
   * into `target`; returns the bytes received (fewer only at the end of the file). At most `target.length`
   * bytes of a body are ever held: a server that ignores Range (HTTP 200) is read only that far, and
   * at a non-zero offset is an error, never a whole multi-gigabyte extent in memory.
   */
  async readDatastoreFile(path: string, offset: number, target: Buffer): Promise<number> {
    const res = await this.send('GET', path, { range: `bytes=${offset}-${offset + target.length - 1}` }, undefined, target.length);
    const where = `${decodeURIComponent(path.split('?')[0]!)} at ${this.what}, bytes ${offset}-${offset + target.length - 1}`;
    if (res.status === 206) {
      // The part must start where it was asked to: a proxy answering another range would give wrong data.
      const range = /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
      if (!range || Number(range[1]) !== offset) {
        throw new CairnError('SOURCE_UNREADABLE', `reading ${where}: the server answered another byte range (Content-Range: ${String(res.headers['content-range'] ?? 'none')}); is a proxy in between? Connect to vCenter directly, or use transport=nbd`);
      }
    }
    if (res.status === 206 || (res.status === 200 && offset === 0)) {
      return res.body.copy(target, 0, 0, Math.min(res.body.length, target.length));
    }
    if (res.status === 200) {
      throw new CairnError(
        'SOURCE_UNREADABLE',
        `reading ${where}: the server ignored the byte range and sent the whole file (HTTP 200 instead of 206); is a proxy in between that drops Range headers? Connect to vCenter directly, or use transport=nbd`,
      );
    }
    if (res.status === 416) return 0;
    if (res.status === 401 || res.status === 403) {
      throw new CairnError('SOURCE_AUTH_FAILED', `reading ${where}: HTTP ${res.status}; the user needs the privilege Datastore > Browse datastore (or the session ended: vCenter drops idle sessions after 30 minutes by default)`);
    }
    if (res.status === 404) throw new CairnError('NOT_FOUND', `reading ${where}: the file does not exist (HTTP 404)`);
    const text = res.body.toString('utf8', 0, Math.min(res.body.length, 200)).trim();
    throw new CairnError('SOURCE_UNREADABLE', `reading ${where}: HTTP ${res.status}${text ? ` (${text})` : ''}`, { retryable: res.status >= 500 });
  }

  /** Drops the connections (the session is ended by SessionManager.Logout, not here). Idempotent. */
  close(): void {
    this.agent.destroy();
  }

  /** One request; the response body is cut off (and its connection dropped) after `maxBody` bytes. */
  private send(method: string, path: string, headers: Record<string, string>, body?: Buffer, maxBody = Infinity): Promise<RawResponse> {
    const { host, port } = this.endpoint;
    return new Promise<RawResponse>((resolve, reject) => {
      const req = request(
        {
          host,
          port,
          method,
          path,
          agent: this.agent,
          servername: /^[\d.]+$|:/.test(host) ? undefined : host,
          headers: { ...headers, ...(this.cookie ? { cookie: this.cookie } : {}), ...(body ? { 'content-length': String(body.length) } : {}) },
          timeout: 300_000,
        },
        (res) => {
          const parts: Buffer[] = [];
          let held = 0;
          const done = () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) });
          res.on('data', (d: Buffer) => {
            parts.push(d);
            held += d.length;
            // A 206 ends by itself at the range's end (keeping the connection); anything longer is cut off.
            if (held > maxBody || (held === maxBody && res.statusCode !== 206)) {
              done();
              res.destroy();
            }
          });
          res.on('end', done);
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('no answer within 300 s')));
      req.on('error', reject);
      req.end(body);
    }).catch(async (err: unknown) => {
      if (isCairnError(err)) throw err;
      if (isTlsTrustError(err)) throw await untrustedCertificate(err, host, port, this.what, "'thumbprint=HEX' in the vsphere:// URL");
      const code = (err as NodeJS.ErrnoException).code;
      const why =
        code === 'ECONNREFUSED'
          ? 'connection refused; check the host name and port'
          : code === 'ENOTFOUND' || code === 'EAI_AGAIN'
            ? 'the host name does not resolve'
            : (err as Error).message;
      throw new CairnError('SOURCE_UNREADABLE', `cannot reach ${this.what} (${method} ${path.split('?')[0]}): ${why}`, { cause: err, retryable: true });
    });
  }
}

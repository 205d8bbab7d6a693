/**
 * The little XML that vim25 SOAP needs: escaping text for requests, and a parser for responses
 * into a tree of elements. Namespace prefixes are dropped from element names (vim25 has one
 * namespace for its elements); `xsi:type` is kept as `type` because vim25 uses it for polymorphic
 * values (a VirtualDevice that is a VirtualDisk, a fault that is an InvalidLogin). No DTDs,
 * processing instructions are skipped, CDATA is text.
 */

export interface XmlElement {
  /** Local name, without prefix. */
  name: string;
  /** The xsi:type attribute without prefix, if any. */
  type: string | undefined;
  attrs: Record<string, string>;
  children: XmlElement[];
  /** Text content directly inside the element (entities decoded). */
  text: string;
}

export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function decode(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#\d+|lt|gt|amp|quot|apos);/gi, (_, e: string) => {
    if (e[0] === '#') return String.fromCodePoint(e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
    return ({ lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" } as Record<string, string>)[e.toLowerCase()]!;
  });
}

const localName = (qname: string): string => qname.slice(qname.indexOf(':') + 1);

/** Parses a document; throws an Error (not a CairnError: the caller says where it came from) when it is not well formed. */
export function parseXml(doc: string): XmlElement {
  const root: XmlElement = { name: '#document', type: undefined, attrs: {}, children: [], text: '' };
  const stack: XmlElement[] = [root];
  const tag = /<(\/?)([A-Za-z_][\w.:-]*)((?:\s+[\w.:-]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>|<!\[CDATA\[([\s\S]*?)\]\]>|<\?[\s\S]*?\?>|<!--[\s\S]*?-->|([^<]+)/gy;
  const attr = /([\w.:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;
  let m: RegExpExecArray | null;
  let at = 0;
  while (at < doc.length) {
    tag.lastIndex = at;
    m = tag.exec(doc);
    if (!m) throw new Error(`malformed XML at offset ${at}`);
    at = tag.lastIndex;
    const top = stack[stack.length - 1]!;
    if (m[6] !== undefined) top.text += decode(m[6]);
    else if (m[5] !== undefined) top.text += m[5];
    else if (m[2] !== undefined) {
      const name = localName(m[2]);
      if (m[1]) {
        if (stack.length < 2 || top.name !== name) throw new Error(`unexpected </${m[2]}> at offset ${at}`);
        stack.pop();
        continue;
      }
      const attrs: Record<string, string> = {};
      for (const a of (m[3] ?? '').matchAll(attr)) attrs[a[1]!] = decode(a[2] ?? a[3] ?? '');
      const xsiType = Object.entries(attrs).find(([k]) => k === 'xsi:type' || k.endsWith(':type'))?.[1];
      const el: XmlElement = { name, type: xsiType === undefined ? undefined : localName(xsiType), attrs, children: [], text: '' };
      top.children.push(el);
      if (!m[4]) stack.push(el);
    }
  }
  if (stack.length !== 1) throw new Error(`unclosed <${stack[stack.length - 1]!.name}>`);
  const [doc0] = root.children;
  if (!doc0) throw new Error('no root element');
  return doc0;
}

/** The first child named `name`, if any. */
export function child(el: XmlElement | undefined, name: string): XmlElement | undefined {
  return el?.children.find((c) => c.name === name);
}

export function childrenNamed(el: XmlElement | undefined, name: string): XmlElement[] {
  return el ? el.children.filter((c) => c.name === name) : [];
}

/** Text of the first child named `name`, trimmed; undefined when there is none. */
export function childText(el: XmlElement | undefined, name: string): string | undefined {
  const c = child(el, name);
  return c === undefined ? undefined : c.text.trim();
}

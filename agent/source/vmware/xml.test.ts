import { describe, expect, it } from 'vitest';
import { child, childrenNamed, childText, escapeXml, parseXml } from './xml.js';

describe('vim25 XML', () => {
  it('parses a SOAP response: prefixes dropped, xsi:type kept, entities decoded', () => {
    const doc = parseXml(
      '<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">' +
        '<soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-42</obj>' +
        '<propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice"><VirtualDevice xsi:type="VirtualDisk"><key>2000</key>' +
        '<backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds 1] a &amp; b/c.vmdk</fileName><changeId>52 1e/7</changeId></backing><empty/></VirtualDevice>' +
        '</val></propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>',
    );
    expect(doc.name).toBe('Envelope');
    const objects = child(child(child(child(doc, 'Body'), 'RetrievePropertiesExResponse'), 'returnval'), 'objects');
    expect(child(objects, 'obj')).toMatchObject({ attrs: { type: 'VirtualMachine' }, text: 'vm-42' });
    const val = child(child(objects, 'propSet'), 'val')!;
    expect(val.type).toBe('ArrayOfVirtualDevice');
    const [disk] = childrenNamed(val, 'VirtualDevice');
    expect(disk!.type).toBe('VirtualDisk');
    expect(child(disk, 'backing')!.type).toBe('VirtualDiskFlatVer2BackingInfo');
    expect(childText(child(disk, 'backing'), 'fileName')).toBe('[ds 1] a & b/c.vmdk');
    expect(child(disk, 'empty')).toMatchObject({ children: [], text: '' });
  });

  it('refuses malformed documents and escapes text', () => {
    expect(() => parseXml('<a><b></a>')).toThrow();
    expect(() => parseXml('<a>')).toThrow();
    expect(escapeXml(`<x a="1" b='2'>&`)).toBe('&lt;x a=&quot;1&quot; b=&apos;2&apos;&gt;&amp;');
  });
});

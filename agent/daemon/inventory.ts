/**
 * What the agent tells the control plane about its machine: host, OS, CPUs, memory, disks and
 * network interfaces.
 *
 * Contract: collectInventory never rejects and settles within about `timeoutMs` (default 2.5 s).
 * Each part is collected on its own; a part that fails or is late gives its fallback (Node's `os`
 * module for host, OS, CPUs and memory; an empty list for disks and interfaces), so one broken tool
 * (lsblk missing, a hung smartctl) costs only that part. The hostname and memory always come from
 * Node's `os` module, which answers at once.
 */
import os from 'node:os';

import si from 'systeminformation';

import type { Inventory } from './status.js';

export interface InventoryOptions {
  /** Budget for each part, all run at once; default 2500 ms. */
  timeoutMs?: number;
}

/** `work`'s value, or `fallback` if it rejects or takes longer than `ms`. */
async function within<T>(ms: number, work: () => Promise<T>, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms);
    timer.unref();
  });
  try {
    return await Promise.race([work().catch(() => fallback), late]);
  } finally {
    clearTimeout(timer);
  }
}

function osFallback(): Inventory['os'] {
  return { platform: os.platform(), distro: os.type(), release: os.release(), kernel: os.release(), arch: os.arch() };
}

function cpuFallback(): Inventory['cpus'] {
  const cpus = os.cpus();
  const count = cpus.length || os.availableParallelism();
  return { model: cpus[0]?.model.trim() ?? '', cores: count, physicalCores: count };
}

async function osInfo(): Promise<Inventory['os']> {
  const o = await si.osInfo();
  const fb = osFallback();
  return {
    platform: o.platform || fb.platform,
    distro: o.distro || fb.distro,
    release: o.release || fb.release,
    kernel: o.kernel || fb.kernel,
    arch: o.arch || fb.arch,
  };
}

async function cpuInfo(): Promise<Inventory['cpus']> {
  const c = await si.cpu();
  const fb = cpuFallback();
  const model = [c.manufacturer, c.brand].filter(Boolean).join(' ').trim();
  return { model: model || fb.model, cores: c.cores || fb.cores, physicalCores: c.physicalCores || fb.physicalCores };
}

/** RAM disks, loop devices and zram are not disks worth reporting. */
const notADisk = /^(?:\/dev\/)?(?:loop|ram|zram)\d*$/;

async function disks(): Promise<Inventory['disks']> {
  const layout = await si.diskLayout().catch(() => []);
  if (layout.length > 0) {
    return layout
      .filter((d) => !notADisk.test(d.device))
      .map((d) => ({ name: d.device || d.name, type: d.type || d.interfaceType || '', sizeBytes: d.size, model: d.name ?? '' }));
  }
  // Virtual machines often have no SMART/DMI data, so diskLayout is empty; lsblk still knows the disks.
  const blocks = await si.blockDevices();
  return blocks
    .filter((b) => b.type === 'disk' && !notADisk.test(b.name))
    .map((b) => ({
      name: os.platform() === 'linux' && !b.name.startsWith('/') ? `/dev/${b.name}` : b.name,
      type: b.physical || b.protocol || '',
      sizeBytes: b.size,
      model: b.model ?? '',
    }));
}

/**
 * Non-loopback interfaces from systeminformation (which knows MAC addresses and which are
 * internal), with every address from Node's `os` (systeminformation keeps one per family).
 */
async function network(): Promise<Inventory['network']> {
  const list = await si.networkInterfaces();
  const ifaces = Array.isArray(list) ? list : [list];
  const addresses = os.networkInterfaces();
  return ifaces
    .filter((n) => !n.internal && n.iface !== 'lo')
    .map((n) => {
      const node = addresses[n.iface] ?? [];
      const ip4 = node.filter((a) => a.family === 'IPv4').map((a) => a.address);
      const ip6 = node.filter((a) => a.family === 'IPv6').map((a) => a.address);
      return {
        iface: n.iface,
        mac: n.mac,
        ip4: ip4.length > 0 ? ip4 : n.ip4 ? [n.ip4] : [],
        ip6: ip6.length > 0 ? ip6 : n.ip6 ? [n.ip6] : [],
      };
    });
}

export async function collectInventory(opts: InventoryOptions = {}): Promise<Inventory> {
  const ms = opts.timeoutMs ?? 2500;
  const [osPart, cpus, diskList, net] = await Promise.all([
    within(ms, osInfo, osFallback()),
    within(ms, cpuInfo, cpuFallback()),
    within(ms, disks, []),
    within(ms, network, []),
  ]);
  return { hostname: os.hostname(), os: osPart, cpus, memoryBytes: os.totalmem(), disks: diskList, network: net };
}

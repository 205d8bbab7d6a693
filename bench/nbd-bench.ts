/**
 * The NBD section of the bench: instant recovery of the bench's latest backup. `cairn serve-nbd`
 * exports it on a Unix socket; a client (Cairn's own NBD client, agent/source/nbd) measures
 *   - time to first byte: from starting `cairn serve-nbd` to the first 4 KiB read at offset 0
 *     (process start, passphrase, index load, listen, connect, handshake, one chunk fetched);
 *   - connect + first 4 KiB read alone, once the server listens;
 *   - random 4 KiB reads, one at a time, at 4 KiB-aligned offsets inside the data extents the
 *     export reports (base:allocation), cold (fresh server, empty cache) and then warm (the same
 *     offsets again): p50 and p99.
 * restic has no block export (`restic mount` is FUSE, file level); its nearest "first byte" is
 * `restic dump` of the image: from starting it to the first byte on its stdout. Random-read latency
 * has no restic equivalent and stays empty.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

import { NbdClient } from '../agent/source/nbd/nbd-client.js';

export interface NbdBenchInput {
  /** How to run cairn: node, [bin/cairn.js], and its environment (passphrase, state dir). */
  cairn?: { file: string; args: string[]; env: NodeJS.ProcessEnv; vault: string; backupId: string };
  /** How to run restic on its local repository, and the image's path inside its snapshot. */
  restic?: { args: string[]; env: NodeJS.ProcessEnv; imagePath: string };
  /** Unix socket path for the server. */
  socket: string;
  /** Random reads per pass (default 300). */
  reads?: number;
  /** Seed of the offsets. */
  seed: number;
  log: (line: string) => void;
}

export interface LatencyPass {
  reads: number;
  p50Ms: number;
  p99Ms: number;
}

export interface NbdBench {
  /** Start of `cairn serve-nbd` to its "listening" line. */
  readyMs?: number;
  /** Start of `cairn serve-nbd` to the first 4 KiB read at offset 0. */
  firstByteMs?: number;
  /** Connect + handshake + first 4 KiB read, the server already listening. */
  connectReadMs?: number;
  cold?: LatencyPass;
  warm?: LatencyPass;
  /** Start of `restic dump` to its first byte on stdout. */
  resticFirstByteMs?: number;
  error?: string;
  resticError?: string;
}

/** Runs the section; failures are recorded, never thrown. */
export async function runNbdBench(input: NbdBenchInput): Promise<NbdBench> {
  const out: NbdBench = {};
  if (input.cairn) {
    try {
      await cairnPass(input, input.cairn, out);
    } catch (err) {
      out.error = (err as Error).message;
      input.log(`nbd: cairn FAILED: ${out.error}`);
    }
  }
  if (input.restic) {
    try {
      out.resticFirstByteMs = await resticFirstByte(input.restic);
      input.log(`nbd: restic dump first byte after ${out.resticFirstByteMs.toFixed(0)} ms`);
    } catch (err) {
      out.resticError = (err as Error).message;
      input.log(`nbd: restic FAILED: ${out.resticError}`);
    }
  }
  return out;
}

async function cairnPass(input: NbdBenchInput, cairn: NonNullable<NbdBenchInput['cairn']>, out: NbdBench): Promise<void> {
  rmSync(input.socket, { force: true });
  const target = { unix: input.socket };
  const t0 = performance.now();
  const server = spawn(cairn.file, [...cairn.args, 'serve-nbd', cairn.backupId, '--vault', cairn.vault, '--listen', `unix:${input.socket}`, '--json'], {
    env: cairn.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    await listening(server);
    out.readyMs = performance.now() - t0;
    let client = await NbdClient.connect(target, { exportName: 'disk0', metaContexts: ['base:allocation'] });
    await client.read(0, 4096);
    out.firstByteMs = performance.now() - t0;
    input.log(`nbd: serve-nbd listening after ${out.readyMs.toFixed(0)} ms, first 4 KiB after ${out.firstByteMs.toFixed(0)} ms`);

    const data = (await client.blockStatus(0, client.size, 'base:allocation')).filter((e) => (e.flags & 2) === 0);
    const offsets = randomOffsets(data, input.reads ?? 300, input.seed);
    out.cold = await pass(client, offsets);
    out.warm = await pass(client, offsets);
    await client.close();
    const t1 = performance.now();
    client = await NbdClient.connect(target, { exportName: 'disk0' });
    await client.read(4096, 4096);
    out.connectReadMs = performance.now() - t1;
    await client.close();
    input.log(
      `nbd: ${offsets.length} random 4 KiB reads: cold p50 ${out.cold.p50Ms.toFixed(2)} ms p99 ${out.cold.p99Ms.toFixed(2)} ms, ` +
        `warm p50 ${out.warm.p50Ms.toFixed(2)} ms p99 ${out.warm.p99Ms.toFixed(2)} ms`,
    );
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => (server.exitCode !== null ? r(undefined) : server.once('close', r)));
  }
}

function listening(server: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    server.stderr!.on('data', (d) => (stderr += d));
    server.stdout!.on('data', (d) => {
      stdout += d;
      if (stdout.includes('\n')) resolve();
    });
    server.once('close', (code) => reject(new Error(`cairn serve-nbd exited ${code}: ${stderr.trim().split('\n').pop() ?? ''}`)));
    server.once('error', reject);
  });
}

async function pass(client: NbdClient, offsets: number[]): Promise<LatencyPass> {
  const times: number[] = [];
  for (const o of offsets) {
    const t = performance.now();
    await client.read(o, 4096);
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  const at = (q: number) => times[Math.min(times.length - 1, Math.floor(q * times.length))]!;
  return { reads: times.length, p50Ms: at(0.5), p99Ms: at(0.99) };
}

/** 4 KiB-aligned offsets spread over the data extents (weighted by length), from a fixed seed. */
function randomOffsets(extents: { offset: number; length: number }[], n: number, seed: number): number[] {
  const blocks: { first: number; count: number }[] = [];
  let total = 0;
  for (const e of extents) {
    const first = Math.ceil(e.offset / 4096);
    const count = Math.floor((e.offset + e.length) / 4096) - first;
    if (count > 0) {
      blocks.push({ first, count });
      total += count;
    }
  }
  if (total === 0) throw new Error('the export has no data extents');
  let s = seed >>> 0 || 1;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s / 2 ** 32);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    let k = Math.floor(next() * total);
    for (const b of blocks) {
      if (k < b.count) {
        out.push((b.first + k) * 4096);
        break;
      }
      k -= b.count;
    }
  }
  return out;
}

function resticFirstByte(restic: NonNullable<NbdBenchInput['restic']>): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('restic', [...restic.args, 'dump', 'latest', restic.imagePath], { env: restic.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let done = false;
    child.stderr.on('data', (d) => (stderr += d));
    child.stdout.once('data', () => {
      done = true;
      resolve(performance.now() - t0);
      child.kill('SIGTERM');
    });
    child.once('error', reject);
    child.once('close', (code) => {
      if (!done) reject(new Error(`restic dump exited ${code} before writing: ${stderr.trim().split('\n').pop() ?? ''}`));
    });
  });
}

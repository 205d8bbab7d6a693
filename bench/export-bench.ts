/**
 * The export section of the bench: the latest backup of the bench's local vault exported as a
 * cloud image into a bucket of the bench's S3 server (`cairn restore … --to s3://…/disk.qcow2` and
 * `.raw`), beside restic's nearest equivalent: `restic dump` of the same image from restic's local
 * repository, piped into the same streaming multipart uploader (shared/store/s3-upload.ts) into the
 * same server — a raw image, since restic has no image formats. Both read their local store and
 * write one object to the same server, straight to its endpoint (not through the counting proxy).
 *
 * The section starts an S3 server of its own once the backup section's server has stopped: a raw
 * image of the 6 GiB disk is 6 GiB in the server's RAM (memstore; its OSD grows by about twice what
 * it stores). Each object is deleted once measured, and the next export waits until radosgw's
 * garbage collector has had time to free it (it runs every 60 s on objects deleted 60 s before).
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';

import { CreateBucketCommand, DeleteObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';

import { startS3Server } from '../test/support/s3-server.js';

import { S3Store } from '../shared/store/s3-store.js';
import { S3Upload } from '../shared/store/s3-upload.js';

export const EXPORT_BUCKET = 'bench-export';

/** After a delete, radosgw frees the data within gc obj min wait + gc processor period (60 s + 60 s). */
const GC_WAIT_MS = 130_000;
const GiB = 1024 ** 3;

export interface ExportBenchInput {
  /** How to run cairn: node, [bin/cairn.js], and its environment (passphrase, state dir). */
  cairn?: { file: string; args: string[]; env: NodeJS.ProcessEnv; vault: string; backupId: string };
  /** How to run restic on its local repository, and the image's path inside its snapshot. */
  restic?: { args: string[]; env: NodeJS.ProcessEnv; imagePath: string };
  log: (line: string) => void;
}

export interface ExportRun {
  /** What ran, e.g. "cairn restore --to s3://bench-export/cairn.qcow2". */
  what: string;
  format: 'qcow2' | 'raw';
  wallMs: number;
  /** The disk's logical size (the image's virtual size). */
  diskBytes: number;
  /** The object's size, as the server reports it. */
  objectBytes: number;
  error?: string;
}

export interface ExportBench {
  cairnQcow2?: ExportRun;
  cairnRaw?: ExportRun;
  resticRaw?: ExportRun;
}

/** Runs the exports one after the other; a failure is recorded in its run, never thrown. */
export async function runExportBench(input: ExportBenchInput, diskBytes: number): Promise<ExportBench> {
  const memoryBytes = Math.max(4 * GiB, Math.ceil((diskBytes * 1.25 + GiB) / 2 ** 20) * 2 ** 20);
  input.log(`export: starting an S3 server of its own (memstore of ${(memoryBytes / GiB).toFixed(1)} GiB)`);
  const server = await startS3Server({ memoryBytes, log: (line) => line.startsWith('[s3-server]') && input.log(line) });
  const client = new S3Client({
    endpoint: server.endpoint,
    region: server.region,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
  });
  try {
    // Small disks: every object fits at once and no export needs to wait for the collector.
    const mustWait = 3.3 * diskBytes + GiB / 2 > memoryBytes;
    return await exportAll(input, diskBytes, server, client, mustWait);
  } finally {
    client.destroy();
    await server.stop();
  }
}

async function exportAll(
  input: ExportBenchInput,
  diskBytes: number,
  server: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string },
  client: S3Client,
  mustWait: boolean,
): Promise<ExportBench> {
  await client.send(new CreateBucketCommand({ Bucket: EXPORT_BUCKET }));
  const url = (key: string): string =>
    `s3://${EXPORT_BUCKET}/${key}?endpoint=${encodeURIComponent(server.endpoint)}&region=${server.region}&path-style=true`;
  const out: ExportBench = {};
  let stored = false;
  /** Size of the object, which is then deleted; the next export waits for the server to free it. */
  const measureAndDelete = async (key: string): Promise<number> => {
    const size = (await client.send(new HeadObjectCommand({ Bucket: EXPORT_BUCKET, Key: key }))).ContentLength ?? 0;
    await client.send(new DeleteObjectCommand({ Bucket: EXPORT_BUCKET, Key: key }));
    stored = true;
    return size;
  };
  const waitForGc = async (): Promise<void> => {
    if (!stored || !mustWait) return;
    input.log(`export: waiting ${GC_WAIT_MS / 1000} s for radosgw to free the last object (untimed)`);
    await new Promise((r) => setTimeout(r, GC_WAIT_MS));
    stored = false;
  };
  const s3Env = { AWS_ACCESS_KEY_ID: server.accessKeyId, AWS_SECRET_ACCESS_KEY: server.secretAccessKey, AWS_REGION: server.region };

  if (input.cairn) {
    const c = input.cairn;
    for (const format of ['qcow2', 'raw'] as const) {
      await waitForGc();
      const key = `cairn.${format}`;
      const what = `cairn restore ${c.backupId} --to s3://${EXPORT_BUCKET}/${key}`;
      input.log(`export: ${what}`);
      const start = performance.now();
      const r = await runToEnd(c.file, [...c.args, 'restore', c.backupId, '--vault', c.vault, '--to', url(key), '--json'], { ...c.env, ...s3Env });
      const wallMs = performance.now() - start;
      const run: ExportRun = { what, format, wallMs, diskBytes, objectBytes: 0 };
      if (r.code !== 0) run.error = `${what} exited ${r.code}: ${r.stderr.trim().split('\n').pop() ?? ''}`;
      else run.objectBytes = await measureAndDelete(key);
      if (format === 'qcow2') out.cairnQcow2 = run;
      else out.cairnRaw = run;
    }
  }

  if (input.restic) {
    const rs = input.restic;
    const key = 'restic-dump.raw';
    const what = `restic dump latest ${rs.imagePath} | multipart upload to s3://${EXPORT_BUCKET}/${key}`;
    await waitForGc();
    input.log(`export: ${what}`);
    const store = new S3Store(url(''), { credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey } });
    const start = performance.now();
    const run: ExportRun = { what, format: 'raw', wallMs: 0, diskBytes, objectBytes: 0 };
    let upload: S3Upload | undefined;
    try {
      upload = await S3Upload.start(store, key, { expectedBytes: diskBytes });
      const child = spawn('restic', ['dump', 'latest', rs.imagePath, ...rs.args], { env: rs.env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      for await (const piece of child.stdout) await upload.write(piece as Buffer);
      const code = await closed;
      if (code !== 0) throw new Error(`restic dump exited ${code}: ${stderr.trim().split('\n').pop() ?? ''}`);
      await upload.complete();
      run.wallMs = performance.now() - start;
      run.objectBytes = await measureAndDelete(key);
    } catch (err) {
      await upload?.abort().catch(() => undefined);
      run.error = `${what}: ${(err as Error).message}`;
    } finally {
      store.destroy();
    }
    out.resticRaw = run;
  }
  for (const r of [out.cairnQcow2, out.cairnRaw, out.resticRaw]) if (r?.error) input.log(`export FAILED: ${r.error}`);
  return out;
}

/** MB/s (10^6 bytes per second) of `bytes` moved in `ms`. */
export function mbPerSecond(bytes: number, ms: number): number | null {
  return ms > 0 && bytes > 0 ? bytes / 1e6 / (ms / 1000) : null;
}

function runToEnd(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8192)));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

import { CairnError } from '../../../shared/errors.js';

/** Whether a source names a folder for a file-system backup: `dir:///PATH`. */
export function isDirUrl(spec: string): boolean {
  return /^dir:/i.test(spec);
}

/**
 * The folder of `dir:///PATH` (an absolute path, percent-decoded: `%20` for a space). A host
 * (`dir://host/...`), a relative path, a query or a fragment is refused (USAGE).
 */
export function dirUrlPath(spec: string): string {
  const m = /^dir:\/\/([^/]*)(\/[^?#]*)?([?#].*)?$/i.exec(spec);
  const bad = (why: string): CairnError =>
    new CairnError('USAGE', `invalid folder URL '${spec}': ${why}; write dir:///absolute/path, or give the path with --type filesystem`);
  if (!m) throw bad('not of the form dir:///PATH');
  if (m[1] !== '') throw bad(`a host ('${m[1]}') is not supported, only folders on this machine`);
  if (m[3] !== undefined) throw bad('a query or fragment has no meaning here');
  const path = m[2] ?? '/';
  try {
    return decodeURIComponent(path);
  } catch {
    throw bad('it has an invalid %-escape');
  }
}

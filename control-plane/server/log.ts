/** Where the control plane reports what it does; the program's main.ts decides where that goes. */
export type Log = (level: 'info' | 'warn' | 'error', message: string) => void;

/** Warnings and errors to stderr; the default when no log is given. */
export const stderrLog: Log = (level, message) => {
  if (level !== 'info') process.stderr.write(`cairn control plane ${level}: ${message}\n`);
};

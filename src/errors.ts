// Typed control-plane errors. Data-plane problems are never errors: they are drop counters.

/** A configuration problem: names the file, the key path and what to do. */
export class ConfigError extends Error {
  readonly code = 'ECONFIG';
  constructor(
    readonly file: string,
    readonly key: string,
    readonly problem: string,
  ) {
    super(`${file}: ${key ? `${key}: ` : ''}${problem}`);
  }
}

/** A failure the operator can fix (permissions, port in use...): message says what to do. */
export class OperatorError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

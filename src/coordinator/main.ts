// A standalone entry for the commands of this module (`node --import tsx src/coordinator/main.ts vm list`),
// used by tests that run the CLI inside network namespaces. `homewire` itself dispatches to cli.ts.
import { ConfigError, OperatorError } from '../errors.ts';
import { runCoordinatorCli } from './cli.ts';

runCoordinatorCli(process.argv.slice(2)).catch((err) => {
  const known = err instanceof ConfigError || err instanceof OperatorError;
  process.stderr.write(`homewire: ${known ? err.message : err?.stack ?? err}\n`);
  process.exit(1);
});

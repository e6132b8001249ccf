#!/usr/bin/env node
// The homewire executable: TypeScript sources run through tsx's loader (resolved from this project).
import { register } from 'tsx/esm/api';

register();
await import('../src/cli.ts');

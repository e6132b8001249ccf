#!/usr/bin/env node
// The homewire executable: TypeScript sources run through tsx's loader (resolved from this project).
import v8 from 'node:v8';
import { register } from 'tsx/esm/api';

if (process.env.HOMEWIRE_V8_FLAGS) v8.setFlagsFromString(process.env.HOMEWIRE_V8_FLAGS);
register();
await import('../src/cli.ts');

// The VM state machine, in one table. Every state change goes through transition(); an operation that the
// current state does not allow is refused with a 409 that names the state and what would be allowed.
//
//   defined ──start──▶ starting ──ok──▶ running ──migrate──▶ migrating ──ok / rolled back──▶ running
//      │                  └──error──▶ failed ◀──crash── running       └──source lost──▶ failed
//      └─delete           running ──stop──▶ stopped ──start──▶ starting;  failed ──start/stop/delete
import { ApiError, type VmRecord, type VmState } from './types.ts';

const NEXT: Record<VmState, readonly VmState[]> = {
  defined: ['starting'],
  starting: ['running', 'failed'],
  running: ['migrating', 'stopped', 'failed'],
  migrating: ['running', 'failed'],
  stopped: ['starting'],
  failed: ['starting', 'stopped'],
};

export type Operation = 'start' | 'stop' | 'migrate' | 'delete' | 'snapshot';

/** The states each operation may begin from. */
const FROM: Record<Operation, readonly VmState[]> = {
  start: ['defined', 'stopped', 'failed'],
  stop: ['running', 'failed'],
  migrate: ['running'],
  delete: ['defined', 'stopped', 'failed'],
  snapshot: ['running'],
};

const HINT: Partial<Record<VmState, string>> = {
  starting: 'wait until it is running (or failed)',
  migrating: 'wait until the migration ends',
  running: 'stop it first',
  defined: 'start it first',
  stopped: 'start it first',
};

export function canTransition(from: VmState, to: VmState): boolean {
  return NEXT[from].includes(to);
}

/** Throws a 409 invalid_transition if `op` cannot begin in the VM's state. */
export function checkOperation(vm: VmRecord, op: Operation): void {
  if (FROM[op].includes(vm.state)) return;
  const hint = HINT[vm.state] ? `: ${HINT[vm.state]}` : '';
  throw new ApiError(
    409,
    'invalid_transition',
    `vm ${vm.name} is ${vm.state}; ${op} is allowed only when it is ${FROM[op].join(', ')}${hint}`,
  );
}

/** A copy of the VM in its next state; throws if the table does not allow the change (a coordinator bug). */
export function transition(vm: VmRecord, to: VmState, change: Partial<VmRecord> = {}, now = new Date()): VmRecord {
  if (!canTransition(vm.state, to)) {
    throw new ApiError(409, 'invalid_transition', `vm ${vm.name}: ${vm.state} → ${to} is not a valid transition`);
  }
  // Uptime counts from the boot, and a migration keeps it.
  const boot = to === 'running' && vm.state === 'starting' ? { started_at: now.toISOString() } : {};
  return { ...vm, ...change, ...boot, state: to, updated_at: now.toISOString(), generation: vm.generation + 1 };
}

/** States in which a VM holds capacity on its host (and, migrating, on its target too). */
export function holdsCapacity(state: VmState): boolean {
  return state === 'starting' || state === 'running' || state === 'migrating';
}

export const VM_STATES: readonly VmState[] = Object.keys(NEXT) as VmState[];

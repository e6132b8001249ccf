// Sliding replay window after RFC 6479: a ring of 32-bit words, so advancing the window clears whole words
// instead of shifting a bitmap. Checked only after a packet has been authenticated (a forged counter must
// not move the window).
import { REPLAY_WINDOW_BITS, REPLAY_WORD_BITS } from '../constants.ts';

const WORDS = REPLAY_WINDOW_BITS / REPLAY_WORD_BITS;
/** Counters this far behind the highest one seen are still judged individually. */
export const REPLAY_WINDOW_SIZE = REPLAY_WINDOW_BITS - REPLAY_WORD_BITS;
/** A keypair's shared state (Keypair.state): [0] the next counter to send, [1] the highest received. */
export const STATE_SEND = 0;
export const STATE_TOP = 1;

/** Words in the ring (the express path's copy of this logic, native/express.cc, is written for the same). */
export const REPLAY_WORDS = WORDS;

export class ReplayWindow {
  /** The ring and state[STATE_TOP] (the highest counter accepted, -1: none) may live in memory shared with
   *  the express path (native/express.cc), which accepts packets of the same session through the same bits. */
  constructor(
    private readonly ring: Uint32Array = new Uint32Array(WORDS),
    private readonly state: Float64Array = Float64Array.of(0, -1),
  ) {
    state[STATE_TOP] = -1;
  }

  private get top(): number {
    return this.state[STATE_TOP];
  }

  private set top(v: number) {
    this.state[STATE_TOP] = v;
  }

  /** The highest counter accepted so far (-1: none). */
  get highest(): number {
    return this.top;
  }

  /** Marks counter as seen. Returns false if it was seen already or is too old. */
  accept(counter: number): boolean {
    const index = Math.floor(counter / REPLAY_WORD_BITS);
    if (counter > this.top) {
      const current = Math.floor(this.top / REPLAY_WORD_BITS);
      let diff = index - current;
      if (diff > WORDS) diff = WORDS;
      for (let i = 1; i <= diff; i++) this.ring[(current + i) % WORDS] = 0;
      this.top = counter;
    } else if (this.top - counter >= REPLAY_WINDOW_SIZE) {
      return false;
    }
    const word = index % WORDS;
    const bit = 1 << (counter % REPLAY_WORD_BITS);
    if (this.ring[word] & bit) return false;
    this.ring[word] |= bit;
    return true;
  }

  /** True if accept(counter) would succeed, without marking it. */
  wouldAccept(counter: number): boolean {
    if (counter > this.top) return true;
    if (this.top - counter >= REPLAY_WINDOW_SIZE) return false;
    const word = Math.floor(counter / REPLAY_WORD_BITS) % WORDS;
    return (this.ring[word] & (1 << (counter % REPLAY_WORD_BITS))) === 0;
  }
}

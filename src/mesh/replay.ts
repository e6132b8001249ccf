// Sliding replay window after RFC 6479: a ring of 32-bit words, so advancing the window clears whole words
// instead of shifting a bitmap. Checked only after a packet has been authenticated (a forged counter must
// not move the window).
import { REPLAY_WINDOW_BITS, REPLAY_WORD_BITS } from '../constants.ts';

const WORDS = REPLAY_WINDOW_BITS / REPLAY_WORD_BITS;
/** Counters this far behind the highest one seen are still judged individually. */
export const REPLAY_WINDOW_SIZE = REPLAY_WINDOW_BITS - REPLAY_WORD_BITS;

export class ReplayWindow {
  private readonly ring = new Uint32Array(WORDS);
  private top = -1;

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

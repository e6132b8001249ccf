// A byte ring for serial-console scrollback: the last `capacity` bytes of a stream, addressed by absolute
// position (bytes since the stream began), so a reader can ask for "everything after position p" and learn
// whether some of it was already overwritten. Used by the host agent (one per guest) and the coordinator (one
// per watched VM). The ring owns its buffer; read() returns a copy.
export class ByteRing {
  private readonly buf: Buffer;
  /** Absolute position after the last byte written. */
  private endPos = 0;

  constructor(readonly capacity: number) {
    this.buf = Buffer.alloc(capacity);
  }

  get end(): number {
    return this.endPos;
  }

  /** Absolute position of the oldest byte still held. */
  get start(): number {
    return Math.max(0, this.endPos - this.capacity);
  }

  write(chunk: Buffer): void {
    const cap = this.capacity;
    let src = chunk;
    if (src.length > cap) {
      this.endPos += src.length - cap;
      src = src.subarray(src.length - cap);
    }
    const at = this.endPos % cap;
    const first = Math.min(src.length, cap - at);
    src.copy(this.buf, at, 0, first);
    if (first < src.length) src.copy(this.buf, 0, first);
    this.endPos += src.length;
  }

  /** The bytes from max(from, start) to end, and the position they begin at. */
  read(from = 0): { from: number; data: Buffer } {
    const begin = Math.min(Math.max(from, this.start), this.endPos);
    const n = this.endPos - begin;
    const out = Buffer.alloc(n);
    const cap = this.capacity;
    const at = begin % cap;
    const first = Math.min(n, cap - at);
    this.buf.copy(out, 0, at, at + first);
    if (first < n) this.buf.copy(out, first, 0, n - first);
    return { from: begin, data: out };
  }
}

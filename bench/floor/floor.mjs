// One side of bench/floor: node floor.mjs TAP LOCAL_PORT PEER PEER_PORT (run by run.sh inside a namespace).
import { createRequire } from 'node:module';

const [tap, localPort, peer, peerPort] = process.argv.slice(2);
const addon = createRequire(import.meta.url)('./build/Release/floor.node');
addon.start(tap, Number(localPort), peer, Number(peerPort), Buffer.alloc(32, 7));
setInterval(() => {}, 1 << 30); // the polls keep the loop alive; this keeps the process until it is killed

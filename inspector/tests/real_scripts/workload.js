const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
const crypto = require('crypto');
if (isMainThread) {
  const results = [];
  let done = 0;
  for (let n = 0; n < 2; n++) {
    const w = new Worker(__filename, { workerData: n });
    w.on('message', (m) => {
      results[n] = m;
      if (++done === 2) finish(results);
    });
  }
} else {
  const n = workerData;
  const m = new Map();
  for (let i = 0; i < 200000; i++) m.set('k' + ((i * 7919 + n) % 50021), i);
  const h = crypto.createHash('sha256');
  for (const [k, v] of [...m].sort()) h.update(k + '=' + v + ';');
  parentPort.postMessage([n, m.size, h.digest('hex')]);
}
function finish(results) {
  for (const r of results) console.log(r.join(' '));
  const items = Array.from({ length: 60000 }, (_, i) => ({ id: i, name: 'item' + i, tags: Array(i % 5).fill('t') }));
  const text = JSON.stringify(items);
  console.log(text.length, crypto.createHash('md5').update(text).digest('hex'));
  console.log(JSON.stringify(JSON.parse(text)) === text);
  if (global.gc) global.gc();
  const bufs = [];
  for (let i = 0; i < 2000; i++) bufs.push(Buffer.alloc(4096, i % 256));
  console.log(Buffer.concat(bufs).reduce((a, b) => (a + b) % 65521, 0));
}

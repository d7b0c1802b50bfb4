// P5 anchor of `tubescribe bench`: N no-op 3-stage flows (summarize <- transcribe <- download)
// through the Node `bullmq` package on the given Redis; prints one JSON line
// {"jobs":…, "seconds":…, "jobs_per_s":…}. Mirrors bench.rs's Rust run: flows added with
// FlowProducer.addBulk in chunks of 500, one Worker per queue with the given concurrency,
// timed from the first add until the last summarize job completed.
// Usage: node flows.js <redis unix socket> <flows> <concurrency> <prefix>
const { FlowProducer, Worker } = require('bullmq');

async function main() {
  const [sock, n, conc, prefix] = process.argv.slice(2);
  const N = Number(n);
  const connection = { path: sock, maxRetriesPerRequest: null };
  const fp = new FlowProducer({ connection, prefix });
  let done = 0;
  let resolve;
  const finished = new Promise((r) => (resolve = r));
  const mk = (q) => new Worker(q, async () => ({}), { connection, prefix, concurrency: Number(conc) });
  const workers = [mk('download'), mk('transcribe'), mk('summarize')];
  workers[2].on('completed', () => {
    if (++done === N) resolve();
  });
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  const flows = [];
  for (let i = 0; i < N; i++) {
    flows.push({
      name: 'summarize', queueName: 'summarize', data: { i },
      children: [{
        name: 'transcribe', queueName: 'transcribe', data: { i },
        children: [{ name: 'download', queueName: 'download', data: { i } }],
      }],
    });
  }
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i += 500) await fp.addBulk(flows.slice(i, i + 500));
  await finished;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ jobs: 3 * N, seconds: s, jobs_per_s: (3 * N) / s }));
  await Promise.all(workers.map((w) => w.close()));
  await fp.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

// N one-command tasks through @golem-sdk/task-executor 2 (up to 2 in parallel, one per
// provider), timed; run by bench/devnet.py with its own packages. Prints "FIRST <s>" and
// "LAST <s>" since the program started.
const { TaskExecutor } = require("@golem-sdk/task-executor");
const START = performance.now();
const since = () => (performance.now() - START) / 1000;

(async () => {
  const n = Number(process.argv[2]);
  let first = null;
  let last = null;
  const executor = await TaskExecutor.create({
    demand: { workload: { imageTag: "golem/alpine:latest" } },
    market: {
      rentHours: 0.5,
      pricing: { model: "linear", maxStartPrice: 0.5, maxCpuPerHourPrice: 1.0,
                 maxEnvPerHourPrice: 0.5 },
    },
    task: { maxParallelTasks: 2 },
  });
  try {
    await Promise.all(Array.from({ length: n }, () => executor.run(async (exe) => {
      await exe.run("/bin/sh -c date");
      last = since();
      if (first === null) first = last;
    })));
  } finally {
    await executor.shutdown();
  }
  console.log("FIRST", first);
  console.log("LAST", last);
})().catch((error) => {
  console.error(error);
  process.exit(1);
});

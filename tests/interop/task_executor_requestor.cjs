// A requestor written against @golem-sdk/task-executor 2's public API (its README's hello world,
// several tasks at once), run by test_sdks.py with its own Node packages against the devnet.
// Prints "DATE <stdout>" per task and "OUT <stdout of the echo as JSON>"; exits non-zero on
// failure (the README's example only logs the failure; a test needs the exit code).
const { TaskExecutor } = require("@golem-sdk/task-executor");

(async () => {
  const executor = await TaskExecutor.create({
    demand: { workload: { imageTag: "golem/alpine:latest" } },
    market: {
      rentHours: 0.5,
      pricing: { model: "linear", maxStartPrice: 0.5, maxCpuPerHourPrice: 1.0,
                 maxEnvPerHourPrice: 0.5 },
    },
  });
  try {
    const hello = await executor.run(async (exe) => (await exe.run("echo 'Hello World'")).stdout);
    console.log("OUT", JSON.stringify(hello.toString()));
    const dates = await Promise.all([1, 2, 3, 4].map(() => executor.run(
      async (exe) => (await exe.run("date")).stdout)));
    for (const date of dates) console.log("DATE", date.toString().trim());
  } finally {
    await executor.shutdown();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});

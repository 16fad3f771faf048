// N one-command runs through golem-js's rental pool (2 rentals), timed; run by bench/devnet.py
// with golem-js's own packages. Prints "FIRST <s>" and "LAST <s>" since the program started.
const { GolemNetwork } = require("@golem-sdk/golem-js");
const START = performance.now();
const since = () => (performance.now() - START) / 1000;

(async () => {
  const n = Number(process.argv[2]);
  const glm = new GolemNetwork();
  let first = null;
  let last = null;
  let done = 0;
  try {
    await glm.connect();
    const pool = await glm.manyOf({
      poolSize: 2,
      order: {
        demand: { workload: { imageTag: "golem/alpine:latest" } },
        market: {
          rentHours: 0.5,
          pricing: { model: "linear", maxStartPrice: 0.5, maxCpuPerHourPrice: 1.0,
                     maxEnvPerHourPrice: 0.5 },
        },
      },
    });
    await Promise.all(Array.from({ length: n }, () => pool.withRental(async (rental) => {
      const exe = await rental.getExeUnit();
      await exe.run("/bin/sh -c date");
      done += 1;
      last = since();
      if (first === null) first = last;
    })));
    await pool.drainAndClear();
  } finally {
    await glm.disconnect();
  }
  if (done !== n) throw new Error(`only ${done} of ${n} runs done`);
  console.log("FIRST", first);
  console.log("LAST", last);
})().catch((error) => {
  console.error(error);
  process.exit(1);
});

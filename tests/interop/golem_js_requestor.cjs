// A requestor written against golem-js 3's public API (its README's rental flow, plus files
// both ways), run by test_golem_js.py with golem-js's own Node packages against the devnet.
// Prints "DATE <stdout>" and "OUT <downloaded text as JSON>"; exits non-zero on failure.
// The image is IMAGE_TAG (default golem/alpine:latest), resolved through GOLEM_REGISTRY_URL.
const { GolemNetwork } = require("@golem-sdk/golem-js");

(async () => {
  const glm = new GolemNetwork();
  try {
    await glm.connect();
    const rental = await glm.oneOf({
      order: {
        demand: { workload: { imageTag: process.env.IMAGE_TAG || "golem/alpine:latest" } },
        market: {
          rentHours: 0.5,
          // The limits golem-js's own examples set.
          pricing: { model: "linear", maxStartPrice: 0.5, maxCpuPerHourPrice: 1.0,
                     maxEnvPerHourPrice: 0.5 },
        },
      },
    });
    const exe = await rental.getExeUnit();
    await exe.uploadData(new TextEncoder().encode("sent by golem-js\n"), "/golem/input/in.txt");
    const run = await exe.run("tr a-z A-Z < /golem/input/in.txt > /golem/output/out.txt && date");
    console.log("DATE", run.stdout.toString().trim());
    const out = await exe.downloadData("/golem/output/out.txt");
    console.log("OUT", JSON.stringify(new TextDecoder().decode(out.data)));
    await rental.stopAndFinalize();
  } finally {
    await glm.disconnect();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});

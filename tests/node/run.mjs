// Run an ONNX model in onnxruntime-node or onnxruntime-web (WebAssembly) under Node.
//
//   node run.mjs REQUEST.json
//
// REQUEST: {"model": path, "runtime": "node" | "web", "cases": [[{name, shape, file}, ...], ...]}
// where each file holds a case's input as little-endian float32. For each case the outputs are
// written beside the request as `<request>.<case>.<output index>.bin` (float32), and their shapes
// and the runtime's name and version are printed as one JSON line. With `"repeat": N` in the
// request, each case is also run N more times (after 2 untimed runs) and its median time in ms
// is reported (`benchmarks/serving.py`).
import { readFileSync, writeFileSync } from "node:fs";

const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
const ort = request.runtime === "web" ? await import("onnxruntime-web") : await import("onnxruntime-node");
if (request.runtime === "web") {
  ort.env.wasm.numThreads = 1; // no worker threads: the tests run on 2 cores beside others
}
const session = await ort.InferenceSession.create(request.model);
const shapes = [];
const medians = [];
async function medianMs(feeds) {
  for (let i = 0; i < 2; i++) await session.run(feeds);
  const times = [];
  for (let i = 0; i < request.repeat; i++) {
    const start = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}
for (const [index, inputs] of request.cases.entries()) {
  const feeds = {};
  for (const input of inputs) {
    const bytes = readFileSync(input.file);
    const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    feeds[input.name] = new ort.Tensor("float32", data, input.shape);
  }
  const results = await session.run(feeds);
  if (request.repeat) medians.push(await medianMs(feeds));
  shapes.push(
    session.outputNames.map((name, k) => {
      const tensor = results[name];
      writeFileSync(`${process.argv[2]}.${index}.${k}.bin`, Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
      return { name, dims: tensor.dims };
    }),
  );
}
const version = JSON.parse(readFileSync(new URL(`./node_modules/onnxruntime-${request.runtime}/package.json`, import.meta.url), "utf8")).version;
console.log(JSON.stringify({ runtime: `onnxruntime-${request.runtime} ${version}`, outputs: shapes, median_ms: medians }));

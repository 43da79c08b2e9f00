// Runs the exported ST-CNN (model.onnx: input "images" (N, 42, 42, 1) in [0, 1]; outputs the class
// logits and the transformer's 28x28 view) with onnxruntime-web's WebAssembly backend.
import * as ort from "./ort/ort.wasm.bundle.min.mjs";

// onnxruntime-web loads its WebAssembly files from beside its own module, ./ort/.
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page; one is plenty here

const SIZE = 42;
const VIEW = 28;
const status = document.getElementById("status");
const pad = document.getElementById("pad");
const view = document.getElementById("view");
const prediction = document.getElementById("prediction");

function paint(canvas, pixels, width) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, width);
  pixels.forEach((value, i) => {
    const level = Math.round(255 * Math.min(1, Math.max(0, value)));
    image.data.set([level, level, level, 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
}

function padPixels() {
  const data = pad.getContext("2d").getImageData(0, 0, SIZE, SIZE).data;
  return Float32Array.from({ length: SIZE * SIZE }, (_, i) => data[4 * i] / 255);
}

async function classify(session, pixels) {
  const images = new ort.Tensor("float32", pixels, [1, SIZE, SIZE, 1]);
  const results = await session.run({ [session.inputNames[0]]: images });
  const [logits, output] = ["output_0", "output_1"].map((name) => Array.from(results[name].data));
  const predicted = logits.indexOf(Math.max(...logits));
  paint(view, output, VIEW);
  prediction.textContent = String(predicted);
  // What the page computed, for anyone checking it (the test suite compares it with Keras).
  window.stnResult = { input: Array.from(pixels), logits, output, predicted };
  document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
}

function enableDrawing(session) {
  const context = pad.getContext("2d");
  let drawing = false;
  const at = (event) => {
    const box = pad.getBoundingClientRect();
    return [((event.clientX - box.left) / box.width) * SIZE, ((event.clientY - box.top) / box.height) * SIZE];
  };
  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    context.strokeStyle = "#fff";
    context.lineWidth = 2.5;
    context.lineCap = "round";
    context.beginPath();
    context.moveTo(...at(event));
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    context.lineTo(...at(event));
    context.stroke();
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    classify(session, padPixels());
  };
  pad.addEventListener("pointerup", finish);
  pad.addEventListener("pointerleave", finish);
  document.getElementById("clear").addEventListener("click", () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, SIZE, SIZE);
  });
}

function showSamples(session, samples) {
  const strip = document.getElementById("samples");
  samples.images.forEach((pixels, index) => {
    const thumbnail = document.createElement("canvas");
    thumbnail.width = thumbnail.height = SIZE;
    thumbnail.dataset.sample = String(index);
    thumbnail.title = `a distorted ${samples.labels[index]}`;
    paint(thumbnail, pixels, SIZE);
    thumbnail.addEventListener("click", () => {
      paint(pad, pixels, SIZE);
      classify(session, Float32Array.from(pixels));
    });
    strip.appendChild(thumbnail);
  });
}

async function main() {
  try {
    const [session, samples] = await Promise.all([
      ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] }),
      fetch("samples.json").then((response) => response.json()),
    ]);
    showSamples(session, samples);
    enableDrawing(session);
    status.textContent = `ready: onnxruntime-web ${ort.env.versions.web}, WebAssembly`;
    document.body.dataset.state = "ready";
  } catch (error) {
    status.textContent = `failed: ${error.message}`;
    document.body.dataset.state = "failed";
    throw error;
  }
}

main();

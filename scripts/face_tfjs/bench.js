// Peer for `make bench` (face task): @vladmandic/face-api 1.7.15 on @tensorflow/tfjs 4.22.0, timing the same three
// networks on the same inputs as zoo's face benchmark. Prints one JSON line per input, with the fields of
// shared/bench/common.py's emit() + bench_loop(), so scripts/bench_compare.py can match them on input and batch.
// usage: node bench.js MODEL_DIR SHARED_ASSETS_DIR [--backend cpu|wasm] [--threads N] [--min-time S]
//   MODEL_DIR = shared/assets/models/face; SHARED_ASSETS_DIR = shared/assets (for reference/face/).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const tf = require('@tensorflow/tfjs');
const wasm = require('@tensorflow/tfjs-backend-wasm');
// The dist file the reference (reference/face/tools/face_ref.js) used: it binds to the tfjs installed next to it.
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { PNG } = require('pngjs');

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args.splice(i, 2)[1] : dflt; };
const backend = opt('--backend', 'cpu');
const threads = parseInt(opt('--threads', '2'), 10);
const minTime = parseFloat(opt('--min-time', '5'));
const [modelDir, assetsDir] = args;
if (!modelDir || !assetsDir || !['cpu', 'wasm'].includes(backend)) {
  console.error('usage: node bench.js MODEL_DIR SHARED_ASSETS_DIR [--backend cpu|wasm] [--threads N] [--min-time S]');
  process.exit(2);
}
const note = (s) => console.error(`face_tfjs[${backend}]: ${s}`);

// --- measurement helpers, mirroring shared/bench/common.py ---
// VmHWM rather than resourceUsage().maxRSS: on Linux ru_maxrss survives exec, so a big parent would inflate it.
function peakRssMb() {
  const m = /VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return Math.round((m ? +m[1] : process.resourceUsage().maxRSS) / 1024 * 10) / 10;
}
function busyCpuS() { // all CPUs' busy time (s) from /proc/stat, to tell how much OTHER processes ran meanwhile
  const v = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1, 9).map(Number);
  return (v.reduce((a, b) => a + b, 0) - v[3] - v[4]) / 100; // minus idle, iowait; USER_HZ is 100 on Linux
}
const r2 = (x) => Math.round(x * 100) / 100;
const r3 = (x) => Math.round(x * 1000) / 1000;

// Like common.wait_idle: wait (<= $BENCH_MAX_WAIT s, default 30) until other processes use < $BENCH_IDLE_CORES
// (0.3) cores over a 2 s window, so a busy machine delays the loop rather than skewing it.
async function waitIdle() {
  const maxWait = +(process.env.BENCH_MAX_WAIT || 30); const thresh = +(process.env.BENCH_IDLE_CORES || 0.3);
  const t0 = Date.now(); let last;
  for (;;) {
    const b0 = busyCpuS(); const c0 = process.cpuUsage();
    await new Promise((r) => setTimeout(r, 2000));
    const c = process.cpuUsage(c0);
    last = r2(Math.max(busyCpuS() - b0 - (c.user + c.system) / 1e6, 0) / 2);
    const waited = (Date.now() - t0) / 1000;
    if (last < thresh || waited >= maxWait) return { others_cores_before: last, waited_s: Math.round(waited * 10) / 10 };
  }
}

// Like common.bench_loop: warm-up, wait for idle, then run until min_time has passed and >= 3 iterations
// (cap 2000 iterations / 120 s). Two warm-up calls by default, not one: V8 tiers up the cpu backend's JS kernels.
async function benchLoop(fn, warmup = 2) {
  for (let i = 0; i < warmup; i++) await fn();
  const idle = await waitIdle();
  const c0 = process.cpuUsage(); const b0 = busyCpuS(); const t0 = process.hrtime.bigint();
  let n = 0; let el = 0;
  do { await fn(); n++; el = Number(process.hrtime.bigint() - t0) / 1e9; }
  while (n < 2000 && el < 120 && (el < minTime || n < 3));
  const c = process.cpuUsage(c0); const own = (c.user + c.system) / 1e6; // includes every thread of this process
  const others = Math.max(busyCpuS() - b0 - own, 0);
  return { iters: n, wall_s: r3(el), items_per_s: r3(n / el), ms_per_item: r3(1000 * el / n),
    own_cpu_s: r2(own), own_cores: r2(own / el), others_cores: r2(others / el), ...idle };
}

function readRgb(file) { // pngjs always gives RGBA; drop alpha as face_ref.js does
  const img = PNG.sync.read(fs.readFileSync(file));
  const rgb = new Uint8Array(img.width * img.height * 3);
  for (let i = 0; i < img.width * img.height; i++) for (let c = 0; c < 3; c++) rgb[3 * i + c] = img.data[4 * i + c];
  return tf.tensor3d(rgb, [img.height, img.width, 3], 'int32'); // face-api's tensor path, as in the reference
}
const crop = (t, r) => tf.slice3d(t, [r.y, r.x, 0], [r.height, r.width, 3]);

(async () => {
  let peer;
  if (backend === 'wasm') {
    // tfjs-backend-wasm 4.22.0 hard-codes WASM_HAS_MULTITHREAD_SUPPORT = false under node (tfjs issue #3830), so
    // node gets the single-threaded SIMD binary whatever setThreadsCount says; report the count it really uses.
    // (Forcing the flag to true does not help: the pthread pool is started from a blob: URL, which node's
    // worker_threads rejects with ERR_WORKER_PATH, and the backend fails to initialise.)
    wasm.setThreadsCount(threads);
    if (!(await tf.setBackend('wasm'))) throw new Error('wasm backend failed to initialise');
    await tf.ready();
    const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
    const mt = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
    const used = wasm.getThreadsCount();
    peer = `tfjs ${tf.version.tfjs} wasm${simd ? ' simd' : ''}, ${used} thread${used === 1 ? '' : 's'} (face-api ${faceapi.version})`;
    if (used !== threads) note(`asked for ${threads} threads, wasm runs ${used} (multithread support in node: ${mt})`);
  } else {
    await tf.setBackend('cpu'); await tf.ready();
    peer = `tfjs ${tf.version.tfjs} cpu, single-threaded JS (face-api ${faceapi.version})`;
  }
  const nThreads = backend === 'wasm' ? wasm.getThreadsCount() : 1;
  await faceapi.nets.ssdMobilenetv1.loadFromDisk(modelDir);
  await faceapi.nets.faceLandmark68Net.loadFromDisk(modelDir);
  await faceapi.nets.faceRecognitionNet.loadFromDisk(modelDir);
  const weightTensors = tf.memory().numTensors;

  const refDir = path.join(assetsDir, 'reference/face');
  const ref = JSON.parse(fs.readFileSync(path.join(refDir, 'face_ref.json'), 'utf8')).images.find((i) => i.file === 'faces.jpg');
  const img = readRgb(path.join(refDir, 'inputs/faces.rgb.png')); // the decoded JPEG; decoding is not timed
  const face0 = ref.faces[0];
  const emit = (input, m) => console.log(JSON.stringify({ date: new Date().toISOString().slice(0, 19) + 'Z',
    task: 'face', peer, model: 'face-api', input, batch: 1, threads: nThreads, ...m,
    peak_rss_mb: peakRssMb(), nice: os.getPriority(), loadavg_1m: os.loadavg()[0] }));

  // SSD: the 512x512 float input made by face-api's own pad+resize (toBatchTensor), so the loop times the network
  // (with its /127.5-1 step) and not the resize. forwardInput is what locateFaces calls.
  const x512 = (await faceapi.toNetInput(img)).toBatchTensor(512, false);
  const ni512 = await faceapi.toNetInput(x512);
  emit('ssd 512x512', await benchLoop(() => {
    const { boxes, scores } = faceapi.nets.ssdMobilenetv1.forwardInput(ni512);
    boxes[0].dataSync(); scores[0].dataSync();
    boxes.forEach((t) => t.dispose()); scores.forEach((t) => t.dispose());
  }));

  // Landmarks on the first face's crop (the net pads + resizes it to 112 itself, inside the timed call).
  const lmCrop = crop(img, face0.landmark_crop);
  emit('landmarks 112x112', await benchLoop(() => faceapi.nets.faceLandmark68Net.detectLandmarks(lmCrop)));

  // Descriptor on the first face's dlib-aligned crop (resized to 150 inside the call); it awaits data().
  const dCrop = crop(img, face0.descriptor_crop);
  const d = await faceapi.nets.faceRecognitionNet.computeFaceDescriptor(dCrop);
  const l2 = Math.hypot(...Array.from(d, (v, i) => v - face0.descriptor[i]));
  note(`descriptor of face 0 vs reference: L2 ${l2.toExponential(2)}`);
  if (!(l2 < 1e-3)) throw new Error(`descriptor differs from the reference by L2 ${l2}`); // network parity bound
  emit('descriptor 150x150', await benchLoop(() => faceapi.nets.faceRecognitionNet.computeFaceDescriptor(dCrop)));

  // The whole pipeline on the 710x473 image; it must find the reference's 6 faces.
  const opts = new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5 });
  const pipeline = () => faceapi.detectAllFaces(img, opts).withFaceLandmarks().withFaceDescriptors();
  const found = (await pipeline()).length;
  if (found !== ref.faces.length) throw new Error(`pipeline found ${found} faces on faces.jpg, expected ${ref.faces.length}`);
  emit(`faces.jpg ${img.shape[1]}x${img.shape[0]}`, await benchLoop(pipeline, 1)); // the check was warm-up call 1

  [img, x512, lmCrop, dCrop].forEach((t) => t.dispose());
  const leaked = tf.memory().numTensors - weightTensors; // a leak would make later iterations pay for GC / memory
  if (leaked) note(`WARNING: ${leaked} tensors leaked`);
})().catch((e) => { console.error(`face_tfjs[${backend}] FAILED:`, e); process.exit(1); });

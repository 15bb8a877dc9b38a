// zoo serve's page: tries every served task through the same HTTP API any client uses
// (POST /v1/run/{task}); no framework, no build step, nothing fetched from elsewhere.
"use strict";

const KEY_STORE = "zoo-api-key";
// A word the recogniser gave less than this probability is marked as unsure.
const LOW_CONFIDENCE = 0.5;

const $ = (selector, root = document) => root.querySelector(selector);

/** An element with attributes (on* keys become listeners) and children (strings become text). */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    else if (name === "style") element.style.cssText = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return element;
}

const percent = (p) => `${(p * 100).toFixed(1)}%`;
const apiKey = () => localStorage.getItem(KEY_STORE) || "";

/** A failed request: the server's one-line message and the HTTP status. */
class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/**
 * One request to the API through XMLHttpRequest (fetch reports no upload progress).
 * `body`: FormData or a JSON-able object; `accept`: what to ask for; `progress(phase, fraction)`.
 * Resolves to {json} or {blob}; rejects with ApiError carrying the server's message.
 */
function request(method, path, { body, accept = "application/json", progress, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    xhr.responseType = "blob";
    xhr.setRequestHeader("Accept", accept);
    if (apiKey()) xhr.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
    let payload = body;
    if (body && !(body instanceof FormData)) {
      xhr.setRequestHeader("Content-Type", "application/json");
      payload = JSON.stringify(body);
    }
    if (progress) {
      xhr.upload.onprogress = (e) => progress("upload", e.lengthComputable ? e.loaded / e.total : null);
      xhr.upload.onload = () => progress("run", null);
    }
    if (signal) signal.addEventListener("abort", () => xhr.abort());
    xhr.onabort = () => reject(new ApiError("cancelled", 0));
    xhr.onerror = () => reject(new ApiError("the server could not be reached (is zoo serve still running?)", 0));
    xhr.onload = async () => {
      const type = xhr.getResponseHeader("Content-Type") || "";
      if (type.includes("application/json")) {
        let json;
        try {
          json = JSON.parse(await xhr.response.text());
        } catch (e) {
          return reject(new ApiError(`the server's answer is not JSON (${e.message})`, xhr.status));
        }
        if (xhr.status >= 400 || json.error) {
          const hint = xhr.status === 401 ? " (set the API key at the top of the page)" : "";
          return reject(new ApiError((json.error || `HTTP ${xhr.status}`) + hint, xhr.status));
        }
        return resolve({ json, status: xhr.status });
      }
      if (xhr.status >= 400) {
        return reject(new ApiError(`HTTP ${xhr.status}: ${(await xhr.response.text()).slice(0, 300)}`, xhr.status));
      }
      resolve({ blob: xhr.response, status: xhr.status });
    };
    xhr.send(payload);
  });
}

/** Runs `work(progress, signal)` with a progress line and a cancel button under `where`. */
async function withProgress(where, label, work) {
  const bar = h("progress", { max: 1 });
  const text = h("span", {}, `${label}…`);
  const controller = new AbortController();
  const cancel = h("button", { type: "button", onclick: () => controller.abort() }, "Cancel");
  const box = h("div", { class: "progress", role: "status", "aria-live": "polite" }, bar, text, cancel);
  where.replaceChildren(box);
  const started = performance.now();
  let phase = "upload";
  const tick = setInterval(() => {
    if (phase === "run") text.textContent = `${label}… ${Math.round((performance.now() - started) / 1000)} s`;
  }, 250);
  const progress = (now, fraction) => {
    phase = now;
    if (now === "upload" && fraction !== null) {
      bar.value = fraction;
      text.textContent = `Uploading… ${Math.round(fraction * 100)}%`;
    } else if (now === "run") {
      bar.removeAttribute("value");
    }
  };
  try {
    return await work(progress, controller.signal);
  } finally {
    clearInterval(tick);
    box.remove();
  }
}

function showError(where, error) {
  where.replaceChildren(h("p", { class: "error", role: "alert" }, error.message || String(error)));
}

/** A drop zone around a real file input: click, keyboard, drag and drop, and paste all work. */
function dropZone({ accept, label, hint, onfile }) {
  const input = h("input", { type: "file", accept, "aria-label": label });
  const zone = h("label", { class: "drop" }, h("strong", {}, label), h("br"), input, h("p", { class: "hint" }, hint));
  input.addEventListener("change", () => input.files[0] && onfile(input.files[0]));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) onfile(file);
  });
  zone.input = input;
  return zone;
}

/** Option fields for the task's options that a panel does not show itself, in a "More options" box. */
function moreOptions(task, handled) {
  const fields = [];
  const values = () => {
    const out = {};
    for (const { option, input } of fields) {
      if (option.value === null) {
        if (input.checked) out[option.name] = "true";
      } else if (input.value.trim() !== "" && input.value !== (option.default ?? "")) {
        out[option.name] = input.value.trim();
      }
    }
    return out;
  };
  const shown = task.options.filter((o) => !handled.includes(o.name) && !o.upload && !o.returned);
  if (!shown.length) return { element: h("span"), values };
  const controls = h("div", { class: "controls" });
  for (const option of shown) {
    const id = `${task.task}-opt-${option.name}`;
    const input =
      option.value === null
        ? h("input", { type: "checkbox", id })
        : h("input", { type: "text", id, placeholder: option.default ?? "", size: 10 });
    fields.push({ option, input });
    controls.append(
      h("label", { for: id, title: option.help }, h("span", {}, option.name), input, h("small", { class: "hint" }, option.help)),
    );
  }
  return { element: h("details", { class: "more" }, h("summary", {}, "More options"), controls), values };
}

/** The model picker: the served models of the task (hidden when there is one). */
function modelPicker(task) {
  const select = h("select", { id: `${task.task}-model` }, task.models.map((m) => h("option", { value: m }, m)));
  const element = h("label", { for: select.id, hidden: task.models.length < 2 }, "Model", select);
  return { element, value: () => select.value };
}

function form(fields) {
  const data = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined || value === null) continue;
    if (value instanceof Blob) data.append(name, value, value.name || name);
    else data.append(name, String(value));
  }
  return data;
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** Labels with their probabilities as bars, the number written beside each. */
function bars(pairs) {
  return h(
    "ol",
    { class: "labels" },
    pairs.map(([label, p]) =>
      h(
        "li",
        {},
        h("span", { class: "name" }, label),
        h("span", { class: "bar", role: "img", "aria-label": percent(p) }, h("span", { style: `width:${(p * 100).toFixed(2)}%` })),
        h("span", { class: "pct" }, percent(p)),
      ),
    ),
  );
}

const stem = (name) => name.replace(/\.[^.]*$/, "") || "result";

// ---------------------------------------------------------------- image classification

function imagePanel(task) {
  const model = modelPicker(task);
  const more = moreOptions(task, ["top-k"]);
  const topK = h("input", { type: "number", min: 1, max: 1000, value: optionDefault(task, "top-k", 5), id: "ic-top-k" });
  const explain = h("input", { type: "checkbox", id: "ic-explain", checked: task.explain.available || undefined });
  const run = h("button", { type: "button", class: "primary", disabled: true, id: "ic-run" }, "Classify");
  const photo = h("img", { alt: "The photo to classify" });
  const heat = h("canvas", { class: "heat", hidden: true, "aria-hidden": "true" });
  const stage = h("div", { class: "stage", hidden: true }, photo, heat);
  const showHeat = h("input", { type: "checkbox", checked: true, id: "ic-show-heat" });
  const opacity = h("input", { type: "range", min: 0, max: 1, step: 0.05, value: 0.6, id: "ic-opacity" });
  const heatControls = h(
    "div",
    { class: "controls", hidden: true },
    h("label", { for: showHeat.id }, showHeat, "Show heatmap"),
    h("label", { for: opacity.id }, "Opacity", opacity),
    h("span", { class: "legend" }, "less", h("span", { class: "ramp heat" }), "more: covering it lowers the top label most"),
  );
  const status = h("div");
  const results = h("div", { "aria-live": "polite" });
  let file = null;

  const choose = (chosen) => {
    file = chosen;
    photo.src = URL.createObjectURL(chosen);
    stage.hidden = false;
    heat.hidden = true;
    heatControls.hidden = true;
    run.disabled = false;
    classify();
  };
  const zone = dropZone({
    accept: "image/*",
    label: "Choose a photo",
    hint: "or drop one here, or paste one (Ctrl+V)",
    onfile: choose,
  });
  const place = () => {
    heat.style.opacity = showHeat.checked ? opacity.value : 0;
  };
  showHeat.addEventListener("change", place);
  opacity.addEventListener("input", place);

  async function classify() {
    if (!file) return;
    run.disabled = true;
    try {
      const { json } = await withProgress(status, "Classifying", (progress, signal) =>
        request("POST", `/v1/run/${task.task}`, {
          body: form({ file, model: model.value(), top_k: topK.value, explain: explain.checked, ...more.values() }),
          progress,
          signal,
        }),
      );
      const result = json.results[0];
      if (result.error) throw new ApiError(result.error, 422);
      results.replaceChildren(
        h("h3", {}, "Labels"),
        bars(result.predictions.map((p) => [p.label, p.score])),
        h("p", { class: "note" }, `Model ${result.model}.`),
      );
      drawHeat(result.explanation, result.predictions[0]);
    } catch (error) {
      showError(status, error);
    } finally {
      run.disabled = false;
    }
  }

  function drawHeat(explanation, top) {
    if (!explanation) return;
    const grid = explanation.grid;
    const rows = grid.length;
    const cols = grid[0].length;
    heat.width = cols;
    heat.height = rows;
    const context = heat.getContext("2d");
    const image = context.createImageData(cols, rows);
    const max = Math.max(...grid.flat(), 1e-9);
    grid.forEach((row, y) =>
      row.forEach((value, x) => {
        const t = Math.max(0, value) / max;
        const at = (y * cols + x) * 4;
        image.data.set([255, Math.round(255 * Math.max(0, t * 2 - 1)), 0, Math.round(255 * Math.min(1, t * 1.5))], at);
      }),
    );
    context.putImageData(image, 0, 0);
    const [left, topEdge, width, height] = explanation.region || [0, 0, 1, 1];
    Object.assign(heat.style, { left: `${left * 100}%`, top: `${topEdge * 100}%`, width: `${width * 100}%`, height: `${height * 100}%` });
    heat.hidden = false;
    heat.dataset.label = top.label;
    heatControls.hidden = false;
    place();
    photo.alt = `The photo, with a heatmap of where it shows ${top.label}`;
  }

  run.addEventListener("click", classify);
  return {
    element: h(
      "div",
      {},
      zone,
      h(
        "div",
        { class: "controls" },
        model.element,
        h("label", { for: topK.id }, "Labels to show", topK),
        h("label", { for: explain.id, hidden: !task.explain.available }, explain, "Explain: where in the photo"),
        run,
      ),
      more.element,
      status,
      h("div", { class: "columns" }, h("figure", {}, stage, heatControls), results),
    ),
    paste: choose,
  };
}

function optionDefault(task, name, fallback) {
  const option = task.options.find((o) => o.name === name);
  return option && option.default !== null ? option.default : fallback;
}

// ---------------------------------------------------------------- speech recognition

function clock(seconds) {
  const m = Math.floor(seconds / 60);
  return `${m}:${(seconds - m * 60).toFixed(1).padStart(4, "0")}`;
}

/** 16-bit PCM WAV of mono float samples: browsers record Opus, which zoo does not decode. */
function wav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new File([buffer], "recording.wav", { type: "audio/wav" });
}

/** Microphone capture as PCM through the Web Audio API. */
function recorder() {
  let stream, context, node, chunks;
  return {
    async start() {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
      context = new AudioContext();
      const source = context.createMediaStreamSource(stream);
      node = context.createScriptProcessor(4096, 1, 1);
      chunks = [];
      node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
      source.connect(node);
      node.connect(context.destination);
    },
    async stop() {
      node.disconnect();
      stream.getTracks().forEach((t) => t.stop());
      const rate = context.sampleRate;
      await context.close();
      const samples = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
      let at = 0;
      for (const c of chunks) {
        samples.set(c, at);
        at += c.length;
      }
      return wav(samples, rate);
    },
  };
}

function speechPanel(task) {
  const model = modelPicker(task);
  const more = moreOptions(task, ["format"]);
  const explain = h("input", { type: "checkbox", id: "asr-explain", checked: task.explain.available || undefined });
  const run = h("button", { type: "button", class: "primary", disabled: true, id: "asr-run" }, "Transcribe");
  const record = h("button", { type: "button", id: "asr-record", "aria-pressed": "false" }, "● Record");
  const recording = h("span", { class: "recording", role: "status", "aria-live": "polite" });
  const audio = h("audio", { controls: true, hidden: true, preload: "auto" });
  const status = h("div");
  const results = h("div", { class: "transcript", "aria-live": "polite" });
  const srt = h("button", { type: "button", hidden: true, id: "asr-srt" }, "Download SRT");
  const vtt = h("button", { type: "button", hidden: true, id: "asr-vtt" }, "Download VTT");
  let file = null;
  let mic = null;
  let words = [];

  const choose = (chosen) => {
    file = chosen;
    audio.src = URL.createObjectURL(chosen);
    audio.hidden = false;
    run.disabled = false;
    results.replaceChildren();
    srt.hidden = vtt.hidden = true;
    transcribe();
  };
  const zone = dropZone({
    accept: "audio/*,.wav,.mp3,.flac,.ogg,.m4a",
    label: "Choose a recording",
    hint: "WAV, MP3, FLAC, Ogg Vorbis or M4A; or drop one here, or record below",
    onfile: choose,
  });

  record.addEventListener("click", async () => {
    if (!mic) {
      try {
        mic = recorder();
        await mic.start();
        const started = performance.now();
        record.textContent = "■ Stop";
        record.setAttribute("aria-pressed", "true");
        recording.textContent = "Recording…";
        record.timer = setInterval(() => (recording.textContent = `Recording… ${clock((performance.now() - started) / 1000)}`), 200);
      } catch (error) {
        mic = null;
        showError(status, new Error(`the microphone is not available: ${error.message}`));
      }
      return;
    }
    clearInterval(record.timer);
    const made = await mic.stop();
    mic = null;
    record.textContent = "● Record";
    record.setAttribute("aria-pressed", "false");
    recording.textContent = "";
    choose(made);
  });

  const seek = (seconds) => {
    audio.currentTime = seconds;
    audio.play().catch(() => {});
  };
  audio.addEventListener("timeupdate", () => {
    for (const w of words) w.button.classList.toggle("playing", audio.currentTime >= w.start && audio.currentTime < w.end);
  });

  const body = (extra = {}) =>
    form({ file, model: model.value(), explain: explain.checked, ...more.values(), ...extra });

  async function transcribe() {
    if (!file) return;
    run.disabled = true;
    try {
      const { json } = await withProgress(status, "Transcribing", (progress, signal) =>
        request("POST", `/v1/run/${task.task}`, { body: body(), progress, signal }),
      );
      const result = json.results[0];
      if (result.error) throw new ApiError(result.error, 422);
      render(result);
      srt.hidden = vtt.hidden = false;
    } catch (error) {
      showError(status, error);
    } finally {
      run.disabled = false;
    }
  }

  function render(result) {
    words = [];
    const segments = result.segments.map((segment) => {
      const time = h(
        "button",
        { type: "button", class: "time", title: "Play from here", onclick: () => seek(segment.start) },
        `${clock(segment.start)}–${clock(segment.end)}`,
      );
      const text = segment.words
        ? segment.words.flatMap((w, i) => {
            const low = w.confidence < LOW_CONFIDENCE;
            const button = h(
              "button",
              {
                type: "button",
                class: low ? "word low" : "word",
                "data-start": w.start,
                title: `${clock(w.start)}, confidence ${percent(w.confidence)}${low ? " (unsure)" : ""}`,
                onclick: () => seek(w.start),
              },
              w.text,
            );
            words.push({ button, start: w.start, end: w.end });
            return i ? [" ", button] : [button];
          })
        : [h("span", { class: "text" }, segment.text)];
      return h("p", { class: "segment", "data-start": segment.start }, time, ...text);
    });
    const hasWords = result.segments.some((s) => s.words);
    results.replaceChildren(
      h("h3", {}, "Transcript"),
      ...segments,
      hasWords
        ? h("p", { class: "legend" }, `Underlined wavy, with a “?”: words the model gave under ${LOW_CONFIDENCE * 100}% confidence. Click a word or a time to play from there.`)
        : h("p", { class: "legend" }, "Click a time to play from there; turn on Explain to see each word's confidence."),
      h("p", { class: "note" }, `Model ${result.model}, language ${result.language || "?"}, ${clock(result.duration || 0)} of audio.`),
    );
    results.dataset.text = result.text;
  }

  for (const [button, format] of [[srt, "srt"], [vtt, "vtt"]]) {
    button.addEventListener("click", async () => {
      try {
        const { json } = await withProgress(status, `Making ${format.toUpperCase()}`, (progress, signal) =>
          request("POST", `/v1/run/${task.task}`, { body: body({ format }), progress, signal }),
        );
        const result = json.results[0];
        if (result.error) throw new ApiError(result.error, 422);
        download(new Blob([result.document], { type: "text/plain" }), `${stem(file.name)}.${format}`);
      } catch (error) {
        showError(status, error);
      }
    });
  }

  run.addEventListener("click", transcribe);
  return {
    element: h(
      "div",
      {},
      zone,
      h(
        "div",
        { class: "controls" },
        record,
        recording,
        model.element,
        h("label", { for: explain.id, hidden: !task.explain.available }, explain, "Explain: mark unsure words"),
        run,
        srt,
        vtt,
      ),
      more.element,
      audio,
      status,
      results,
    ),
  };
}

// ---------------------------------------------------------------- fake news

function textPanel(task) {
  const model = modelPicker(task);
  const more = moreOptions(task, []);
  const text = h("textarea", { id: "fn-text", placeholder: "Paste a news text, a claim or a post", "aria-label": "Text" });
  const explain = h("input", { type: "checkbox", id: "fn-explain", checked: task.explain.available || undefined });
  const run = h("button", { type: "button", class: "primary", id: "fn-run" }, "Check");
  const status = h("div");
  const results = h("div", { "aria-live": "polite" });
  // A dropped file is sent as the file itself (decoded by the server as `zoo run` would), unless edited.
  let dropped = null;
  const zone = dropZone({
    accept: ".txt,text/plain",
    label: "Or choose a .txt file",
    hint: "or drop one here",
    onfile: async (file) => {
      dropped = { file, text: await file.text() };
      text.value = dropped.text;
    },
  });

  async function check() {
    const value = text.value;
    if (!value.trim()) return showError(status, new Error("type or paste a text first"));
    run.disabled = true;
    try {
      const options = { explain: explain.checked, ...more.values() };
      const body =
        dropped && dropped.text === value
          ? form({ file: dropped.file, model: model.value(), ...options })
          : { inputs: [value], options, model: model.value() };
      const { json } = await withProgress(status, "Checking", (progress, signal) =>
        request("POST", `/v1/run/${task.task}`, { body, progress, signal }),
      );
      const result = json.results[0];
      if (result.error) throw new ApiError(result.error, 422);
      render(result, value);
    } catch (error) {
      showError(status, error);
    } finally {
      run.disabled = false;
    }
  }

  function render(result, value) {
    const scores = Object.entries(result.scores).sort((a, b) => b[1] - a[1]);
    const parts = [
      h("p", { class: "verdict", id: "fn-label" }, result.label),
      bars(scores),
    ];
    const explanation = result.explanation;
    if (explanation) parts.push(...shade(explanation, value));
    parts.push(h("p", { class: "note" }, `Model ${result.model}${result.windows > 1 ? `, ${result.windows} windows of text` : ""}.`));
    results.replaceChildren(...parts.filter(Boolean));
  }

  /** The text with every explained word shaded by its score, found in order in what was sent. */
  function shade(explanation, value) {
    const label = explanation.label;
    const max = Math.max(...explanation.words.map((w) => Math.abs(w.score)), 1e-12);
    const out = h("p", { class: "shaded", id: "fn-shaded" });
    let at = 0;
    for (const word of explanation.words) {
      const found = value.indexOf(word.text, at);
      if (found < 0) continue;
      out.append(value.slice(at, found));
      const strength = Math.abs(word.score) / max;
      const side = word.score > 0 ? "toward" : "against";
      const span = h(
        "span",
        {
          class: word.score === 0 ? "" : side,
          "data-score": word.score,
          title: `${word.score > 0 ? "toward" : "away from"} ${label}: ${(word.score * 100).toFixed(4)} percentage points`,
        },
        word.text,
      );
      span.style.backgroundColor = `rgba(var(--${side}), ${(0.6 * strength).toFixed(3)})`;
      out.append(span);
      at = found + word.text.length;
    }
    out.append(value.slice(at));
    const ranked = [...explanation.words].sort((a, b) => b.score - a.score);
    const list = (words) => words.map((w) => `${w.text} (${w.score > 0 ? "+" : ""}${(w.score * 100).toFixed(3)})`).join(", ");
    const toward = ranked.filter((w) => w.score > 0).slice(0, 5);
    const against = ranked.filter((w) => w.score < 0).reverse().slice(0, 5);
    return [
      h("h3", {}, "Why"),
      h(
        "p",
        { class: "legend" },
        `How much deleting each word lowers P(${label}), in percentage points:`,
        h("span", {}, `away from ${label} (dotted underline)`),
        h("span", { class: "ramp words" }),
        h("span", {}, `toward ${label} (solid underline)`),
      ),
      out,
      h("p", { class: "note" }, `Most toward ${label}: ${list(toward) || "none"}. Most away: ${list(against) || "none"}.`),
      explanation.total_words > explanation.words.length
        ? h("p", { class: "note" }, `The first ${explanation.words.length} of ${explanation.total_words} words are explained.`)
        : null,
    ];
  }

  run.addEventListener("click", check);
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) check();
  });
  return {
    element: h(
      "div",
      {},
      h("label", { for: text.id, class: "visually-hidden" }, "Text"),
      text,
      zone,
      h(
        "div",
        { class: "controls" },
        model.element,
        h("label", { for: explain.id, hidden: !task.explain.available }, explain, "Explain: shade each word"),
        run,
        h("span", { class: "hint" }, "Ctrl+Enter checks too"),
      ),
      more.element,
      status,
      results,
    ),
  };
}

// ---------------------------------------------------------------- style transfer

function stylePanel(task) {
  const model = modelPicker(task);
  const more = moreOptions(task, ["style", "strength"]);
  const status = h("div");
  const sheetStatus = h("div");
  const picker = h("div", { class: "styles", role: "group", "aria-label": "Built-in styles" });
  const second = h("select", { id: "st-second", "aria-label": "Second style" });
  const mix = h("input", { type: "range", min: 0, max: 1, step: 0.05, value: 0.5, id: "st-mix" });
  const mixShown = h("output", { for: mix.id }, "50%");
  const strength = h("input", { type: "range", min: 0, max: 1, step: 0.05, value: 1, id: "st-strength" });
  const strengthShown = h("output", { for: strength.id }, "100%");
  const painting = dropZone({ accept: "image/*", label: "Choose a painting", hint: "its style is taken for your photo", onfile: (f) => (paintingFile = f) });
  const mode = (value, label) =>
    h("label", {}, h("input", { type: "radio", name: "st-mode", value, checked: value === "builtin" || undefined }), label);
  const modes = h("fieldset", {}, h("legend", {}, "Style"), mode("builtin", "Built-in"), " ", mode("mix", "Mix of two"), " ", mode("picture", "From a painting"));
  const mixBox = h("div", { class: "controls", hidden: true }, h("label", { for: second.id }, "and", second), h("label", { for: mix.id }, "second style's share", mix, mixShown));
  const pictureBox = h("div", { hidden: true }, painting, h("div", { class: "controls" }, h("label", { for: strength.id }, "Strength", strength, strengthShown)));
  const run = h("button", { type: "button", class: "primary", disabled: true, id: "st-run" }, "Stylize");
  const before = h("img", { alt: "Your photo" });
  const after = h("img", { alt: "Your photo, styled", id: "st-after" });
  const save = h("a", { class: "button", hidden: true, id: "st-download" }, "Download");
  const figures = h(
    "div",
    { class: "columns", hidden: true },
    h("figure", {}, h("div", { class: "stage" }, before), h("figcaption", {}, "Before")),
    h("figure", { id: "st-after-figure", hidden: true }, h("div", { class: "stage" }, after), h("figcaption", {}, "After "), save),
  );
  let file = null;
  let paintingFile = null;
  let chosen = 0;
  let names = [];

  const currentMode = () => $("input[name=st-mode]:checked", modes).value;
  modes.addEventListener("change", () => {
    mixBox.hidden = currentMode() !== "mix";
    pictureBox.hidden = currentMode() !== "picture";
    picker.hidden = currentMode() === "picture";
  });
  mix.addEventListener("input", () => (mixShown.value = `${Math.round(mix.value * 100)}%`));
  strength.addEventListener("input", () => (strengthShown.value = `${Math.round(strength.value * 100)}%`));

  const pick = (index) => {
    chosen = index;
    for (const button of picker.children) button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
  };

  const choose = async (photo) => {
    file = photo;
    before.src = URL.createObjectURL(photo);
    figures.hidden = false;
    run.disabled = false;
    await thumbnails();
  };
  const zone = dropZone({ accept: "image/*", label: "Choose a photo", hint: "or drop one here, or paste one (Ctrl+V)", onfile: choose });

  /** The photo in every built-in style: the contact sheet, cut into its cells. */
  async function thumbnails() {
    try {
      const { json } = await withProgress(sheetStatus, "Trying every style", (progress, signal) =>
        request("POST", `/v1/run/${task.task}`, { body: form({ file, model: model.value(), contact_sheet: true }), progress, signal }),
      );
      const result = json.results[0];
      if (result.error) throw new ApiError(result.error, 422);
      const sheet = new Image();
      sheet.src = `data:image/png;base64,${result.image_png_base64}`;
      await sheet.decode();
      const { columns, gap, width, height } = result.cells;
      names = result.style.map((s) => s.name);
      const buttons = result.style.map((style) => {
        const cell = style.index + 1;
        const canvas = document.createElement("canvas");
        canvas.width = width;
        canvas.height = height;
        const x = gap + (cell % columns) * (width + gap);
        const y = gap + Math.floor(cell / columns) * (height + gap);
        canvas.getContext("2d").drawImage(sheet, x, y, width, height, 0, 0, width, height);
        const thumb = h("img", { alt: "", src: canvas.toDataURL("image/jpeg", 0.85) });
        return h(
          "button",
          { type: "button", "data-index": style.index, "aria-pressed": "false", onclick: () => pick(style.index) },
          thumb,
          `${style.index} ${style.name}`,
        );
      });
      picker.replaceChildren(...buttons);
      second.replaceChildren(...names.map((n, i) => h("option", { value: i, selected: i === 1 || undefined }, `${i} ${n}`)));
      pick(chosen);
    } catch (error) {
      showError(sheetStatus, new Error(`${error.message} (built-in styles need the multistyle26 model; choose "From a painting" otherwise)`));
    }
  }

  async function stylize() {
    if (!file) return;
    const fields = { file, model: model.value(), ...more.values() };
    if (currentMode() === "builtin") fields.style = chosen;
    if (currentMode() === "mix") {
      const share = Number(mix.value);
      fields.style = `${chosen}:${(1 - share).toFixed(2)},${second.value}:${share.toFixed(2)}`;
    }
    if (currentMode() === "picture") {
      if (!paintingFile) return showError(status, new Error("choose a painting to take the style from"));
      fields.style_image = paintingFile;
      fields.strength = strength.value;
    }
    run.disabled = true;
    try {
      const { blob } = await withProgress(status, "Stylizing", (progress, signal) =>
        request("POST", `/v1/run/${task.task}`, { body: form(fields), accept: "image/png", progress, signal }),
      );
      const url = URL.createObjectURL(blob);
      after.src = url;
      await after.decode();
      save.href = url;
      save.download = `${stem(file.name)}-styled.png`;
      save.hidden = false;
      $("#st-after-figure").hidden = false;
      $("figcaption", $("#st-after-figure")).textContent = `After (${after.naturalWidth}×${after.naturalHeight})`;
    } catch (error) {
      showError(status, error);
    } finally {
      run.disabled = false;
    }
  }

  run.addEventListener("click", stylize);
  return {
    element: h(
      "div",
      {},
      zone,
      modes,
      sheetStatus,
      picker,
      mixBox,
      pictureBox,
      h("div", { class: "controls" }, model.element, run),
      more.element,
      status,
      figures,
    ),
    paste: choose,
  };
}

// ---------------------------------------------------------------- any other task

function genericPanel(task) {
  const model = modelPicker(task);
  const more = moreOptions(task, []);
  const status = h("div");
  const output = h("pre", { class: "json", "aria-live": "polite" });
  let body = null;
  const run = h("button", { type: "button", class: "primary" }, "Run");
  const text = h("textarea", { "aria-label": "Text", hidden: task.input !== "text" });
  const zone = dropZone({ accept: task.extensions.map((e) => `.${e}`).join(","), label: `Choose ${task.input === "audio" ? "a recording" : "a file"}`, hint: "or drop one here", onfile: (f) => (body = f) });
  run.addEventListener("click", async () => {
    try {
      const payload = task.input === "text" && text.value.trim()
        ? { inputs: [text.value], options: more.values(), model: model.value() }
        : form({ file: body, model: model.value(), ...more.values() });
      const { json } = await withProgress(status, "Running", (progress, signal) => request("POST", `/v1/run/${task.task}`, { body: payload, progress, signal }));
      output.textContent = JSON.stringify(json.results, null, 2);
    } catch (error) {
      showError(status, error);
    }
  });
  return { element: h("div", {}, text, zone, h("div", { class: "controls" }, model.element, run), more.element, status, output) };
}

const PANELS = {
  "image-classification": imagePanel,
  "speech-recognition": speechPanel,
  "fake-news": textPanel,
  "style-transfer": stylePanel,
};

// ---------------------------------------------------------------- the page

const panels = new Map();
let tasks = [];

function currentTask() {
  const asked = new URLSearchParams(location.search).get("task");
  const found = tasks.find((t) => t.task === asked || t.aliases.includes(asked));
  return found || tasks[0];
}

/** Shows one task's panel; the others stay built (and keep their inputs) but hidden. */
function show(task) {
  for (const link of document.querySelectorAll("nav#tasks a")) {
    link.toggleAttribute("aria-current", link.dataset.task === task.task);
    if (link.dataset.task === task.task) link.setAttribute("aria-current", "page");
  }
  if (!panels.has(task.task)) {
    const panel = (PANELS[task.task] || genericPanel)(task);
    const explains = task.explain.available ? `Explain shows ${task.explain.what}.` : `No explanations: ${task.explain.why}.`;
    panel.section = h("section", { class: "task", id: `task-${task.task}`, "aria-labelledby": `${task.task}-title` },
      h("h2", { id: `${task.task}-title` }, task.task),
      h("p", { class: "note" }, `${task.summary}. ${explains}`),
      panel.element,
    );
    panels.set(task.task, panel);
    $("#main").append(panel.section);
  }
  for (const [name, panel] of panels) panel.section.hidden = name !== task.task;
  document.title = `${task.task} · zoo`;
}

async function load() {
  const state = $("#server-state");
  try {
    const ready = await fetch("/health").then((r) => r.ok).catch(() => false);
    const { json } = await request("GET", "/v1/tasks");
    tasks = json.tasks;
    state.textContent = ready ? "Ready." : "Models are still loading; the first request waits for them.";
  } catch (error) {
    state.textContent = "";
    showError($("#main"), error);
    if (error.status === 401) $("#key-box").open = true;
    return;
  }
  $("#main").replaceChildren();
  $("#tasks").replaceChildren(
    ...tasks.map((task) =>
      h("a", {
        href: `/?task=${encodeURIComponent(task.task)}`,
        "data-task": task.task,
        onclick: (e) => {
          if (e.ctrlKey || e.metaKey || e.shiftKey) return;
          e.preventDefault();
          history.pushState({}, "", `/?task=${encodeURIComponent(task.task)}`);
          show(task);
        },
      }, task.task),
    ),
  );
  if (!tasks.length) {
    $("#main").append(h("p", {}, "This server serves no task."));
    return;
  }
  show(currentTask());
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(KEY_STORE, $("#api-key").value.trim());
    $("#key-box").open = false;
    load();
  });
  $("#key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    $("#api-key").value = "";
  });
  window.addEventListener("popstate", () => tasks.length && show(currentTask()));
  // A pasted picture goes to the panel on show, if it takes pictures.
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    const panel = tasks.length && panels.get(currentTask().task);
    if (file && panel && panel.paste) {
      e.preventDefault();
      panel.paste(file);
    }
  });
  load();
});

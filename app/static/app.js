// The try-it page: plain JavaScript on the service's own API (GET /models, /methods; POST /detect, /attack,
// /purify, /audits; GET and DELETE /jobs/{id}, /audits/{id}). Every verdict shown is the service's own (its label
// and the threshold it used): the page never cuts p_fake itself.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
// The API key lives in this tab only (sessionStorage, never localStorage): closing the tab forgets it.
const KEY_STORE = "deepfake-guard.api-key";
// How the card names the origin of the threshold a verdict used (DetectResponse.threshold_source, app/schemas.py).
const THRESHOLD_SOURCES = {
  request: "set by the request",
  checkpoint: "the checkpoint's calibrated threshold",
  default: "the default: no calibrated threshold",
};
// Display names of the attacks; one registered later is shown by its own name.
const ATTACK_NAMES = { fgsm: "FGSM", pgd: "PGD", cw_l2: "Carlini-Wagner L2", apgd_ce: "APGD-CE", apgd_ce_l2: "APGD-CE (L2)", fab: "FAB", fab_l2: "FAB (L2)", square: "Square" };
const PURIFIER_NAMES = { dip: "Deep Image Prior", jpeg: "JPEG", median: "Median filter", bitdepth: "Bit depth" };

const state = {
  models: [],        // GET /models
  methods: null,     // GET /methods
  original: null,    // {blob, name, url}
  adversarial: null, // {blob, name, url}
  detected: {},      // detector name -> its /detect answer on the current image
  scored: false,     // the current image was accepted and scored: Attack and Purify may run
  epoch: 0,          // bumped when a new image is loaded: work begun for an older image stops and shows nothing
  jobs: { attack: null, purify: null }, // ids of the queued jobs the page is following
  busy: { attack: false, purify: false },
};

// ---- errors: the problem+json `detail` of any failed call, shown as a sentence --------------------------

class ApiError extends Error {}
// Work begun for an image that is no longer loaded: dropped silently.
class Stale extends Error {}
// A job that ended without a result (stopped or canceled): not an error when the user asked for it.
class JobEnded extends Error {}

function showError(err) {
  if (err instanceof Stale) return;
  const box = $("error");
  box.textContent = err instanceof ApiError ? err.message : `Something went wrong: ${err.message || err}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  let resp;
  try {
    resp = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(`The service did not answer ${path}: ${err.message}`);
  }
  if (resp.ok) return resp;
  const type = resp.headers.get("content-type") || "";
  let detail = `${resp.status} ${resp.statusText}`;
  if (type.includes("json")) {
    const body = await resp.json();
    detail = body.detail || body.title || detail;
  }
  if (resp.status === 401) {
    document.body.dataset.auth = "needed";
    $("api-key").focus();
    throw new ApiError(apiKey()
      ? `The service refused this API key (401): check the key in the "API key" field at the top and press "Use key" again.`
      : `This service needs an API key (401): enter yours in the "API key" field at the top and press "Use key".`);
  }
  throw new ApiError(`${options.method || "GET"} ${path} failed (${resp.status}): ${detail}`);
}

// ---- small view helpers -------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function pct(p) {
  return p === null || p === undefined ? "–" : `${(100 * p).toFixed(1)}%`;
}

function known(value) {
  return value !== null && value !== undefined;
}

// One p_fake bar; the dashed line marks the threshold the service used (none when it is not known).
function pBar(caption, p, label, threshold) {
  const fill = el("div", { class: `fill ${label}` });
  fill.style.width = known(p) ? pct(p) : "0%";
  const track = el("div", { class: "track", title: known(p) ? `p_fake = ${p.toFixed(4)}` : "no face found" }, fill);
  if (known(threshold)) {
    const mark = el("div", { class: "mark" });
    mark.style.left = `${(100 * threshold).toFixed(2)}%`;
    track.append(mark);
  }
  return el(
    "div", { class: "pbar", "data-p-fake": String(p) },
    el("span", { text: caption }), track, el("span", { class: "value", text: known(p) ? pct(p) : "no face" }),
  );
}

function modelInfo(name) {
  return state.models.find((m) => m.name === name) || null;
}

// Whether a detector learnt on the synthetic demo data (docs/DATA.md), which holds no face and no real deepfake.
// GET /models says so (`demo_data`); a service that predates that field is read from the checkpoint's name or
// the folder it was trained on (models/demo_checkpoints/*.json: provenance.dataset.path "data/demo").
function trainedOnDemoData(name) {
  const m = modelInfo(name);
  if (!m) return false;
  if (typeof m.demo_data === "boolean") return m.demo_data;
  const dataset = (m.provenance && m.provenance.dataset) || {};
  const folder = typeof dataset.path === "string" ? dataset.path.replace(/\/+$/, "").split("/").pop() : "";
  return m.name.startsWith("demo-") || folder === "demo";
}

// One detector's verdict, as the service gave it. `bars`: [{caption, p}]; `labels`: the service's labels, one per
// bar (shown "before → after" when there are two); `threshold`/`source`: what the labels were cut at, when known.
// `note`: say what a detector trained on the demo data is worth (once, on the verdicts of the image itself).
function verdictCard({ name, sha256, bars, labels, threshold = null, source = null, role = "", note = false }) {
  const final = labels[labels.length - 1];
  const card = el(
    "div", { class: "verdict", "data-model": name, "data-label": final || "" },
    el(
      "div", { class: "verdict-head" },
      el("span", { class: "name", text: role ? `${name} (${role})` : name }),
      el("span", { class: `label ${final || ""}`, text: labels.filter(known).map((l) => l.replace("_", " ")).join(" → ") }),
    ),
  );
  bars.forEach((b, i) => card.append(pBar(b.caption, b.p, labels[i] || "", threshold)));
  if (known(threshold)) {
    card.dataset.threshold = String(threshold);
    card.dataset.thresholdSource = source || "";
    const from = THRESHOLD_SOURCES[source] || (source ? `from ${source}` : "");
    card.append(el("div", { class: "threshold", text: `fake when p_fake ≥ ${threshold.toFixed(4)}${from ? ` (${from})` : ""}` }));
  }
  if (trainedOnDemoData(name)) card.dataset.demo = "true";
  if (note && trainedOnDemoData(name)) {
    card.append(el("p", {
      class: "demo-note",
      text: "Trained on the synthetic demo data (docs/DATA.md), which holds no face and no real deepfake: "
        + "its verdicts on real photos mean nothing.",
    }));
  }
  card.append(el("div", { class: "sha", text: `sha256 ${sha256}` }));
  return card;
}

function b64ToBlob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function showImage(img, link, blob, filename) {
  const url = URL.createObjectURL(blob);
  img.src = url;
  if (link) {
    link.href = url;
    link.download = filename;
  }
  return url;
}

function setProgress(block, fraction, text) {
  block.hidden = false;
  const value = Math.max(0, Math.min(1, fraction));
  block.querySelector(".fill").style.width = `${(100 * value).toFixed(1)}%`;
  block.querySelector(".bar").setAttribute("aria-valuenow", (100 * value).toFixed(0));
  block.querySelector(".progress-text").textContent = text;
}

function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return "ETA …";
  if (seconds < 60) return `ETA ${Math.ceil(seconds)} s`;
  return `ETA ${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
}

function cropFaces() {
  return $("crop-faces").checked;
}

function syncButtons() {
  $("detect-btn").disabled = !state.original;
  $("attack-btn").disabled = !state.scored || state.busy.attack;
  $("purify-btn").disabled = !state.scored || state.busy.purify;
  $("attack-stop").disabled = !state.jobs.attack;
  $("purify-stop").disabled = !state.jobs.purify;
}

// ---- the service's detectors and methods ----------------------------------------------------------------

async function loadModels() {
  const body = await (await api("/models")).json();
  state.models = body.models;
  const target = $("attack-target");
  const source = $("attack-source");
  target.replaceChildren();
  source.replaceChildren(el("option", { value: "", text: "= target (white-box)" }));
  for (const m of body.models) {
    const option = el("option", { value: m.name, text: m.name });
    if (m.default) option.selected = true;
    target.append(option);
    source.append(el("option", { value: m.name, text: m.name }));
  }
}

// The attack, defense and purifier choices and each one's parameters, from the registries (GET /methods).
async function loadMethods() {
  state.methods = await (await api("/methods")).json();
  const options = (decls, names) => decls.map((d) => el("option", { value: d.name, text: names[d.name] || d.name, title: d.summary }));
  $("attack-method").replaceChildren(...options(state.methods.attacks, ATTACK_NAMES));
  $("attack-defense").replaceChildren(
    el("option", { value: "none", text: "none (the bare detector)" }),
    ...options(state.methods.purifiers, PURIFIER_NAMES),
  );
  $("purify-method").replaceChildren(...options(state.methods.purifiers, PURIFIER_NAMES));
  syncParams("attack");
  syncParams("purify");
}

function declaration(kind) {
  const list = kind === "attack" ? state.methods.attacks : state.methods.purifiers;
  return list.find((d) => d.name === $(`${kind}-method`).value);
}

function placeholder(p) {
  if (p.default_doc) return `default ${p.default_doc}`;
  if (known(p.default)) return `default ${p.default}`;
  return "the method's own";
}

// One input per declared parameter, left empty (the service's default applies) unless the user sets it. The first
// two (eps and steps, a preset and its step count) stay in view; the rest fold away.
function paramField(kind, p) {
  const id = `${kind}-param-${p.name}`; // never a fixed id of the page (DIP declares `stop`)
  let input;
  if (p.type === "bool") {
    input = el("input", { id, type: "checkbox", "data-param": p.name });
    input.checked = p.default === true;
    input.dataset.default = String(p.default === true);
    const label = el("label", { class: "check", title: p.description }, input, ` ${p.name}`);
    return label;
  }
  if (p.type === "str") {
    input = el("select", { id, "data-param": p.name });
    if (!known(p.default)) input.append(el("option", { value: "", text: "(the method's choice)" }));
    for (const c of p.choices || []) {
      const option = el("option", { value: c, text: c });
      if (c === p.default) option.selected = true;
      input.append(option);
    }
  } else if (p.type === "float") {
    // Text, not a number field: budgets are written as fractions (8/255), which the API takes as they are.
    input = el("input", { id, type: "text", inputmode: "decimal", "data-param": p.name, placeholder: placeholder(p),
                          pattern: "\\s*[0-9.eE+-]+\\s*(/\\s*[0-9.eE+-]+\\s*)?" });
  } else {
    input = el("input", { id, type: "number", "data-param": p.name, placeholder: placeholder(p) });
    if (known(p.minimum)) input.min = String(p.minimum);
    if (known(p.maximum)) input.max = String(p.maximum);
    input.step = "1";
  }
  return el("label", { title: p.description }, `${p.name}`, input);
}

function syncParams(kind) {
  const decl = declaration(kind);
  const box = $(`${kind}-params`);
  box.replaceChildren();
  if (!decl) return;
  const main = decl.parameters.slice(0, 2);
  const rest = decl.parameters.slice(2);
  for (const p of main) box.append(paramField(kind, p));
  if (rest.length) {
    const more = el("details", { class: "more" }, el("summary", { text: `${decl.name} parameters (${rest.length})` }));
    const grid = el("div", { class: "params-grid" });
    for (const p of rest) grid.append(paramField(kind, p));
    more.append(grid);
    box.append(more);
  }
  box.append(el("p", { class: "hint method-summary", text: decl.summary }));
}

// The parameters the user set: empty numbers, a checkbox at its default and an unset choice are left out.
function appendParams(form, kind) {
  for (const input of $(`${kind}-params`).querySelectorAll("[data-param]")) {
    const name = input.dataset.param;
    if (input.type === "checkbox") {
      if (String(input.checked) !== input.dataset.default) form.append(name, String(input.checked));
    } else if (input.value !== "") {
      form.append(name, input.value);
    }
  }
}

// ---- image intake ---------------------------------------------------------------------------------------

// A new image: whatever ran for the previous one is dropped (its jobs stopped, its polling ended, its results
// cleared), and Attack and Purify wait until the new one is scored.
function useFile(file) {
  if (!file) return;
  clearError();
  state.epoch += 1;
  for (const kind of ["attack", "purify"]) {
    const id = state.jobs[kind];
    if (id) api(`/jobs/${id}`, { method: "DELETE" }).catch(() => {}); // best effort: its result is unwanted now
    state.jobs[kind] = null;
    state.busy[kind] = false;
    $(`${kind}-progress`).hidden = true;
    $(`${kind}-result`).hidden = true;
  }
  if (state.original) URL.revokeObjectURL(state.original.url);
  if (state.adversarial) URL.revokeObjectURL(state.adversarial.url);
  const url = showImage($("original-img"), $("original-download"), file, file.name || "image.png");
  state.original = { blob: file, name: file.name || "image.png", url };
  state.adversarial = null;
  state.scored = false;
  state.detected = {};
  $("faces").replaceChildren();
  $("verdicts").replaceChildren();
  $("original").hidden = false;
  $("original-name").textContent = `${state.original.name} (${Math.round(file.size / 1024)} kB)`;
  $("purify-adv-choice").disabled = true;
  document.querySelector('input[name="purify-input"][value="original"]').checked = true;
  syncButtons();
  detect().catch(showError);
}

async function useDemo() {
  const blob = await (await api("/static/demo/demo-fake.png")).blob();
  useFile(new File([blob], "demo-fake.png", { type: "image/png" }));
}

function setUpDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => useFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
}

// ---- 2. detect ------------------------------------------------------------------------------------------

// The faces /detect found (crop=faces: `results[].faces[].box` = [x0, y0, x1, y1] in the upload's pixels), one
// box each over the image, with every detector's p_fake and label for it. Placed in percent of the image's size,
// so the boxes follow the image at whatever size it is shown.
function drawFaces(answers) {
  const layer = $("faces");
  layer.replaceChildren();
  const faces = new Map(); // "x0,y0,x1,y1" -> [{model, p_fake, label}]
  let size = null;
  for (const a of answers) {
    const r = a.results[0];
    size = size || [r.width, r.height];
    for (const face of r.faces || []) {
      const key = face.box.join(",");
      if (!faces.has(key)) faces.set(key, []);
      faces.get(key).push({ model: a.model.name, p_fake: face.p_fake, label: face.label });
    }
  }
  for (const [key, verdicts] of faces) {
    const [x0, y0, x1, y1] = key.split(",").map(Number);
    const [w, h] = size;
    const anyFake = verdicts.some((v) => v.label === "fake");
    const box = el("div", { class: `face-box ${anyFake ? "fake" : "real"}`, "data-box": key });
    Object.assign(box.style, {
      left: `${(100 * x0) / w}%`, top: `${(100 * y0) / h}%`,
      width: `${(100 * (x1 - x0)) / w}%`, height: `${(100 * (y1 - y0)) / h}%`,
    });
    const tag = el("div", { class: "face-tag" });
    for (const v of verdicts) {
      tag.append(el("div", { class: v.label, "data-model": v.model, "data-label": v.label, text: `${v.model}: ${pct(v.p_fake)} ${v.label}` }));
    }
    box.append(tag);
    layer.append(box);
  }
}

async function detect() {
  if (!state.original) return;
  if (document.body.dataset.ready !== "true") await start(); // the detector list is still missing (no API key yet)
  const epoch = state.epoch;
  const image = state.original;
  const crop = cropFaces();
  state.scored = false;
  syncButtons();
  const box = $("verdicts");
  box.replaceChildren(el("p", { class: "hint", text: "Scoring…" }));
  let answers;
  try {
    answers = await Promise.all(
      state.models.map(async (m) => {
        const form = new FormData();
        form.append("file", image.blob, image.name);
        form.append("model", m.name);
        if (crop) form.append("crop", "faces");
        return (await api("/detect", { method: "POST", body: form })).json();
      }),
    );
  } catch (err) {
    if (epoch === state.epoch) box.replaceChildren(); // a refused image: no verdict, and Attack/Purify stay off
    throw err;
  }
  if (epoch !== state.epoch) return; // another image was loaded meanwhile
  state.detected = Object.fromEntries(answers.map((a) => [a.model.name, a]));
  box.replaceChildren(...answers.map((a) => verdictCard({
    name: a.model.name, sha256: a.model.sha256, bars: [{ caption: "p_fake", p: a.results[0].p_fake }],
    labels: [a.results[0].label], threshold: a.threshold, source: a.threshold_source, note: true,
  })));
  drawFaces(answers);
  state.scored = true;
  syncButtons();
}

// ---- jobs -----------------------------------------------------------------------------------------------

// Polls GET /jobs/{id} until the job ends; `onProgress(info)` sees every state. Resolves with the finished job;
// stops (Stale) as soon as another image is loaded.
async function pollJob(id, epoch, onProgress) {
  for (;;) {
    const info = await (await api(`/jobs/${id}`)).json();
    if (epoch !== state.epoch) throw new Stale();
    onProgress(info);
    if (info.status === "finished") return info;
    if (["stopped", "canceled"].includes(info.status)) throw new JobEnded(info.status);
    if (info.status === "failed") throw new ApiError(`Job ${id} failed: ${info.error || "no reason given"}`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    if (epoch !== state.epoch) throw new Stale();
  }
}

function describeProgress(info) {
  const p = info.progress;
  if (!p) return info.status === "queued" ? "queued, waiting for a worker" : info.status;
  return `${info.status}: ${p.iteration} / ${p.max_iterations} steps, ${formatEta(p.eta_s)}`;
}

// Follows a queued job of `kind` (attack or purify) with its progress bar; the job's Stop button DELETEs it.
async function followJob(kind, id, epoch) {
  state.jobs[kind] = id;
  syncButtons();
  const block = $(`${kind}-progress`);
  setProgress(block, 0, "queued");
  try {
    return await pollJob(id, epoch, (i) => setProgress(block, i.progress ? i.progress.fraction : 0, describeProgress(i)));
  } catch (err) {
    if (err instanceof JobEnded) setProgress(block, 0, `${err.message}: no result`);
    throw err;
  } finally {
    if (epoch === state.epoch) {
      state.jobs[kind] = null;
      syncButtons();
    }
  }
}

async function stopJob(kind) {
  if (state.jobs[kind]) await api(`/jobs/${state.jobs[kind]}`, { method: "DELETE" });
}

// ---- 3. attack ------------------------------------------------------------------------------------------

async function attack(event) {
  event.preventDefault();
  clearError();
  const epoch = state.epoch;
  const method = $("attack-method").value;
  const target = $("attack-target").value;
  const source = $("attack-source").value || target;
  const defense = $("attack-defense").value;
  const form = new FormData();
  form.append("file", state.original.blob, state.original.name);
  form.append("method", method);
  form.append("target", target);
  form.append("source", source);
  if (defense !== "none") form.append("defense", defense);
  if (cropFaces()) form.append("crop", "faces");
  appendParams(form, "attack");
  state.busy.attack = true;
  syncButtons();
  $("attack-result").hidden = true;
  $("attack-progress").hidden = true;
  try {
    const resp = await api("/attack", { method: "POST", body: form });
    let body = await resp.json();
    if (epoch !== state.epoch) return;
    let adv;
    if (resp.status === 202) { // over the synchronous budget, or through DIP: a job, polled like a purification
      const info = await followJob("attack", body.id, epoch);
      body = info.result;
      adv = await (await api(info.result_url)).blob();
      if (epoch !== state.epoch) return;
      setProgress($("attack-progress"), 1, `finished: ${body.iterations} iteration(s)`);
    } else {
      adv = b64ToBlob(body.adversarial, body.adversarial_media_type);
    }
    showAttack(body, adv, target, source);
  } catch (err) {
    if (!(err instanceof JobEnded)) throw err;
  } finally {
    if (epoch === state.epoch) {
      state.busy.attack = false;
      syncButtons();
    }
  }
}

function showAttack(body, advBlob, target, source) {
  const ext = advBlob.type === "image/jpeg" ? "jpg" : "png";
  $("attack-original").src = state.original.url;
  if (state.adversarial) URL.revokeObjectURL(state.adversarial.url);
  const url = showImage($("attack-adv"), $("attack-adv-download"), advBlob, `adversarial.${ext}`);
  state.adversarial = { blob: advBlob, name: `adversarial.${ext}`, url };
  $("purify-adv-choice").disabled = false;
  if (body.perturbation) {
    showImage($("attack-pert"), $("attack-pert-download"), b64ToBlob(body.perturbation, "image/png"), "perturbation.png");
    // perturbation_picture (models/attacks/report.py): 0.5 grey + delta scaled so the largest |delta| reaches 0 or 1.
    const gain = body.linf > 0 ? 0.5 / body.linf : 1;
    $("attack-pert-caption").textContent = `perturbation, magnified ×${gain.toFixed(0)}`;
    $("attack-pert-card").hidden = false;
  } else {
    $("attack-pert-card").hidden = true;
  }
  // The target's labels are the service's (label_before, label_after) at the threshold it states, when it does.
  const threshold = known(body.threshold) ? body.threshold : null;
  const cards = [verdictCard({
    name: target, sha256: body.target ? body.target.sha256 : "", role: "target",
    bars: [{ caption: "before", p: body.p_fake_before }, { caption: "after", p: body.p_fake_after }],
    labels: [body.label_before, body.label_after], threshold, source: threshold === null ? null : body.threshold_source,
  })];
  if (source !== target && known(body.source_p_fake_before)) {
    // The answer labels only the target; the source is labelled at the threshold /detect used for it.
    const cut = state.detected[source] ? state.detected[source].threshold : null;
    const labelAt = (p) => (known(cut) && known(p) ? (p >= cut ? "fake" : "real") : null);
    cards.push(verdictCard({
      name: source, sha256: body.source ? body.source.sha256 : "", role: "source",
      bars: [{ caption: "before", p: body.source_p_fake_before }, { caption: "after", p: body.source_p_fake_after }],
      labels: [labelAt(body.source_p_fake_before), labelAt(body.source_p_fake_after)], threshold: cut,
      source: known(cut) ? state.detected[source].threshold_source : null,
    }));
  }
  $("attack-verdicts").replaceChildren(...cards);
  const psnr = body.psnr === null ? "∞" : `${body.psnr.toFixed(1)} dB`;
  let outcome = body.success ? "Success: the target's verdict flipped" : "No flip: the target's verdict held";
  if (body.defense) {
    const d = body.defense;
    outcome += ` through ${d.purifier} (${d.resubmissions} purified resubmission(s), ${pct(d.success_rate)} fooled; `
      + `${d.bare_success ? "fools" : "does not fool"} the bare detector)`;
  }
  $("attack-summary").textContent =
    `${outcome} · L∞ ${body.linf.toFixed(4)} (${(255 * body.linf).toFixed(1)} / 255) · L2 ${body.l2.toFixed(3)} · PSNR ${psnr} · ` +
    `${body.iterations} iteration(s) · judged on the delivered ${ext.toUpperCase()} file`;
  $("attack-result").hidden = false;
}

// ---- 4. purify ------------------------------------------------------------------------------------------

function purifyInput() {
  const choice = document.querySelector('input[name="purify-input"]:checked').value;
  return choice === "adversarial" && state.adversarial ? state.adversarial : state.original;
}

async function purify(event) {
  event.preventDefault();
  clearError();
  const epoch = state.epoch;
  const input = purifyInput();
  const form = new FormData();
  form.append("file", input.blob, input.name);
  form.append("method", $("purify-method").value);
  if (cropFaces()) form.append("crop", "faces");
  appendParams(form, "purify");
  state.busy.purify = true;
  syncButtons();
  $("purify-result").hidden = true;
  try {
    const accepted = await (await api("/purify", { method: "POST", body: form })).json();
    if (epoch !== state.epoch) {
      api(`/jobs/${accepted.id}`, { method: "DELETE" }).catch(() => {});
      return;
    }
    const info = await followJob("purify", accepted.id, epoch);
    setProgress($("purify-progress"), 1, `finished: ${info.result.iterations ?? ""} steps in ${info.result.seconds.toFixed(1)} s`);
    const png = await (await api(info.result_url)).blob();
    if (epoch !== state.epoch) return;
    $("purify-input-img").src = input.url;
    showImage($("purify-img"), $("purify-download"), png, "purified.png");
    // The job's own labels (label_before, label_after): the service cut them, at the threshold it states.
    $("purify-verdicts").replaceChildren(
      ...Object.entries(info.result.detectors).map(([name, s]) => {
        const threshold = known(s.threshold) ? s.threshold : known(info.result.threshold) ? info.result.threshold : null;
        const source = s.threshold_source || info.result.threshold_source || null;
        return verdictCard({
          name, sha256: s.sha256, bars: [{ caption: "input", p: s.p_fake_before }, { caption: "purified", p: s.p_fake_after }],
          labels: [s.label_before, s.label_after], threshold, source,
        });
      }),
    );
    $("purify-result").hidden = false;
  } catch (err) {
    if (!(err instanceof JobEnded)) throw err;
  } finally {
    if (epoch === state.epoch) {
      state.busy.purify = false;
      syncButtons();
    }
  }
}

// ---- 5. audit -------------------------------------------------------------------------------------------

// A robustness audit (POST /audits, docs/AUDIT.md "As a service job"): the page polls GET /audits/{id} and shows the
// shards done per threat. The report files need the Authorization header when API keys are on, which a plain link
// cannot send: the page fetches them with it and links their blob: URLs (the HTML report is self-contained).
const audit = { id: null, busy: false, urls: [] };

function syncAudit() {
  $("audit-btn").disabled = audit.busy || document.body.dataset.ready !== "true" || !$("audit-file").files.length;
  $("audit-stop").disabled = !audit.id;
}

function fillAuditModels() {
  const select = $("audit-model");
  const chosen = select.value;
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.name, text: m.name })));
  if (state.models.some((m) => m.name === chosen)) select.value = chosen;
  const defense = $("audit-defense");
  const kept = defense.value;
  const names = ["none", ...state.methods.purifiers.map((p) => p.name)];
  defense.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  defense.value = names.includes(kept) ? kept : "none";
  fillAuditSources();
  syncAudit();
}

// Transfer sources: every other detector the service serves, one checkbox each.
function fillAuditSources() {
  const box = $("audit-transfer");
  const ticked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const others = state.models.filter((m) => m.name !== $("audit-model").value);
  box.replaceChildren(el("legend", { text: "Transfer from (black-box)" }));
  if (!others.length) box.append(el("span", { class: "hint", text: "no other detector is served" }));
  for (const m of others) {
    const input = el("input", { type: "checkbox", value: m.name, "data-source": m.name });
    input.checked = ticked.has(m.name);
    box.append(el("label", { class: "check" }, input, ` ${m.name}`));
  }
}

function describeAudit(info) {
  if (info.status === "queued" && info.done === 0) return `queued: ${info.images} images, ${info.total} shards, waiting for a worker`;
  if (info.status === "stopped") return `stopped: ${info.done} / ${info.total} shards, no report`;
  return `${info.status}: ${info.done} / ${info.total} shards, ${formatEta(info.eta_s)}`;
}

function showThreats(info) {
  const list = $("audit-threats");
  list.replaceChildren(...info.progress.map((t) => el(
    "li", { "data-threat": t.threat, "data-done": String(t.done), "data-total": String(t.total), class: t.done === t.total ? "done" : "" },
    el("span", { class: "name", text: t.threat }), el("span", { class: "count", text: `${t.done} / ${t.total}` }),
  )));
  list.hidden = false;
}

// The three report files, fetched with the page's API key, as blob: URLs on the links.
async function linkReports(id) {
  for (const url of audit.urls) URL.revokeObjectURL(url);
  audit.urls = [];
  const files = [["html", "report.html", "text/html"], ["json", "report.json", "application/json"], ["csv", "per_image.csv", "text/csv"]];
  for (const [key, name, type] of files) {
    const bytes = await (await api(`/audits/${id}/${name}`)).arrayBuffer();
    const url = URL.createObjectURL(new Blob([bytes], { type }));
    audit.urls.push(url);
    const link = $(`audit-report-${key}`);
    link.href = url;
    link.dataset.path = `/audits/${id}/${name}`;
  }
  $("audit-reports").hidden = false;
}

async function runAudit(event) {
  event.preventDefault();
  clearError();
  const form = new FormData();
  const file = $("audit-file").files[0];
  form.append("file", file, file.name);
  form.append("model", $("audit-model").value);
  form.append("profile", $("audit-profile").value);
  const eps = $("audit-eps").value.trim();
  if (eps) form.append("eps", eps);
  const l2 = $("audit-l2").value.trim();
  if (l2) form.append("l2_rms", l2);
  for (const input of $("audit-transfer").querySelectorAll("input:checked")) form.append("transfer_from", input.value);
  if ($("audit-defense").value !== "none") form.append("defense", $("audit-defense").value);
  for (const item of $("audit-set").value.split(/\s+/).filter(Boolean)) form.append("set", item);
  audit.busy = true;
  syncAudit();
  $("audit-reports").hidden = true;
  $("audit-threats").hidden = true;
  const block = $("audit-progress");
  block.dataset.status = "";
  try {
    setProgress(block, 0, "uploading…");
    const accepted = await (await api("/audits", { method: "POST", body: form })).json();
    audit.id = accepted.id;
    syncAudit();
    for (;;) {
      const info = await (await api(`/audits/${accepted.id}`)).json();
      block.dataset.status = info.status;
      setProgress(block, info.total ? info.done / info.total : 0, describeAudit(info));
      showThreats(info);
      if (info.status === "finished") break;
      if (info.status === "stopped") return;
      if (info.status === "failed") throw new ApiError(`Audit ${accepted.id} failed: ${info.error || "no reason given"}`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    audit.id = null;
    syncAudit();
    await linkReports(accepted.id);
    setProgress(block, 1, `finished: ${accepted.images} images, ${accepted.shards} shards`);
  } finally {
    audit.id = null;
    audit.busy = false;
    syncAudit();
  }
}

async function stopAudit() {
  if (audit.id) await api(`/audits/${audit.id}`, { method: "DELETE" });
}

// ---- start ----------------------------------------------------------------------------------------------

// The service's detectors and methods; again after an API key is entered.
async function start() {
  await Promise.all([loadModels(), loadMethods()]);
  delete document.body.dataset.auth;
  document.body.dataset.ready = "true";
  fillAuditModels();
}

function useKey(event) {
  event.preventDefault();
  clearError();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  start().then(() => (state.original ? detect() : null)).catch(showError);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDrop();
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", useKey);
  $("demo-btn").addEventListener("click", () => useDemo().catch(showError));
  $("detect-btn").addEventListener("click", () => { clearError(); detect().catch(showError); });
  $("crop-faces").addEventListener("change", () => { clearError(); detect().catch(showError); });
  $("attack-form").addEventListener("submit", (e) => attack(e).catch(showError));
  $("attack-method").addEventListener("change", () => syncParams("attack"));
  $("attack-stop").addEventListener("click", () => stopJob("attack").catch(showError));
  $("purify-form").addEventListener("submit", (e) => purify(e).catch(showError));
  $("purify-method").addEventListener("change", () => syncParams("purify"));
  $("purify-stop").addEventListener("click", () => stopJob("purify").catch(showError));
  $("audit-form").addEventListener("submit", (e) => runAudit(e).catch(showError));
  $("audit-file").addEventListener("change", syncAudit);
  $("audit-model").addEventListener("change", fillAuditSources);
  $("audit-stop").addEventListener("click", () => stopAudit().catch(showError));
  syncButtons();
  start().catch(showError);
});

// The try-it page: plain JavaScript on the service's own API (POST /detect, /attack, /purify; GET /jobs/{id}).
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;

const state = {
  models: [],        // GET /models
  original: null,    // {blob, name, url}
  adversarial: null, // {blob, name, url}
  purifyJob: null,   // id of the running purification
};

// ---- errors: the problem+json `detail` of any failed call, shown as a sentence --------------------------

class ApiError extends Error {}

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? err.message : `Something went wrong: ${err.message || err}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, options);
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
  return `${(100 * p).toFixed(1)}%`;
}

function labelOf(p, threshold = 0.5) {
  return p >= threshold ? "fake" : "real";
}

function pBar(caption, p) {
  const fill = el("div", { class: `fill ${labelOf(p)}` });
  fill.style.width = pct(p);
  return el(
    "div", { class: "pbar", "data-p-fake": String(p) },
    el("span", { text: caption }),
    el("div", { class: "track", title: `p_fake = ${p.toFixed(4)} (dashed line: threshold 0.5)` }, fill),
    el("span", { class: "value", text: pct(p) }),
  );
}

// One detector's verdict: name, label, p_fake bar(s), sha256. `after` adds a second bar (attack, purify).
function verdictCard(name, sha256, before, after = null, captions = ["p_fake", ""]) {
  const final = after === null ? before : after;
  const card = el(
    "div", { class: "verdict", "data-model": name, "data-label": labelOf(final) },
    el(
      "div", { class: "verdict-head" },
      el("span", { class: "name", text: name }),
      el("span", { class: `label ${labelOf(final)}`, text: after === null ? labelOf(before) : `${labelOf(before)} → ${labelOf(after)}` }),
    ),
    pBar(captions[0], before),
  );
  if (after !== null) card.append(pBar(captions[1], after));
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
  const bar = block.querySelector(".bar");
  bar.setAttribute("aria-valuenow", (100 * value).toFixed(0));
  block.querySelector(".progress-text").textContent = text;
}

function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return "ETA …";
  if (seconds < 60) return `ETA ${Math.ceil(seconds)} s`;
  return `ETA ${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
}

// ---- models ---------------------------------------------------------------------------------------------

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

// ---- image intake ---------------------------------------------------------------------------------------

function useFile(file) {
  if (!file) return;
  clearError();
  if (state.original) URL.revokeObjectURL(state.original.url);
  const url = showImage($("original-img"), $("original-download"), file, file.name || "image.png");
  state.original = { blob: file, name: file.name || "image.png", url };
  state.adversarial = null;
  $("original").hidden = false;
  $("original-name").textContent = `${state.original.name} (${Math.round(file.size / 1024)} kB)`;
  $("attack-result").hidden = true;
  $("purify-result").hidden = true;
  $("purify-adv-choice").disabled = true;
  document.querySelector('input[name="purify-input"][value="original"]').checked = true;
  for (const id of ["detect-btn", "attack-btn", "purify-btn"]) $(id).disabled = false;
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

// Face boxes, drawn over the image when a /detect result carries them (`faces: [{box: [x0, y0, x1, y1]}]`
// in the upload's pixels); results without faces draw nothing.
function drawFaces(results) {
  const img = $("original-img");
  const canvas = $("faces");
  canvas.width = img.naturalWidth || 1;
  canvas.height = img.naturalHeight || 1;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.lineWidth = Math.max(1, canvas.width / 100);
  for (const r of results) {
    for (const face of r.faces || []) {
      const [x0, y0, x1, y1] = face.box;
      ctx.strokeStyle = labelOf(r.p_fake) === "fake" ? "#b3261e" : "#1b7f3b";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
}

async function detect() {
  if (!state.original) return;
  const box = $("verdicts");
  box.replaceChildren(el("p", { class: "hint", text: "Scoring…" }));
  const answers = await Promise.all(
    state.models.map(async (m) => {
      const form = new FormData();
      form.append("file", state.original.blob, state.original.name);
      form.append("model", m.name);
      return (await api("/detect", { method: "POST", body: form })).json();
    }),
  );
  box.replaceChildren(
    ...answers.map((a) => verdictCard(a.model.name, a.model.sha256, a.results[0].p_fake)),
  );
  drawFaces(answers.map((a) => a.results[0]));
}

// ---- jobs -----------------------------------------------------------------------------------------------

// Polls GET /jobs/{id} until the job ends; `onProgress(info)` sees every state. Resolves with the finished job.
async function pollJob(id, onProgress) {
  for (;;) {
    const info = await (await api(`/jobs/${id}`)).json();
    onProgress(info);
    if (info.status === "finished") return info;
    if (["failed", "stopped", "canceled"].includes(info.status)) {
      throw new ApiError(`Job ${id} ${info.status}: ${info.error || "no reason given"}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function describeProgress(info) {
  const p = info.progress;
  if (!p) return info.status === "queued" ? "queued, waiting for a worker" : info.status;
  return `${info.status}: ${p.iteration} / ${p.max_iterations} steps, ${formatEta(p.eta_s)}`;
}

// ---- 3. attack ------------------------------------------------------------------------------------------

function modelSha(name) {
  const m = state.models.find((x) => x.name === name);
  return m ? m.sha256 : "";
}

async function attack(event) {
  event.preventDefault();
  clearError();
  const method = $("attack-method").value;
  const target = $("attack-target").value;
  const source = $("attack-source").value || target;
  const form = new FormData();
  form.append("file", state.original.blob, state.original.name);
  form.append("method", method);
  form.append("target", target);
  form.append("source", source);
  if (method !== "cw_l2") form.append("eps", $("attack-eps").value);
  $("attack-btn").disabled = true;
  $("attack-result").hidden = true;
  try {
    const resp = await api("/attack", { method: "POST", body: form });
    let body = await resp.json();
    let adv;
    if (resp.status === 202) { // over the synchronous budget: a job, polled like a purification
      const info = await pollJob(body.id, (i) => setProgress(
        $("attack-progress"), i.progress ? i.progress.fraction : 0, describeProgress(i)));
      body = info.result;
      adv = await (await api(info.result_url)).blob();
    } else {
      adv = b64ToBlob(body.adversarial, body.adversarial_media_type);
    }
    $("attack-progress").hidden = true;
    showAttack(body, adv, target, source);
  } finally {
    $("attack-btn").disabled = false;
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
  const cards = [verdictCard(target, modelSha(target), body.p_fake_before, body.p_fake_after, ["before", "after"])];
  if (source !== target && body.source_p_fake_before !== null && body.source_p_fake_before !== undefined) {
    const card = verdictCard(source, modelSha(source), body.source_p_fake_before, body.source_p_fake_after, ["before", "after"]);
    card.querySelector(".name").textContent = `${source} (source)`;
    cards.push(card);
  }
  cards[0].querySelector(".name").textContent = `${target} (target)`;
  $("attack-verdicts").replaceChildren(...cards);
  const psnr = body.psnr === null ? "∞" : `${body.psnr.toFixed(1)} dB`;
  $("attack-summary").textContent =
    `${body.success ? "Success: the target's verdict flipped" : "No flip: the target's verdict held"} · ` +
    `L∞ ${body.linf.toFixed(4)} (${(255 * body.linf).toFixed(1)} / 255) · L2 ${body.l2.toFixed(3)} · PSNR ${psnr} · ` +
    `${body.iterations} iteration(s) · judged on the delivered ${ext.toUpperCase()} file`;
  $("attack-result").hidden = false;
}

function syncAttackFields() {
  $("eps-field").hidden = $("attack-method").value === "cw_l2";
}

// ---- 4. purify ------------------------------------------------------------------------------------------

function purifyInput() {
  const choice = document.querySelector('input[name="purify-input"]:checked').value;
  return choice === "adversarial" && state.adversarial ? state.adversarial : state.original;
}

async function purify(event) {
  event.preventDefault();
  clearError();
  const input = purifyInput();
  const method = $("purify-method").value;
  const form = new FormData();
  form.append("file", input.blob, input.name);
  form.append("method", method);
  if (method === "dip") {
    form.append("preset", $("purify-preset").value);
    if ($("purify-iterations").value) form.append("max_iterations", $("purify-iterations").value);
  }
  $("purify-btn").disabled = true;
  $("purify-result").hidden = true;
  try {
    const accepted = await (await api("/purify", { method: "POST", body: form })).json();
    state.purifyJob = accepted.id;
    $("purify-stop").disabled = false;
    setProgress($("purify-progress"), 0, "queued");
    const info = await pollJob(accepted.id, (i) => setProgress(
      $("purify-progress"), i.progress ? i.progress.fraction : 0, describeProgress(i)));
    setProgress($("purify-progress"), 1, `finished: ${info.result.iterations ?? ""} steps in ${info.result.seconds.toFixed(1)} s`);
    const png = await (await api(info.result_url)).blob();
    $("purify-input-img").src = input.url;
    showImage($("purify-img"), $("purify-download"), png, "purified.png");
    $("purify-verdicts").replaceChildren(
      ...Object.entries(info.result.detectors).map(([name, s]) =>
        verdictCard(name, s.sha256, s.p_fake_before, s.p_fake_after, ["input", "purified"])),
    );
    $("purify-result").hidden = false;
  } finally {
    state.purifyJob = null;
    $("purify-stop").disabled = true;
    $("purify-btn").disabled = false;
  }
}

async function stopPurify() {
  if (state.purifyJob) await api(`/jobs/${state.purifyJob}`, { method: "DELETE" });
}

function syncPurifyFields() {
  const dip = $("purify-method").value === "dip";
  for (const node of document.querySelectorAll(".dip-only")) node.hidden = !dip;
}

// ---- start ----------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  setUpDrop();
  $("demo-btn").addEventListener("click", () => useDemo().catch(showError));
  $("detect-btn").addEventListener("click", () => { clearError(); detect().catch(showError); });
  $("attack-form").addEventListener("submit", (e) => attack(e).catch(showError));
  $("attack-method").addEventListener("change", syncAttackFields);
  $("purify-form").addEventListener("submit", (e) => purify(e).catch(showError));
  $("purify-method").addEventListener("change", syncPurifyFields);
  $("purify-stop").addEventListener("click", () => stopPurify().catch(showError));
  syncAttackFields();
  syncPurifyFields();
  loadModels()
    .then(() => { document.body.dataset.ready = "true"; })
    .catch(showError);
});

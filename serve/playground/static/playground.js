// The bake playground: what the server runs (GET /info), then the served task's form, sent to the Hugging Face
// route (POST /predict) as any client would. Nothing here is fetched from anywhere but this server.
"use strict";

(() => {
  const KEY_STORAGE = "bake-api-key";
  const $ = (id) => document.getElementById(id);
  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
  let shownTask = null;

  /** An answer other than 2xx, with the message of the server's error body. */
  class ServerError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  /** The message of an error body in any protocol's shape: {"error": "..."} (Hugging Face, OIP, operational
   * routes), {"error": {"message"}} (OpenAI), {"detail": [{"loc", "msg"}]} (Cog). */
  function errorMessage(body) {
    if (typeof body?.error === "string") return body.error;
    if (typeof body?.error?.message === "string") return body.error.message;
    if (Array.isArray(body?.detail)) {
      return body.detail.map((item) => `${(item.loc || []).join(".")}: ${item.msg}`).join("; ");
    }
    return null;
  }

  async function failure(response) {
    const text = await response.text();
    let message = null;
    try {
      message = errorMessage(JSON.parse(text));
    } catch {
      // not JSON: a proxy's page, say; its first words are the best there is
    }
    return new ServerError(message || text.slice(0, 200) || response.statusText, response.status);
  }

  /** fetch() with the API key, throwing ServerError unless 2xx; a 401 also asks for the key. */
  async function request(path, init = {}) {
    const headers = new Headers(init.headers);
    if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
    const response = await fetch(path, { ...init, headers });
    if (response.ok) return response;
    const error = await failure(response);
    if (response.status === 401) askForKey(error.message);
    throw error;
  }

  function setStatus(text) {
    $("status").textContent = text;
    $("status").hidden = !text;
  }

  function showError(error) {
    const box = $("error");
    if (error instanceof ServerError) {
      box.textContent = `Error ${error.status}: ${error.message}`;
    } else {
      box.textContent = `The server could not be reached: ${error.message}`;
    }
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // ---- the API key ----

  function askForKey(message) {
    setStatus(apiKey ? `The key was refused: ${message}` : "Enter the API key to use this server.");
    $("key-form").hidden = false;
    $("key").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    $("key-form").hidden = true;
    clearError();
    loadInfo();
  });

  // ---- what the server runs ----

  async function loadInfo() {
    let info;
    try {
      info = await (await request("/info")).json();
    } catch (error) {
      if (error.status === 401) return;
      showError(error);
      setTimeout(loadInfo, 2000);
      return;
    }
    clearError();
    showFacts(info);
    if (info.state === "failed") {
      setStatus(`The model failed to load: ${info.error}`);
    } else if (info.state !== "ready") {
      setStatus("The model is loading…");
      setTimeout(loadInfo, 1000);
    } else {
      setStatus("");
      showTask(info);
    }
  }

  function showFacts(info) {
    $("fact-model").textContent = info.model;
    const sha = info.commit_sha || "";
    $("fact-revision").textContent = sha ? `${info.revision} @ ${sha.slice(0, 12)}` : info.revision;
    $("fact-revision").title = sha;
    $("fact-task").textContent = info.task || "detected when loaded";
    $("fact-device").textContent = `${info.device} · ${info.dtype}`;
    const batching = info.batching;
    $("fact-batching").textContent = `up to ${batching.max_batch_size}, waiting ${batching.max_wait_ms} ms`;
  }

  function showTask(info) {
    if (shownTask === info.task) return;
    shownTask = info.task;
    if (info.task === "image-classification") {
      setUpClassification(info.task_details);
    } else if (info.task === "text-to-image") {
      setUpGeneration(info.task_details);
    } else {
      setStatus(`No playground for the task ${info.task}: see the API docs.`);
    }
  }

  // ---- image classification ----

  function setUpClassification(details) {
    $("classify").hidden = false;
    if (details.num_labels) $("top-k").max = details.num_labels;
    const zone = $("drop-zone");
    $("file").addEventListener("change", () => {
      if ($("file").files.length) classify($("file").files[0]);
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
    });
    document.addEventListener("paste", (event) => {
      const file = [...event.clipboardData.files][0];
      if (file) classify(file);
    });
  }

  async function classify(file) {
    clearError();
    const preview = $("preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    preview.onerror = () => {
      preview.hidden = true;
    };
    $("labels").replaceChildren();
    $("classify-stats").textContent = "Classifying…";
    const topK = encodeURIComponent($("top-k").value.trim() || "5"); // the server checks it
    const started = performance.now();
    try {
      const response = await request(`/predict?top_k=${topK}`, { method: "POST", body: file });
      const labels = await response.json();
      const latency = performance.now() - started;
      showLabels(labels);
      const batch = response.headers.get("X-Batch-Size");
      $("classify-stats").textContent =
        `${Math.round(latency)} ms · batch of ${batch} · queued ` +
        `${response.headers.get("X-Queue-Time-Ms")} ms · on the device ` +
        `${response.headers.get("X-Inference-Time-Ms")} ms`;
    } catch (error) {
      $("classify-stats").textContent = "";
      showError(error);
    }
  }

  function showLabels(labels) {
    const items = labels.map(({ label, score }) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "score";
      value.textContent = score.toFixed(3);
      item.append(name, bar, value);
      return item;
    });
    $("labels").replaceChildren(...items);
  }

  // ---- text to image ----

  let running = null;

  function setUpGeneration(details) {
    $("generate").hidden = false;
    const defaults = details.defaults || {};
    const limits = details.limits || {};
    $("steps").value = defaults.num_inference_steps ?? "";
    if (limits.max_steps) $("steps").max = limits.max_steps;
    $("guidance").value = defaults.guidance_scale ?? "";
    $("width").value = defaults.width ?? "";
    $("height").value = defaults.height ?? "";
    const options = (details.schedulers || []).map((name) => new Option(name, name));
    $("scheduler").replaceChildren(...options);
    $("scheduler").value = details.scheduler || "";
    $("generate-form").addEventListener("submit", (event) => {
      event.preventDefault();
      generate();
    });
    $("cancel-button").addEventListener("click", () => running?.abort());
  }

  function generationParameters() {
    const parameters = {
      num_inference_steps: Number.parseInt($("steps").value, 10),
      guidance_scale: Number.parseFloat($("guidance").value),
      width: Number.parseInt($("width").value, 10),
      height: Number.parseInt($("height").value, 10),
    };
    for (const name of Object.keys(parameters)) {
      if (Number.isNaN(parameters[name])) delete parameters[name];
    }
    if ($("scheduler").value) parameters.scheduler = $("scheduler").value;
    if ($("negative-prompt").value.trim()) parameters.negative_prompt = $("negative-prompt").value;
    if ($("seed").value !== "") parameters.seed = Number.parseInt($("seed").value, 10);
    return parameters;
  }

  async function generate() {
    clearError();
    const controller = new AbortController();
    running = controller;
    $("generate-button").disabled = true;
    $("cancel-button").disabled = false;
    $("progress").value = 0;
    $("progress-text").textContent = "Waiting for the device…";
    $("generate-stats").textContent = "";
    const body = { inputs: $("prompt").value, parameters: generationParameters() };
    const started = performance.now();
    let step = 0;
    let total = 0;
    try {
      const response = await request("/predict", {
        method: "POST",
        body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        signal: controller.signal,
      });
      for await (const { name, data } of serverSentEvents(response.body)) {
        if (name === "progress") {
          ({ step, total } = data);
          $("progress").max = total;
          $("progress").value = step;
          $("progress-text").textContent = `Step ${step} of ${total}`;
        } else if (name === "image") {
          $("generated").src = `data:${data.media_type};base64,${data.image}`;
          $("generated").hidden = false;
          const seconds = (performance.now() - started) / 1000;
          $("generate-stats").textContent = `${seconds.toFixed(1)} s · ${total} steps · seed ${data.seed}`;
        } else if (name === "error") {
          throw new ServerError(data.error, data.status);
        }
      }
    } catch (error) {
      if (error.name === "AbortError") {
        $("progress-text").textContent = `Cancelled at step ${step} of ${total || "?"}`;
      } else {
        $("progress-text").textContent = "";
        showError(error);
      }
    } finally {
      running = null;
      $("generate-button").disabled = false;
      $("cancel-button").disabled = true;
    }
  }

  /** The events of a text/event-stream body, as {name, data} with data parsed from JSON. */
  async function* serverSentEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        yield { name, data: data.length ? JSON.parse(data.join("\n")) : null };
      }
    }
  }

  loadInfo();
})();

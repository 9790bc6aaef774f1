// The page of `hart-unified serve`: no build step, no libraries. Drawing reads the streamed endpoint
// (Server-Sent Events over a POST, so it is read with fetch rather than EventSource).
"use strict";

const $ = (id) => document.getElementById(id);
const png = (b64) => "data:image/png;base64," + b64;

$("token").value = sessionStorage.getItem("hart-token") || "";
$("token").addEventListener("change", () => sessionStorage.setItem("hart-token", $("token").value));

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

// Yields {event, data} for each Server-Sent Event of a fetch response body.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield { event, data: data ? JSON.parse(data) : {} };
    }
  }
}

function addToGallery(prompt, src, seed, caption) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = prompt;
  const cap = document.createElement("figcaption");
  cap.textContent = `${prompt} (seed ${seed}) \u2192 \u201c${caption}\u201d`;
  fig.append(img, cap);
  $("gallery").prepend(fig);
}

async function draw(ev) {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  const body = { prompt, n: 1, caption: true };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("guidance").value !== "") body.guidance = Number($("guidance").value);
  const status = $("draw-status");
  $("draw-button").disabled = true;
  $("previews").replaceChildren();
  $("final").hidden = true;
  $("final").removeAttribute("src");
  $("caption").textContent = "";
  setStatus(status, "queued\u2026");
  let image = null, seed = null;
  try {
    const response = await fetch("/v1/images/generations/stream", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await errorOf(response));
    for await (const { event, data } of events(response)) {
      if (event === "preview") {
        const img = document.createElement("img");
        img.className = "preview pixels";
        img.dataset.scale = data.scale;
        img.alt = `scale ${data.scale + 1} of ${data.num_scales}`;
        img.title = img.alt;
        img.src = png(data.b64_png);
        $("previews").append(img);
        setStatus(status, `scale ${data.scale + 1} of ${data.num_scales}`);
      } else if (event === "image") {
        image = png(data.b64_json);
        seed = data.seed;
        $("final").src = image;
        $("final").alt = prompt;
        $("final").hidden = false;
        setStatus(status, `drawn with seed ${seed}; captioning\u2026`);
      } else if (event === "caption") {
        $("caption").textContent = data.caption;
        addToGallery(prompt, image, seed, data.caption);
      } else if (event === "error") {
        throw new Error(data.error ? data.error.message : "error");
      } else if (event === "done") {
        setStatus(status, `done (seed ${seed})`);
      }
    }
  } catch (e) {
    setStatus(status, e.message, true);
  } finally {
    $("draw-button").disabled = false;
  }
}

async function understand(ev) {
  ev.preventDefault();
  const file = $("upload").files[0];
  if (!file) return;
  const question = $("question").value.trim();
  const form = new FormData();
  form.append("file", file);
  if (question) form.append("question", question);
  const out = $("upload-answer");
  $("upload-preview").src = URL.createObjectURL(file);
  $("upload-preview").hidden = false;
  setStatus(out, question ? "asking\u2026" : "captioning\u2026");
  try {
    const response = await fetch(question ? "/v1/images/answers" : "/v1/images/captions",
                                 { method: "POST", headers: headers(), body: form });
    if (!response.ok) throw new Error(await errorOf(response));
    setStatus(out, (await response.json()).text);
  } catch (e) {
    setStatus(out, e.message, true);
  }
}

async function health() {
  try {
    const h = await (await fetch("/health")).json();
    const size = h.image_size ? `, ${h.image_size[1]}x${h.image_size[0]} images` : "";
    $("model-info").textContent = `model ${h.model}: ${h.modalities.join(", ")}${size}`;
  } catch (e) {
    $("model-info").textContent = "server unreachable";
  }
}

$("draw-form").addEventListener("submit", draw);
$("upload-form").addEventListener("submit", understand);
health();

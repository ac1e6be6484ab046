// visiontune serve: the predict page. Each image is one POST /predict, so one bad file shows
// its own error and the server batches the requests that arrive together.
"use strict";

const $ = (id) => document.getElementById(id);
let card = null;

async function loadCard() {
  const response = await fetch("/model");
  card = await response.json();
  const member = card.members[0] || {};
  const backbone = member.backbone || "model";
  const kind = card.kind === "ensemble" ? `ensemble of ${card.members.length}` : card.kind;
  $("summary").textContent = `${kind} · ${backbone} · ${card.classes.length} classes: ` +
    card.classes.join(", ");
  for (const mode of card.serving.tta) $("tta").appendChild(element("option", { text: mode }));
  if (!card.serving.explain) $("explain-label").hidden = true;
}

function bars(top) {
  return top.map((t, i) => {
    const percent = (100 * t.probability).toFixed(1);
    const bar = element("div", { class: i === 0 ? "bar first" : "bar" }, [
      element("span", { class: "fill", style: `width:${percent}%` }),
      element("span", { class: "text", text: `${t.class} ${percent} %` }),
    ]);
    bar.dataset.class = t.class;
    return bar;
  });
}

function show(box, prediction) {
  const first = prediction.top[0];
  box.dataset.topClass = first.class;
  box.dataset.probability = String(first.probability);
  if (prediction.unknown !== undefined) {
    const text = prediction.unknown
      ? `unknown: unlike the training images (score ${prediction.unknown_score.toFixed(2)})`
      : "like the training images";
    box.appendChild(element("span", { class: prediction.unknown ? "badge unknown" : "badge known",
                                      text }));
  }
  for (const bar of bars(prediction.top)) box.appendChild(bar);
  if (prediction.note) box.appendChild(element("div", { class: "note", text: prediction.note }));
  if (prediction.explanation) {
    box.querySelector(".pics").appendChild(
      element("img", { src: prediction.explanation, alt: "Grad-CAM overlay", class: "overlay" }));
  }
}

async function classify(file) {
  const box = element("div", { class: "result" }, [
    element("div", { class: "pics" }, [element("img", { src: URL.createObjectURL(file),
                                                         alt: file.name })]),
    element("div", { class: "name", text: file.name }),
  ]);
  $("results").prepend(box);
  const params = new URLSearchParams({ top_k: $("top-k").value, tta: $("tta").value || "none",
                                       explain: $("explain").checked && card.serving.explain });
  const body = new FormData();
  body.append("files", file, file.name);
  try {
    const response = await fetch(`/predict?${params}`, { method: "POST", body });
    const reply = await response.json();
    if (!response.ok) throw new Error(reply.error || response.statusText);
    show(box, reply.predictions[0]);
  } catch (error) {
    box.dataset.error = error.message;
    box.appendChild(element("div", { class: "error", text: error.message }));
  } finally {
    box.dataset.done = "true";
  }
}

function classifyAll(files) {
  for (const file of files) classify(file);
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("files").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("files").click(); });
  $("files").addEventListener("change", (e) => { classifyAll(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classifyAll(Array.from(e.dataTransfer.files).filter((f) => f.type.startsWith("image/")));
  });
  $("clear").addEventListener("click", () => { $("results").textContent = ""; });
}

// The camera needs a secure context (localhost is one) and a browser that offers getUserMedia.
function setUpCamera() {
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) return;
  let stream = null;
  const stop = () => {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("camera-box").style.display = "none";
  };
  $("camera").hidden = false;
  $("camera").addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true });
      $("video").srcObject = stream;
      $("camera-box").style.display = "block";
    } catch (error) {
      $("results").prepend(element("div", { class: "error", text: `camera: ${error.message}` }));
    }
  });
  $("camera-close").addEventListener("click", stop);
  $("snap").addEventListener("click", () => {
    const video = $("video");
    const canvas = element("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      const name = `camera-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
      classify(new File([blob], name, { type: "image/png" }));
    }, "image/png");
  });
}

setUpDrop();
setUpCamera();
loadCard().then(() => { document.body.dataset.ready = "true"; }).catch((error) => {
  $("summary").textContent = `could not load the model card: ${error.message}`;
});

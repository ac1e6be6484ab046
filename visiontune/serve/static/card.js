// visiontune serve: the model card page, drawn from GET /model.
"use strict";

const percent = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(2)} %`);
const plain = (x) => (x === null || x === undefined ? "–" :
  typeof x === "object" ? JSON.stringify(x) : String(x));

function table(rows) {
  return element("table", {}, rows.map(([key, value]) =>
    element("tr", {}, [element("th", { text: key }), element("td", { text: value })])));
}

function section(title, ...children) {
  return element("section", {}, [element("h2", { text: title }), ...children]);
}

function memberRows(member) {
  if (member.file) {  // an ONNX export: what its metadata carries
    return [["file", member.file], ["backbone", plain(member.backbone)],
            ["preprocess", plain(member.preprocess)], ["temperature", plain(member.temperature)]];
  }
  const data = member.data || {};
  const m = member.metrics || {};
  const val = m.validation || {};
  const test = m.test;
  const calibration = m.calibration || {};
  const rejection = m.rejection || {};
  return [
    ["run folder", plain(member.run)],
    ["backbone", `${plain(member.backbone)} (${plain(member.weights)})`],
    ["strategy", plain(member.strategy)],
    ["augmentation", plain(member.augment)],
    ["precision", member.precision ? `${plain(member.precision.inference)} inference ` +
      `(${plain(member.precision.reason)})` : "–"],
    ["training data", `${plain(data.root)}: ${plain(data.train)} train, ${plain(data.val)} ` +
      `validation (${plain(data.val_source)}), ${plain(data.test)} test images`],
    ["validation", `accuracy ${percent(val.accuracy)} on ${plain(val.images)} images`],
    ["test", test ? `accuracy ${percent(test.accuracy)}, macro F1 ${percent(test.macro_f1)} ` +
      `on ${plain(test.images)} images` : "no test split"],
    ["calibration", calibration.temperature !== undefined ?
      `temperature ${Number(calibration.temperature).toFixed(3)}` : plain(m.calibration)],
    ["unknown images", rejection.rate !== undefined ?
      `flags ${percent(rejection.rate)} of validation images by design` : plain(m.rejection)],
    ["input", plain(member.preprocess)],
    ["trained with", plain(member.trained_with)],
    ["training time", m.train_seconds ? `${m.train_seconds.toFixed(0)} s` : "–"],
  ];
}

function draw(card) {
  const main = document.getElementById("card");
  main.textContent = "";
  main.appendChild(section("Classes", element("p", { text: card.classes.join(", ") })));
  card.members.forEach((member, i) => {
    const title = card.members.length > 1 ? `Member ${i + 1}` : "Model";
    main.appendChild(section(title, table(memberRows(member))));
  });
  const reports = card.reports.length
    ? element("ul", {}, card.reports.map((url) =>
        element("li", {}, [element("a", { href: url, text: `evaluation report ${url}` })])))
    : element("p", { class: "muted",
                     text: "No evaluation report in the run folder (visiontune evaluate RUN " +
                           "DATA --report RUN/report writes one)." });
  main.appendChild(section("Evaluation reports", reports));
  main.appendChild(section("Serving", table(Object.entries(card.serving).map(
    ([k, v]) => [k, plain(v)]))));
  main.appendChild(section("Versions serving it", table(Object.entries(card.versions))));
  document.body.dataset.ready = "true";
}

fetch("/model").then((r) => r.json()).then(draw).catch((error) => {
  document.getElementById("card").textContent = `could not load the model card: ${error.message}`;
});

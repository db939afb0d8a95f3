// The upload page: one image at a time through POST /predict (and POST /explain for the overlay).
// A multi-label model's answer has "labels" (every class at or above its threshold) instead of "class":
// the page shows each label, or 'no label above threshold', and every class's probability with its threshold.
// An answer with "unknown": true (its OOD score past the threshold) shows 'this does not look like any of: <classes>'
// above the closest class.
'use strict';

const fileInput = document.getElementById('file-input');
const dropZone = document.getElementById('drop-zone');
const statusLine = document.getElementById('status');
const camToggle = document.getElementById('cam-toggle');
const overlay = document.getElementById('overlay');
let currentFile = null;
let uploads = 0;  // which upload the overlay shows, so a new file always gets its own
let thresholds = null;  // multi-label models: {class: threshold}, from /metadata or the last answer
let ensemble = null;  // an ensemble's members and weights, from /metadata (null for one model)
let classNames = [];  // from /metadata, for the 'none of these' line

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle('error', Boolean(isError));
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail}`;
  } catch (e) {
    return `${response.status}: ${response.statusText}`;
  }
}

async function loadMetadata() {
  const response = await fetch('/metadata');
  if (!response.ok) { return; }
  const meta = await response.json();
  document.getElementById('title').textContent = `fpclass: ${meta.name}`;
  const scores = meta.validation_scores || {};
  let accuracy = typeof scores.accuracy === 'number' ? `, validation accuracy ${scores.accuracy.toFixed(3)}` : '';
  if (meta.head === 'multilabel') {
    thresholds = (meta.calibration || {}).thresholds || {};
    const map = typeof scores.mean_average_precision === 'number'
      ? `, validation mAP ${scores.mean_average_precision.toFixed(3)}` : '';
    accuracy = `, multi-label${map}`;
  }
  ensemble = meta.ensemble || null;
  classNames = meta.class_names;
  const ood = meta.ood
    ? `; flags images unlike ${meta.class_names.join(', ')} (${meta.ood.score} score, ` +
      `${(100 * meta.ood.false_rejection).toFixed(0)}% of held-out ones flagged by design)`
    : '';
  // An ensemble mixes its members' probabilities: Grad-CAM explains one model, so the page offers none.
  camToggle.parentElement.hidden = meta.explain === false;
  const crossFitted = ((ensemble && ensemble.cross_fitted) || []).find((row) => row.model === 'ensemble');
  const model = ensemble
    ? `ensemble of ${ensemble.models.length} models (` +
      ensemble.members.map((m) => `${m.folder} x${m.weight.toFixed(2)}`).join(', ') + ')' +
      (crossFitted ? `, cross-fitted ${crossFitted.metric} ${crossFitted['cross-fitted']}` : '')
    : `${meta.model}, ${meta.checkpoint} checkpoint (epoch ${meta.epoch})`;
  document.getElementById('model-info').textContent =
    `${model}${accuracy}; classes ` +
    `${meta.class_names.join(', ')}; images become ${meta.input.width}x${meta.input.height}, ` +
    `${meta.input.channels === 1 ? 'grayscale' : 'RGB'}${ood}.`;
}

function showProbabilities(result) {
  const body = document.querySelector('#probabilities tbody');
  const multilabel = Array.isArray(result.labels);
  body.replaceChildren();
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement('tr');
    const top = multilabel ? result.labels.includes(name) : name === result.class;
    row.className = 'probability' + (top ? ' top' : '');
    row.dataset.class = name;
    row.dataset.probability = String(p);
    const label = document.createElement('td');
    label.className = 'name';
    label.textContent = name;
    const barCell = document.createElement('td');
    barCell.className = 'bar-cell';
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    if (multilabel && thresholds && typeof thresholds[name] === 'number') {
      const track = document.createElement('div');  // the bar, and a mark at the class's threshold
      track.className = 'track';
      const mark = document.createElement('div');
      mark.className = 'threshold';
      mark.style.left = `${(100 * thresholds[name]).toFixed(1)}%`;
      mark.title = `threshold ${(100 * thresholds[name]).toFixed(1)}%`;
      row.dataset.threshold = String(thresholds[name]);
      track.append(bar, mark);
      barCell.append(track);
    } else {
      barCell.append(bar);
    }
    const value = document.createElement('td');
    value.className = 'value';
    value.textContent = `${(100 * p).toFixed(1)}%`;
    row.append(label, barCell, value);
    body.append(row);
  }
}

function showLabels(labels) {
  const holder = document.getElementById('predicted-labels');
  holder.replaceChildren();
  if (!labels.length) {
    const none = document.createElement('span');
    none.className = 'none';
    none.textContent = 'no label above threshold';
    holder.append(none);
    return;
  }
  for (const name of labels) {
    const chip = document.createElement('span');
    chip.className = 'label';
    chip.dataset.label = name;
    chip.textContent = name;
    holder.append(chip);
  }
}

async function showOverlay() {
  overlay.hidden = !camToggle.checked;
  if (!camToggle.checked && currentFile) { document.getElementById('file-name').textContent = currentFile.name; }
  if (!camToggle.checked || !currentFile || overlay.dataset.upload === String(uploads)) { return; }
  const form = new FormData();
  form.append('file', currentFile);
  const response = await fetch('/explain', { method: 'POST', body: form });
  if (!response.ok) { setStatus(await errorText(response), true); return; }
  if (overlay.src) { URL.revokeObjectURL(overlay.src); }
  overlay.src = URL.createObjectURL(await response.blob());
  overlay.dataset.upload = String(uploads);
  const explained = response.headers.get('x-explained-class');  // multi-label: the most probable class
  const shown = explained === null ? document.getElementById('predicted-class').textContent
    : decodeURIComponent(explained);
  document.getElementById('file-name').textContent = `${currentFile.name}; right: Grad-CAM of class ${shown}`;
}

async function classify(file) {
  document.body.dataset.state = 'busy';
  setStatus(`classifying ${file.name}…`);
  const form = new FormData();
  form.append('file', file);
  const response = await fetch('/predict', { method: 'POST', body: form });
  if (!response.ok) {
    setStatus(await errorText(response), true);
    document.body.dataset.state = 'error';
    return;
  }
  const result = await response.json();
  currentFile = file;
  uploads += 1;
  const preview = document.getElementById('preview');
  if (preview.src) { URL.revokeObjectURL(preview.src); }
  preview.src = URL.createObjectURL(file);
  document.getElementById('file-name').textContent = file.name;
  const multilabel = Array.isArray(result.labels);
  const unknown = result.unknown === true;
  const unknownLine = document.getElementById('unknown-line');
  unknownLine.hidden = !unknown;
  unknownLine.textContent = unknown ? `this does not look like any of: ${classNames.join(', ')}` : '';
  document.getElementById('predicted-class-label').textContent = unknown ? 'Closest class' : 'Predicted class';
  document.getElementById('predicted-class-line').hidden = multilabel;
  document.getElementById('predicted-labels-line').hidden = !multilabel;
  if (multilabel) {
    if (result.thresholds) { thresholds = result.thresholds; }
    showLabels(result.labels);
  } else {
    document.getElementById('predicted-class').textContent = result.class;
  }
  showProbabilities(result);
  const calibration = multilabel ? ', fitted per-label thresholds' : ', calibrated probabilities';
  document.getElementById('prediction-note').textContent =
    (ensemble ? `ensemble of ${ensemble.models.length} models` : `${result.model}, epoch ${result.epoch}`) +
    (result.calibrated ? calibration : '') +
    (multilabel ? '; a label is predicted when its probability reaches its threshold (red mark)' : '');
  document.getElementById('result').hidden = false;
  setStatus('');
  await showOverlay();
  document.body.dataset.state = 'done';
}

fileInput.addEventListener('change', () => { if (fileInput.files.length) { classify(fileInput.files[0]); } });
camToggle.addEventListener('change', showOverlay);
for (const name of ['dragenter', 'dragover']) {
  dropZone.addEventListener(name, (event) => { event.preventDefault(); dropZone.classList.add('dragging'); });
}
for (const name of ['dragleave', 'drop']) {
  dropZone.addEventListener(name, () => dropZone.classList.remove('dragging'));
}
dropZone.addEventListener('drop', (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) { classify(event.dataTransfer.files[0]); }
});
loadMetadata();

// fuse3d's region painter (viz.paint): paint a region on the preprocessed 518×518 crop with its
// 37×37 patch grid. Brush, eraser, box, clear and brush size; the selected-patch count updates live.
// The painted mask goes back to Python as a PNG data URI (trait "mask") at the end of each stroke.
const SIZE = 518, GRID = 37, PATCH = 14;

function render({ model, el }) {
  el.classList.add("fuse3d-painter");
  const bar = document.createElement("div");
  bar.className = "fuse3d-painter-bar";
  const tools = {};
  for (const [name, label] of [["brush", "Brush"], ["eraser", "Eraser"], ["box", "Box"]]) {
    const b = document.createElement("button");
    b.textContent = label;
    b.dataset.tool = name;
    b.onclick = () => { model.set("tool", name); model.save_changes(); };
    tools[name] = b;
    bar.appendChild(b);
  }
  const clear = document.createElement("button");
  clear.textContent = "Clear";
  clear.dataset.tool = "clear";
  bar.appendChild(clear);
  const sizeLabel = document.createElement("label");
  sizeLabel.textContent = " size ";
  const size = document.createElement("input");
  size.type = "range"; size.min = 2; size.max = 80; size.value = model.get("brush");
  size.oninput = () => { model.set("brush", Number(size.value)); model.save_changes(); };
  sizeLabel.appendChild(size);
  bar.appendChild(sizeLabel);
  const count = document.createElement("span");
  count.className = "fuse3d-painter-count";
  bar.appendChild(count);

  const stack = document.createElement("div");
  stack.className = "fuse3d-painter-stack";
  const layers = {};
  for (const name of ["image", "paint", "grid", "cursor"]) {
    const c = document.createElement("canvas");
    c.width = SIZE; c.height = SIZE;
    c.className = "fuse3d-painter-" + name;
    stack.appendChild(c);
    layers[name] = c;
  }
  el.appendChild(bar);
  el.appendChild(stack);

  const paint = layers.paint.getContext("2d", { willReadFrequently: true });
  let foreground = new Uint8Array(GRID * GRID);

  // the crop and the patches with any non-black pixel (the object's patches)
  const img = new Image();
  img.onload = () => {
    const ctx = layers.image.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0, SIZE, SIZE);
    const px = ctx.getImageData(0, 0, SIZE, SIZE).data;
    foreground = new Uint8Array(GRID * GRID);
    for (let y = 0; y < SIZE; y++) for (let x = 0; x < SIZE; x++) {
      const i = 4 * (y * SIZE + x);
      if (px[i] || px[i + 1] || px[i + 2]) foreground[Math.floor(y / PATCH) * GRID + Math.floor(x / PATCH)] = 1;
    }
    updateCount();
  };
  img.src = model.get("image");

  const grid = layers.grid.getContext("2d");
  grid.strokeStyle = "rgba(255,255,255,0.18)";
  grid.lineWidth = 1;
  for (let i = 0; i <= GRID; i++) {
    grid.beginPath(); grid.moveTo(i * PATCH + 0.5, 0); grid.lineTo(i * PATCH + 0.5, SIZE); grid.stroke();
    grid.beginPath(); grid.moveTo(0, i * PATCH + 0.5); grid.lineTo(SIZE, i * PATCH + 0.5); grid.stroke();
  }

  function selected() {
    // a patch is selected when any of its pixels is painted and it is an object patch (as Condition)
    const px = paint.getImageData(0, 0, SIZE, SIZE).data;
    const sel = new Uint8Array(GRID * GRID);
    for (let y = 0; y < SIZE; y++) for (let x = 0; x < SIZE; x++) {
      if (px[4 * (y * SIZE + x) + 3] > 0) sel[Math.floor(y / PATCH) * GRID + Math.floor(x / PATCH)] = 1;
    }
    let n = 0;
    for (let i = 0; i < sel.length; i++) n += sel[i] & foreground[i];
    return n;
  }
  function updateCount() {
    const n = selected();
    count.textContent = ` ${n} patches selected`;
    return n;
  }
  function publish() {
    model.set("selected_patches", updateCount());
    model.set("mask", layers.paint.toDataURL("image/png"));
    model.save_changes();
  }
  function showTool() {
    for (const [name, b] of Object.entries(tools)) b.classList.toggle("active", model.get("tool") === name);
  }

  // a mask set from Python (painter.set_mask) replaces the painting
  function loadMask() {
    const uri = model.get("mask");
    paint.clearRect(0, 0, SIZE, SIZE);
    if (!uri) { updateCount(); return; }
    const m = new Image();
    m.onload = () => { paint.clearRect(0, 0, SIZE, SIZE); paint.drawImage(m, 0, 0); updateCount(); };
    m.src = uri;
  }
  let ownChange = false;
  model.on("change:mask", () => { if (!ownChange) loadMask(); });
  model.on("change:tool", showTool);
  model.on("change:brush", () => { size.value = model.get("brush"); });
  clear.onclick = () => { paint.clearRect(0, 0, SIZE, SIZE); ownChange = true; publish(); ownChange = false; };

  // strokes are opaque on their own canvas (shown at 55 % by CSS): the eraser then clears exactly what
  // it covers, and overlapping strokes do not darken
  const FILL = "rgb(255,140,0)";
  function at(ev) {
    const r = layers.cursor.getBoundingClientRect();
    return [(ev.clientX - r.left) * SIZE / r.width, (ev.clientY - r.top) * SIZE / r.height];
  }
  function dab(x0, y0, x1, y1) {
    paint.globalCompositeOperation = model.get("tool") === "eraser" ? "destination-out" : "source-over";
    paint.strokeStyle = FILL; paint.fillStyle = FILL;
    paint.lineCap = "round"; paint.lineWidth = model.get("brush");
    paint.beginPath(); paint.moveTo(x0, y0); paint.lineTo(x1, y1); paint.stroke();
  }
  let down = null, last = null;
  const cursor = layers.cursor.getContext("2d");
  layers.cursor.addEventListener("pointerdown", (ev) => {
    layers.cursor.setPointerCapture(ev.pointerId);
    down = last = at(ev);
    if (model.get("tool") !== "box") dab(...down, ...down);
  });
  layers.cursor.addEventListener("pointermove", (ev) => {
    if (!down) return;
    const p = at(ev);
    if (model.get("tool") === "box") {
      cursor.clearRect(0, 0, SIZE, SIZE);
      cursor.strokeStyle = "#ff8c00"; cursor.lineWidth = 2;
      cursor.strokeRect(down[0], down[1], p[0] - down[0], p[1] - down[1]);
    } else {
      dab(...last, ...p);
    }
    last = p;
  });
  layers.cursor.addEventListener("pointerup", (ev) => {
    if (!down) return;
    const p = at(ev);
    if (model.get("tool") === "box") {
      cursor.clearRect(0, 0, SIZE, SIZE);
      paint.globalCompositeOperation = "source-over";
      paint.fillStyle = FILL;
      paint.fillRect(Math.min(down[0], p[0]), Math.min(down[1], p[1]), Math.abs(p[0] - down[0]), Math.abs(p[1] - down[1]));
    }
    down = last = null;
    ownChange = true; publish(); ownChange = false;
  });
  showTool();
  loadMask();
}

export default { render };

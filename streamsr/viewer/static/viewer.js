// streamsr view: two synchronised OpenSeadragon viewers (LR x4 and output), side by side or with a
// slider, and the job's progress polled from api/status.
// URL options: ?mode=side|slider &split=0.5 (slider position) &panel=0 (hide the job panel) &poll=3000 (ms)
(function () {
  "use strict";

  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const panes = $("panes");
  const POLL_MS = Math.max(250, parseInt(params.get("poll") || "3000", 10) || 3000);

  let info = null;
  let lrViewer = null;
  let outViewer = null;
  let leading = null; // the viewer whose zoom/pan is being copied (guards the echo)
  let version = null; // tiles_version of the output tiles shown
  let mode = params.get("mode") === "slider" ? "slider" : "side";
  let split = clamp(parseFloat(params.get("split") || "0.5"), 0, 1);

  function clamp(v, lo, hi) { return isNaN(v) ? 0.5 : Math.min(hi, Math.max(lo, v)); }

  function makeViewer(id, url) {
    return OpenSeadragon({
      id: id,
      prefixUrl: "static/openseadragon/images/",
      tileSources: url,
      drawer: "canvas",
      imageSmoothingEnabled: false, // show the real pixels when zoomed in
      showNavigationControl: false,
      maxZoomPixelRatio: 16,
      visibilityRatio: 0.1,
      animationTime: 0.5,
      blendTime: 0,
      preserveImageSizeOnResize: true, // a taller or wider pane shows more, at the same scale
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
  }

  // ---- synchronised zoom and pan ------------------------------------------------------------------
  function follow(src, dst, immediately) {
    if (!src || !dst || leading === dst) return;
    leading = src;
    try {
      dst.viewport.zoomTo(src.viewport.getZoom(immediately), null, immediately);
      dst.viewport.panTo(src.viewport.getCenter(immediately), immediately);
    } finally {
      leading = null;
    }
  }

  function link(a, b) {
    const copy = (ev) => { if (!resizing) follow(a, b, !!ev.immediately); };
    a.addHandler("zoom", copy);
    a.addHandler("pan", copy);
  }

  function isHome(v) {
    const vp = v.viewport;
    const home = vp.getHomeBounds().getCenter();
    const c = vp.getCenter();
    return Math.abs(vp.getZoom() / vp.getHomeZoom() - 1) < 1e-3 && Math.abs(c.x - home.x) + Math.abs(c.y - home.y) < 1e-3;
  }

  function goHome(immediately) {
    outViewer.viewport.goHome(immediately);
    if (lrViewer) lrViewer.viewport.goHome(immediately);
  }

  // OpenSeadragon rescales the zoom of each viewer when its container changes size (mode switch, panel,
  // window); the two viewers do that on their own (no syncing meanwhile), then the LR viewer is set from
  // the output viewer, or both go home again if they were home before (the image keeps fitting the pane
  // until someone zooms).
  let resizing = false;
  let resizeTimer = null;
  let resizeWasHome = null;
  function onResize() {
    if (resizeWasHome === null) resizeWasHome = outViewer.world.getItemCount() === 0 || isHome(outViewer);
    resizing = true;
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      resizing = false;
      if (resizeWasHome) goHome(true);
      else if (lrViewer) follow(outViewer, lrViewer, true);
      resizeWasHome = null;
    }, 120);
  }

  // ---- modes ----------------------------------------------------------------------------------------
  function setMode(m) {
    mode = m;
    panes.className = info && info.layers.lr ? mode : "single";
    document.querySelectorAll("#modes button").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
    setSplit(split);
  }

  function setSplit(v) {
    split = clamp(v, 0, 1);
    panes.style.setProperty("--split", (split * 100).toFixed(3) + "%");
  }

  function dragSplit() {
    const handle = $("split");
    let dragging = false;
    const move = (e) => {
      if (!dragging) return;
      const r = panes.getBoundingClientRect();
      setSplit((e.clientX - r.left) / r.width);
      e.preventDefault();
    };
    handle.addEventListener("pointerdown", (e) => {
      dragging = true;
      handle.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    handle.addEventListener("pointermove", move);
    const stop = () => { dragging = false; };
    handle.addEventListener("pointerup", stop);
    handle.addEventListener("pointercancel", stop);
  }

  // ---- output refresh while the job runs ------------------------------------------------------------
  function refreshOutput(v) {
    const world = outViewer.world;
    outViewer.addTiledImage({
      tileSource: info.layers.output.replace(/\?v=\d+$/, "") + "?v=" + v,
      success: (ev) => {
        const item = ev.item;
        const dropOlder = () => {
          const index = world.getIndexOfItem(item);
          for (let i = index - 1; i >= 0; i--) world.removeItem(world.getItemAt(i));
        };
        if (item.getFullyLoaded()) dropOlder();
        else {
          item.addOnceHandler("fully-loaded-change", dropOlder);
          setTimeout(dropOlder, 15000); // never pile up images if it never fully loads
        }
      },
    });
  }

  // ---- status panel ---------------------------------------------------------------------------------
  function fmtSeconds(s) {
    if (s === null || s === undefined) return "?";
    s = Math.max(0, Math.floor(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const mm = String(m).padStart(2, "0"), ss = String(sec).padStart(2, "0");
    return h ? `${h}h${mm}m${ss}s` : `${m}m${ss}s`;
  }

  function fill(table, rows) {
    table.replaceChildren(...rows.filter((r) => r[1] !== undefined && r[1] !== null && r[1] !== "").map(([k, v]) => {
      const tr = document.createElement("tr");
      const a = document.createElement("td");
      const b = document.createElement("td");
      a.textContent = k;
      b.textContent = String(v);
      tr.append(a, b);
      return tr;
    }));
  }

  function pct(a, b) { return b ? ` (${(100 * a / b).toFixed(1)}%)` : ""; }

  function render(s) {
    $("title").textContent = s.title || "streamsr view";
    $("summary").textContent = `${s.width}\u00d7${s.height} px`;
    const badge = $("badge");
    badge.textContent = s.status;
    badge.className = s.status;
    $("phase").textContent = s.phase ? "\u2014 " + s.phase : "";
    if (s.kind !== "job") {
      $("bar-tasks").style.width = "100%";
      fill($("progress"), [["kind", s.kind], ["size", `${s.width} \u00d7 ${s.height}`]]);
      fill($("settings"), []);
      fill($("files"), [["path", s.title]]);
      $("note").textContent = "";
      return;
    }
    $("bar-tasks").style.width = (s.total_tasks ? 100 * s.cursor / s.total_tasks : 0) + "%";
    const secs = s.seconds || {};
    fill($("progress"), [
      ["tasks", `${s.cursor} / ${s.total_tasks}${pct(s.cursor, s.total_tasks)}`],
      ["model blocks", `${s.model_blocks_done} / ${s.model_blocks_total}`],
      ["output blocks", `${s.output_blocks_done} / ${s.output_blocks}`],
      ["ETA", s.status === "done" ? "\u2014" : fmtSeconds(s.eta_seconds)],
      ["time", fmtSeconds(secs.total || 0)],
      ["stage", s.chain ? `${s.stage} (${s.chain_stage} of ${s.chain})` : s.stage],
    ]);
    const j = s.job || {}, g = s.geometry || {};
    fill($("settings"), [
      ["steps", `${j.steps} ${j.sampler}`],
      ["seed", j.seed],
      ["batch", `${j.batch_rows}\u00d7${j.batch_cols}`],
      ["anchor", j.anchor],
      ["device", `${j.device} ${j.dtype} ${j.backend}`],
      ["sigma", `${j.sigma_min} \u2026 ${j.sigma_max}, rho ${j.rho}`],
      ["prompt +", j.prompt_pos],
      ["prompt \u2212", j.prompt_neg],
      ["LR", `${g.lr_width} \u00d7 ${g.lr_height}`],
      ["output", `${s.width} \u00d7 ${s.height} (\u00d7${s.scale})`],
      ["block", `${g.block_size} px`],
    ]);
    const inp = s.input || {};
    fill($("files"), [
      ["job", s.title],
      ["input", `${inp.path} (${inp.mode} ${inp.bit_depth}-bit)`],
      ["output", s.output || "(array only)"],
      ["model", s.model],
    ]);
  }

  async function poll() {
    try {
      const r = await fetch("api/status", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const s = await r.json();
      render(s);
      if (outViewer && s.tiles_version !== version) {
        version = s.tiles_version;
        refreshOutput(version);
      }
      $("error").textContent = "";
    } catch (e) {
      $("error").textContent = "status: " + e.message;
    }
  }

  // For scripts and tests: whether every tile in view is loaded and drawn, and the output tiles' version.
  function settled(v) {
    const vp = v.viewport;
    const c = vp.getCenter(true), t = vp.getCenter(false);
    return Math.abs(vp.getZoom(true) / vp.getZoom(false) - 1) < 1e-6 && Math.abs(c.x - t.x) + Math.abs(c.y - t.y) < 1e-9 &&
      v.world.getItemCount() === 1 && v.world.getItemAt(0).getFullyLoaded();
  }
  window.streamsrView = {
    ready: () => !!outViewer && !resizing && [outViewer, lrViewer].every((v) => !v || settled(v)),
    version: () => version,
    mode: () => mode,
    setMode: (m) => setMode(m),
    setSplit: (v) => setSplit(v),
    split: () => split,
    zoom: () => [lrViewer, outViewer].map((v) => v && v.viewport.getZoom(true)),
  };

  // ---- start ----------------------------------------------------------------------------------------
  async function start() {
    const r = await fetch("api/info", { cache: "no-store" });
    info = await r.json();
    version = info.tiles_version;
    document.title = "streamsr view \u2014 " + info.title;
    if (params.get("panel") === "0") $("panel").classList.add("hidden");
    $("panel-toggle").addEventListener("click", () => { $("panel").classList.toggle("hidden"); });
    document.querySelectorAll("#modes button").forEach((b) => b.addEventListener("click", () => setMode(b.dataset.mode)));
    $("home").addEventListener("click", () => goHome(false));
    if (info.layers.lr) {
      lrViewer = makeViewer("osd-lr", info.layers.lr);
    } else {
      document.body.classList.add("single");
    }
    outViewer = makeViewer("osd-out", info.layers.output);
    outViewer.addHandler("resize", onResize);
    if (lrViewer) {
      lrViewer.addHandler("resize", onResize);
      link(lrViewer, outViewer);
      link(outViewer, lrViewer);
    }
    setMode(mode);
    dragSplit();
    poll();
    setInterval(poll, POLL_MS);
  }

  start().catch((e) => { $("error").textContent = "cannot start: " + e.message; });
})();

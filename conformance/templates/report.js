// The report page's script: matrix filters and the per-cell drill-down.
// Every value from the results is inserted as text (textContent), never as markup.
"use strict";
(function () {
  const matrix = document.getElementById("matrix");
  const drill = document.getElementById("drill");
  const headers = Array.from(matrix.querySelectorAll("thead th[data-col]"));
  const groups = Array.from(matrix.querySelectorAll("thead th[data-columns]")).map(th => ({th, cols: th.dataset.columns.split(" ").map(Number)}));
  const rows = Array.from(matrix.querySelectorAll("tbody tr")).map(tr => Array.from(tr.querySelectorAll("td")));
  const ncols = headers.length;

  // ---------------------------------------------------------------- filters
  function selected(name) {
    const box = document.querySelector(`fieldset[data-filter="${name}"]`);
    return box ? new Set(Array.from(box.querySelectorAll("input:checked")).map(i => i.value)) : null;
  }
  function applyFilters() {
    const pick = {framework: selected("framework"), device: selected("device"), dtype: selected("dtype"), gradients: selected("gradients")};
    const outcomes = selected("outcome");
    const visible = new Array(ncols).fill(false);
    headers.forEach((th, i) => {
      visible[i] = Object.entries(pick).every(([k, set]) => !set || set.has(th.dataset[k]));
    });
    // a column stays only if one of its cells has a chosen outcome
    for (let i = 0; i < ncols; i++) {
      if (!visible[i]) continue;
      visible[i] = rows.some(r => r[i] && r[i].dataset.outcome && outcomes.has(r[i].dataset.outcome));
    }
    let shown = 0, cellsShown = 0;
    headers.forEach((th, i) => { th.classList.toggle("hidden", !visible[i]); if (visible[i]) shown++; });
    for (const r of rows) {
      r.forEach((td, i) => {
        td.classList.toggle("hidden", !visible[i]);
        const dim = !!td.dataset.outcome && !outcomes.has(td.dataset.outcome);
        td.classList.toggle("dim", dim);
        if (visible[i] && td.dataset.outcome && !dim) cellsShown++;
      });
    }
    for (const g of groups) {
      const n = g.cols.filter(i => visible[i]).length;
      g.th.colSpan = Math.max(n, 1);
      g.th.classList.toggle("hidden", n === 0);
    }
    document.getElementById("filter-status").textContent = `${shown} of ${ncols} columns, ${cellsShown} cells shown`;
  }
  document.getElementById("filters").addEventListener("change", applyFilters);

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function put(parent, ...kids) { for (const k of kids) if (k) parent.appendChild(k); }
  const num = x => (x === null || x === undefined || typeof x === "string") ? null : x;
  function fmt(x) {
    if (x === null || x === undefined) return "";
    if (typeof x === "number") return Math.abs(x) >= 1e-3 && Math.abs(x) < 1e6 || x === 0 ? String(+x.toPrecision(6)) : x.toExponential(4);
    return typeof x === "object" ? JSON.stringify(x) : String(x);
  }
  function kv(pairs) {
    return el("div", {class: "kv"}, pairs.filter(p => p[1] !== null && p[1] !== undefined && p[1] !== "").map(([k, v]) => [el("div", {}, k), el("div", {}, v)]));
  }
  function list(title, obj, unit = "case(s)") {
    const entries = Object.entries(obj || {});
    if (!entries.length) return null;
    return el("div", {}, el("h3", {}, title), el("ul", {}, entries.map(([k, n]) => el("li", {}, `${n} ${unit}: `, el("span", {class: "mono"}, k)))));
  }
  function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], {type}));
    const a = el("a", {href: url, download: name});
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  function copy(text, button) {
    const done = () => { const t = button.textContent; button.textContent = "copied"; setTimeout(() => { button.textContent = t; }, 1200); };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, () => {});
    else { const t = el("textarea", {}, text); document.body.appendChild(t); t.select(); try { document.execCommand("copy"); done(); } catch (e) { /* no clipboard */ } t.remove(); }
  }
  function cite(doc) {
    return el("li", {}, el("strong", {}, doc.name), doc.explain ? ": " + doc.explain : "", doc.cite ? el("div", {class: "cite"}, "source: " + doc.cite) : null);
  }
  function comparison(title, c) {
    if (!c) return null;
    const where = c.first_divergent_step ? `step ${c.first_divergent_step}, ${c.slot}${c.element && c.element.length ? "[" + c.element.join(", ") + "]" : ""}` : "within the bound at every step";
    return el("div", {}, el("h3", {}, title),
      kv([["result", c.ok ? "within the bound" : "beyond the bound"], ["first divergence", where],
          ["got / expected / bound", c.first_divergent_step ? `${fmt(c.observed)} / ${fmt(c.expected)} / ${fmt(c.bound)}` : null],
          ["max error", `${fmt(c.max_abs_error)} abs, ${fmt(c.max_rel_error)} rel, ${fmt(c.max_ulp_error)} ulp`],
          ["worst error / bound", fmt(c.margin)], ["elements beyond", c.bad_elements || null]]));
  }

  function precisionView(p) {
    if (!p) return null;
    const where = p.first_step ? `step ${p.first_step}, ${p.slot}${p.element && p.element.length ? "[" + p.element.join(", ") + "]" : ""}` : null;
    const unjudged = Object.entries(p.unjudged || {}).map(([k, n]) => `${n} (${k})`).join(", ");
    return el("div", {}, el("h3", {}, "Precision axis (against the exact rule, bound from the case's own dtype)"),
      kv([["result", p.outcome + (p.outcome !== "exact" ? (p.declared ? " (declared)" : " (UNDECLARED: fails)") : "")], ["cause", p.cause || null],
          ["first", where], ["got / exact / bound", where ? `${fmt(p.observed)} / ${fmt(p.exact)} / ${fmt(p.bound)}` : null],
          ["size", p.outcome === "precision-loss" ? `${fmt(p.max_rel_error)} rel, ${fmt(p.max_ulp_error)} ulp, ${fmt(p.margin)} of the bound` : null],
          ["elements", p.elements || null], ["exact rule out of the dtype's range", p.out_of_range || null], ["not bounded", unjudged || null]]));
  }

  // ---------------------------------------------------------------- plots
  const PLOT_CONFIG = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"]};
  function plot(container, title, traces, ylog, ytitle) {
    const div = el("div", {class: "plot"});
    container.appendChild(div);
    const layout = {title: {text: title, font: {size: 13}}, margin: {l: 60, r: 10, t: 36, b: 30}, xaxis: {title: {text: "step"}, dtick: 1},
      yaxis: {type: ylog ? "log" : "linear", title: {text: ytitle}, exponentformat: "e"}, legend: {orientation: "h", y: -0.28}, font: {size: 11}};
    window.Plotly.newPlot(div, traces, layout, PLOT_CONFIG);
  }
  const COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce"];
  function plots(ev) {
    const box = el("div", {class: "plots"});
    // the declared reference first (JSON object keys arrive sorted)
    const names = Object.keys(ev.steps).sort((a, b) => (b === ev.declared) - (a === ev.declared));
    const x = ev.steps[names[0]].error.map((_, i) => i + 1);
    const errTraces = [], ulpTraces = [];
    names.forEach((name, k) => {
      const s = ev.steps[name], color = COLORS[k % COLORS.length];
      errTraces.push({x, y: s.error.map(num), name: `error vs ${name}`, mode: "lines+markers", line: {color}});
      errTraces.push({x, y: s.bound.map(num), name: `bound (${name})`, mode: "lines", line: {color, dash: "dot"}});
      ulpTraces.push({x, y: s.error_ulp.map(num), name: `error vs ${name}`, mode: "lines+markers", line: {color}});
      ulpTraces.push({x, y: s.bound_ulp.map(num), name: `bound (${name})`, mode: "lines", line: {color, dash: "dot"}});
    });
    const t = ev.trajectory, tx = t.framework.map((_, i) => i + t.start);
    const ref = t.references[ev.declared].map(num), bound = t.bound.map(num);
    const trajTraces = [
      {x: tx, y: ref.map((v, i) => v === null || bound[i] === null ? null : v - bound[i]), mode: "lines", line: {width: 0}, showlegend: false, hoverinfo: "skip"},
      {x: tx, y: ref.map((v, i) => v === null || bound[i] === null ? null : v + bound[i]), mode: "lines", line: {width: 0}, fill: "tonexty", fillcolor: "rgba(31,95,191,0.15)", name: `bound around ${ev.declared}`},
    ];
    names.forEach((name, k) => trajTraces.push({x: tx, y: t.references[name].map(num), name: name, mode: "lines", line: {color: COLORS[k % COLORS.length], dash: k ? "dash" : "solid"}}));
    trajTraces.push({x: tx, y: t.framework.map(num), name: "framework", mode: "markers", marker: {color: "#111", size: 7, symbol: "x"}});
    drillPlots.push(() => {
      plot(box, "worst error per step against its bound", errTraces, true, "absolute error");
      plot(box, "the same, in ulps of the dtype", ulpTraces, true, "ulp");
      plot(box, `trajectory of ${t.slot}${t.element.length ? "[" + t.element.join(", ") + "]" : ""}`, trajTraces, false, "value");
    });
    return box;
  }
  let drillPlots = [];

  // ---------------------------------------------------------------- drill-down
  function caseView(d, v) {
    const box = el("div", {});
    put(box, el("p", {}, el("span", {class: "badge " + (v.outcome || "").replace(" ", "-")}, v.outcome || ""), " ", v.reason || ""));
    if (v.known_issue) put(box, el("p", {}, "known issue: " + v.known_issue));
    put(box, comparison(v.against_canonical ? "against the declared rule" : "against the reference", v.against_expected));
    put(box, comparison("against the canonical rule", v.against_canonical));
    put(box, precisionView(v.precision));
    if (v.fingerprint && v.fingerprint.length) put(box, el("p", {}, "variants that do match (fingerprint): ", v.fingerprint.join(", ")));
    if (v.evidence) put(box, plots(v.evidence));
    else if (v.evidence_error) put(box, el("p", {class: "cite"}, "no plots: " + v.evidence_error));
    else if (v.case) put(box, el("p", {class: "cite"}, "no plots: this record has no framework values (a crash, a skip, or results from before they were kept)"));
    put(box, el("h3", {}, "Case"));
    put(box, kv([["shape", v.shape ? "(" + v.shape.join(", ") + ")" : null], ["steps", v.steps], ["per-step learning rate", v.lr_schedule ? "yes" : null],
      ["sparse steps", v.sparse_steps ? `${v.sparse_steps.empty} empty, ${v.sparse_steps.all_rows} all rows, ${v.sparse_steps.duplicates} with a row twice` : null],
      ["kind", v.kind + (v.source && v.kind === "fixed" ? ` (${v.source})` : "")]]));
    if (v.hyperparameters) {
      put(box, el("table", {}, el("tr", {}, el("th", {}, "hyperparameter"), el("th", {}, "value")),
        Object.entries(v.hyperparameters).map(([k, x]) => el("tr", {}, el("td", {}, k), el("td", {class: "mono"}, fmt(x))))));
    }
    if (v.detail) put(box, el("details", {}, el("summary", {}, "error detail (traceback)"), el("pre", {}, v.detail)));
    if (v.script) {
      const name = `repro_${d.rule}_${d.framework}_${d.mode}_${d.device}_${d.dtype}.py`.replace(/[^A-Za-z0-9_.-]/g, "_");
      const copyBtn = el("button", {type: "button", onclick: () => copy(v.script, copyBtn)}, "copy");
      put(box, el("h3", {}, "Standalone reproducer"));
      put(box, el("p", {}, "Needs only numpy and the framework; prints each step's difference from the references. ",
        el("span", {class: "actions"}, el("button", {type: "button", onclick: () => download(name, v.script, "text/x-python")}, "download " + name), copyBtn)));
      put(box, el("details", {class: "script"}, el("summary", {}, `script (${v.script.split("\n").length} lines)`), el("pre", {}, v.script)));
    } else if (v.script_error) put(box, el("p", {class: "cite"}, "no reproducer: " + v.script_error));
    if (v.case) {
      const text = JSON.stringify(v.case, null, 1);
      const copyBtn = el("button", {type: "button", onclick: () => copy(text, copyBtn)}, "copy");
      put(box, el("h3", {}, "Replay with this tool"));
      put(box, el("p", {}, "Save the case as case.json, then run ", el("code", {}, v.replay), " ",
        el("span", {class: "actions"}, el("button", {type: "button", onclick: () => download("case.json", text, "application/json")}, "download case.json"), copyBtn)));
      put(box, el("details", {}, el("summary", {}, "case.json"), el("pre", {}, text)));
    }
    return box;
  }

  // What repeats across cells (a mode's declaration, the paragraphs of the
  // reproducer scripts) is stored once in #shared; a cell refers to it by index.
  let shared = null;
  function resolve(d) {
    if (shared === null) { const s = document.getElementById("shared"); shared = s ? JSON.parse(s.textContent) : []; }
    if (typeof d.declaration === "number") d.declaration = shared[d.declaration];
    for (const v of d.cases || []) if (Array.isArray(v.script)) v.script = v.script.map(i => shared[i]).join("\n\n");
    return d;
  }

  function openCell(n) {
    const data = document.getElementById("cell-" + n);
    if (!data) return;
    const d = resolve(JSON.parse(data.textContent));
    matrix.querySelectorAll("td.open").forEach(td => td.classList.remove("open"));
    const td = matrix.querySelector(`td[data-cell="${n}"]`);
    if (td) td.classList.add("open");
    drillPlots = [];
    drill.replaceChildren();
    put(drill, el("h2", {}, d.id, " ", el("span", {class: "badge " + d.outcome.replace(" ", "-")}, d.outcome)));
    put(drill, kv([["rule", d.rule], ["framework", d.framework + (d.version ? " @ " + d.version : "")], ["environment", d.env_label || d.env || null], ["mode", d.mode], ["device", d.device],
      ["dtype", d.dtype], ["gradients", d.gradients], ["cases", Object.entries(d.counts || {}).map(([k, c]) => `${k} ${c}`).join(", ") || "none"],
      ["bit-identical", d.cross ? `${d.bit_identical || 0} of ${d.examples} case(s)` : null], ["time", d.seconds ? d.seconds.toFixed(2) + " s" : null], ["worst error", d.worst_errors ? `${fmt(d.worst_errors.max_ulp_error)} ulp, ${fmt(d.worst_errors.margin)} of the bound` : null],
      ["precision", d.precision ? d.precision + (d.precision_undeclared ? ` (${d.precision_undeclared} UNDECLARED)` : "") + " — " + Object.entries(d.precision_counts || {}).map(([k, c]) => `${k} ${c}`).join(", ") : null]]));
    put(drill, list("Precision findings and their causes", d.precision_causes));
    put(drill, list("Elements the precision axis could not judge (over all cases and steps)", d.precision_unjudged, "element(s)"));
    if (d.skipped) put(drill, el("p", {}, "not run: " + d.skipped));
    if (d.variants.length) put(drill, el("div", {}, el("h3", {}, "Follows"), el("ul", {}, d.variants.map(cite))));
    put(drill, list("Matched variants", d.matched_variants));
    put(drill, list("Known framework issues", d.known_issues));
    put(drill, list("Other variants that match (fingerprints)", d.fingerprints));
    put(drill, list("Unsupported", d.unsupported_reasons));
    put(drill, list("Crashes", d.crash_reasons));
    if (d.stale) put(drill, el("p", {class: "diverges"}, `stale: ${d.stale} case(s) match the canonical rule, not the declared variant`));
    for (const m of (d.declaration && d.declaration.modes) || []) {
      const expects = m.expect.map(x => x.name).join(" + ") || "the canonical rule";
      const dl = el("details", {}, el("summary", {}, el("strong", {}, `Declared for ${d.framework} / ${m.mode}`), `: ${m.optimizer}, expected to follow ${expects}`,
        m.known_issues.length ? `; ${m.known_issues.length} known issue(s)` : ""));
      if (m.source) put(dl, el("p", {class: "cite"}, "source: " + m.source));
      if (m.note) put(dl, el("p", {}, m.note));
      put(dl, m.expect.length ? el("ul", {}, m.expect.map(cite)) : el("p", {}, "expected: the canonical rule"));
      if (m.sparse) put(dl, el("p", {}, `sparse gradients: ${m.sparse.semantics}`, m.sparse.note ? ": " + m.sparse.note : "", m.sparse.cite ? el("span", {class: "cite"}, " (source: " + m.sparse.cite + ")") : null));
      if (m.known_issues.length) put(dl, el("ul", {}, m.known_issues.map(k => el("li", {}, "known issue: " + k.reason, el("div", {class: "cite"}, "evidence: " + k.evidence)))));
      put(drill, dl);
    }
    if (d.cases.length) {
      const tabs = el("div", {class: "tabs", role: "tablist"});
      const panel = el("div", {role: "tabpanel"});
      const views = d.cases.map(v => () => caseView(d, v));
      d.cases.forEach((v, i) => {
        const b = el("button", {type: "button", role: "tab", "aria-selected": i === 0 ? "true" : "false", onclick: () => {
          tabs.querySelectorAll("button").forEach(x => x.setAttribute("aria-selected", "false"));
          b.setAttribute("aria-selected", "true");
          drillPlots = [];
          panel.replaceChildren(views[i]());
          drillPlots.forEach(f => f());
        }}, v.label);
        tabs.appendChild(b);
      });
      put(drill, el("h3", {}, "Cases"));
      put(drill, tabs);
      panel.appendChild(views[0]());
      put(drill, panel);
    }
    drillPlots.forEach(f => f());
    if (decodeURIComponent(location.hash.slice(1)) !== d.id) history.replaceState(null, "", "#" + d.id);
    drill.scrollIntoView({block: "start"});
  }
  matrix.addEventListener("click", e => { const td = e.target.closest("td.cell"); if (td) openCell(td.dataset.cell); });
  matrix.addEventListener("keydown", e => { const td = e.target.closest("td.cell"); if (td && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); openCell(td.dataset.cell); } });
  applyFilters();
  // Every cell has an address: index.html#<cell id> (the terminal and pytest print it); #cell-N still works.
  function openHash() {
    let h = location.hash.slice(1);
    try { h = decodeURIComponent(h); } catch (e) { return; }
    const m = /^cell-(\d+)$/.exec(h);
    if (m) { openCell(m[1]); return; }
    const td = h ? document.getElementById(h) : null;
    if (td && td.dataset.cell !== undefined) openCell(td.dataset.cell);
  }
  window.addEventListener("hashchange", openHash);
  openHash();
})();

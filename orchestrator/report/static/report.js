/* orch report: renders the index, run and sweep pages from the JSON embedded in each page.
 *
 * Everything from a run folder is inserted as text nodes (textContent), never as markup, so a run
 * name, a log line or a prediction holding "<script>" shows as text. Nothing is fetched: the data
 * is in the page, the chart library (uPlot, MIT) is in static/. */
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("orch-data").textContent);
  var PAGE = document.body.getAttribute("data-page");
  var COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#e67700", "#5c940d",
                "#364fc7", "#a61e4d", "#087f5b", "#5f3dc4"];
  var STATES = ["RUNNING", "STALLED", "QUEUED", "PENDING", "COMPLETED", "FAILED", "TIMEOUT", "PREEMPTED", "CANCELLED"];

  // ------------------------------------------------------------------ DOM and formatting helpers
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] == null) continue;
        if (k === "text") node.textContent = String(attrs[k]);
        else if (k === "cls") node.className = attrs[k];
        else if (k === "href") node.setAttribute("href", safeHref(attrs[k]));
        else if (k === "style") node.setAttribute("style", attrs[k]);
        else node.setAttribute(k, attrs[k]);
      }
    }
    for (var i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function add(node, child) {
    if (child == null || child === false) return node;
    if (Array.isArray(child)) { child.forEach(function (c) { add(node, c); }); return node; }
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    return node;
  }
  function safeHref(h) {
    h = String(h);
    return /^[A-Za-z][A-Za-z0-9+.-]*:/.test(h) || h.indexOf("//") === 0 ? "#" : h;  // relative links only
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v, digits) {
    if (v == null) return "-";
    if (typeof v === "number") {
      if (!isFinite(v)) return String(v);
      if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
      var a = Math.abs(v);
      if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential((digits || 4) - 1);
      return String(Number(v.toPrecision(digits || 4)));
    }
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function fmtAge(s) {
    if (!isNum(s)) return "-";
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
  }
  function fmtTime(epoch) {
    if (!isNum(epoch)) return "-";
    var d = new Date(epoch * 1000);
    return d.toLocaleString(undefined, {year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit"});
  }
  function now() { return Date.now() / 1000; }
  function badge(state) { return el("span", {cls: "badge s-" + state, text: state}); }
  function checksBadge(summary, passed) {
    if (!summary) return "-";
    var cls = passed === true ? "c-pass" : passed === false ? "c-fail" : "";
    return el("span", {cls: "badge " + cls, title: summary, text: summary});
  }
  function header(title, sub, links) {
    return el("header", {cls: "top"}, el("h1", {text: title}), sub ? el("span", {cls: "sub", text: sub}) : null, links || null);
  }
  function flatten(obj, prefix, out) {
    out = out || [];
    if (obj && typeof obj === "object" && !Array.isArray(obj) && Object.keys(obj).length) {
      Object.keys(obj).forEach(function (k) { flatten(obj[k], prefix ? prefix + "." + k : k, out); });
    } else if (prefix) {
      out.push([prefix, obj]);
    }
    return out;
  }
  function kvTable(pairs, highlight) {
    var t = el("table", {cls: "kv"});
    pairs.forEach(function (p) {
      var v = p[1];
      var cell = el("td", {cls: "wrap"}, v != null && typeof v === "object" && !(v instanceof Node) ? JSON.stringify(v) : (v instanceof Node ? v : fmt(v, 6)));
      t.appendChild(el("tr", {cls: highlight && highlight[p[0]] ? "hl" : null}, el("td", {text: p[0]}), cell));
    });
    return t;
  }
  function sortableTable(columns, rows) {
    // columns: [{label, get(row) -> sortable value, cell(row) -> node|text, num}]
    var state = {col: -1, dir: 1};
    var table = el("table", {cls: "t"});
    var thead = el("tr");
    var tbody = el("tbody");
    columns.forEach(function (c, i) {
      thead.appendChild(el("th", {cls: c.num ? "num" : null, title: c.title || c.label, text: c.label}));
      thead.lastChild.addEventListener("click", function () {
        state.dir = state.col === i ? -state.dir : 1;
        state.col = i;
        draw();
      });
    });
    table.appendChild(el("thead", null, thead));
    table.appendChild(tbody);
    function draw() {
      var list = rows.slice();
      if (state.col >= 0) {
        var g = columns[state.col].get;
        list.sort(function (a, b) { return compare(g(a), g(b), state.dir); });
      }
      tbody.textContent = "";
      list.forEach(function (r) {
        var tr = el("tr");
        columns.forEach(function (c) { tr.appendChild(el("td", {cls: c.num ? "num" : (c.wrap ? "wrap" : null)}, c.cell ? c.cell(r) : fmt(c.get(r)))); });
        tbody.appendChild(tr);
      });
    }
    draw();
    return table;
  }
  function compare(a, b, dir) {
    var an = a == null || a === "" || (typeof a === "number" && !isFinite(a));
    var bn = b == null || b === "" || (typeof b === "number" && !isFinite(b));
    if (an || bn) return an === bn ? 0 : an ? 1 : -1;  // missing values last, whichever the direction
    if (typeof a === "number" && typeof b === "number") return (a - b) * dir;
    return String(a).localeCompare(String(b), undefined, {numeric: true}) * dir;
  }

  // ------------------------------------------------------------------ charts (uPlot)
  function chart(parent, title, xs, series, opts) {
    // xs: array of x values; series: [{label, values}] aligned with xs. Returns the box or null.
    opts = opts || {};
    series = series.filter(function (s) { return s.values.some(isNum); });
    if (!series.length || !xs.length) return null;
    var box = el("div", {cls: "chart", "data-title": title, "data-points": String(xs.length)}, el("div", {cls: "title", text: title}));
    parent.appendChild(box);
    var width = Math.max(300, (box.clientWidth || 460) - 12);
    var many = xs.length > 60;
    var cfg = {
      width: width, height: opts.height || 220,
      scales: {x: {time: false, distr: opts.logx ? 3 : 1}, y: {distr: opts.logy ? 3 : 1}},
      axes: [{label: opts.xlabel || "step", size: 36, values: function (u, vals) { return vals.map(function (v) { return v == null ? "" : fmt(v, 3); }); }}, {size: 60, values: function (u, vals) { return vals.map(function (v) { return v == null ? "" : fmt(v, 3); }); }}],
      legend: {live: true},
      cursor: {drag: {x: true, y: false}},
      series: [{label: opts.xlabel || "step", value: function (u, v) { return v == null ? "-" : fmt(v, 6); }}].concat(series.map(function (s, i) {
        return {label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
                paths: opts.points ? function () { return null; } : undefined,
                points: {show: opts.points || !many, size: opts.points ? 7 : 4},
                value: function (u, v) { return v == null ? "-" : fmt(v, 5); }};
      })),
      plugins: opts.marks && opts.marks.length ? [marksPlugin(opts.marks)] : []
    };
    var data = [xs].concat(series.map(function (s) { return s.values; }));
    try {
      new uPlot(cfg, data, box);
    } catch (e) {
      box.appendChild(el("div", {cls: "muted", text: "chart failed: " + e.message}));
    }
    return box;
  }
  function marksPlugin(marks) {
    // dashed vertical lines where a later attempt's rows begin
    return {hooks: {draw: [function (u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#b26a00"; ctx.fillStyle = "#b26a00"; ctx.setLineDash([4, 3]); ctx.lineWidth = 1;
      ctx.font = (11 * devicePixelRatio) + "px sans-serif";
      marks.forEach(function (m) {
        var x = Math.round(u.valToPos(m.step, "x", true));
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillText("attempt " + m.attempt, x + 3, u.bbox.top + 12 * devicePixelRatio);
      });
      ctx.restore();
    }]}};
  }
  function joinColumns(sources) {
    // sources: [{x: [...], cols: [[...], ...]}] -> {x: union sorted, cols: aligned with nulls}
    var set = {};
    sources.forEach(function (s) { s.x.forEach(function (v) { set[v] = true; }); });
    var xs = Object.keys(set).map(Number).sort(function (a, b) { return a - b; });
    var pos = {};
    xs.forEach(function (v, i) { pos[v] = i; });
    var out = [];
    sources.forEach(function (s) {
      s.cols.forEach(function (c) {
        var arr = new Array(xs.length).fill(null);
        for (var i = 0; i < s.x.length; i++) arr[pos[s.x[i]]] = c[i];
        out.push(arr);
      });
    });
    return {x: xs, cols: out};
  }

  // ------------------------------------------------------------------ the index
  function renderIndex() {
    var meta = DATA.meta, runs = DATA.runs;
    var app = document.getElementById("app");
    var gen = "generated " + fmtTime(meta.generated) + " from " + meta.results;
    app.appendChild(header("orch report", gen + " \u00b7 " + runs.length + " runs"));
    var main = el("main");
    app.appendChild(main);

    runs.forEach(function (r) {
      var p = r.params || {};
      r._hay = [r.id, r.name, r.state, r.failure || "", r.reason || "", r.checks || ""].concat(
        Object.keys(p).map(function (k) { return k + "=" + p[k]; })).join(" ").toLowerCase();
    });
    var counts = {};
    runs.forEach(function (r) { counts[r.state] = (counts[r.state] || 0) + 1; });

    var st = {q: "", states: {}, group: "", sort: "created", dir: -1};
    readHash(st);

    var search = el("input", {type: "search", placeholder: "search id, name, failure, or filter: lr=0.001  val_loss<2  state=FAILED", value: st.q, "aria-label": "search"});
    var groupSel = el("select", {"aria-label": "experiment"}, el("option", {value: "", text: "all experiments (" + meta.groups.length + ")"}));
    meta.groups.forEach(function (g) { groupSel.appendChild(el("option", {value: g.name, text: g.name + " (" + g.runs + ")"})); });
    groupSel.value = st.group;
    var chips = el("span");
    STATES.concat(Object.keys(counts).filter(function (s) { return STATES.indexOf(s) < 0; })).forEach(function (s) {
      if (!counts[s]) return;
      var c = el("span", {cls: "badge chip s-" + s + (st.states[s] ? " on" : ""), "data-state": s, text: s + " " + counts[s], role: "button"});
      c.addEventListener("click", function () { st.states[s] = !st.states[s]; c.classList.toggle("on", !!st.states[s]); update(); });
      chips.appendChild(c);
    });
    var sweepLink = el("a", {href: "#", text: ""});
    var clear = el("button", {type: "button", text: "clear"});
    var countEl = el("span", {cls: "count"});
    main.appendChild(el("div", {cls: "controls"}, search, groupSel, sweepLink, chips, clear, countEl));

    var grid = el("div", {cls: "grid", id: "runs"});
    var head = el("div", {cls: "head"});
    var body = el("div", {cls: "body"});
    var spacer = el("div");
    body.appendChild(spacer);
    grid.appendChild(head);
    grid.appendChild(body);
    main.appendChild(grid);

    var BASE = [
      {key: "id", label: "Run", w: "minmax(14em, 2.4fr)", cell: function (r) { return el("a", {href: r.href, title: r.id, text: r.id}); }},
      {key: "group", label: "Experiment", w: "minmax(7em, 1fr)", cell: function (r) { return el("a", {href: r.group_href, text: r.group}); }},
      {key: "state", label: "State", w: "8.5em", cell: function (r) { return badge(r.state); }},
      {key: "progress", label: "Progress", w: "10em", cell: progressCell},
      {key: "train_loss", label: "Train", w: "5.5em", num: true},
      {key: "val_loss", label: "Val", w: "5.5em", num: true},
      {key: "best_val_loss", label: "Best val", w: "5.5em", num: true},
      {key: "val_ppl", label: "Val ppl", w: "5.5em", num: true},
      {key: "tok_s", label: "tok/s", w: "6em", num: true},
      {key: "checks", label: "Checks", w: "minmax(5em, 0.8fr)", cell: function (r) { return checksBadge(r.checks, r.checks_passed); }},
      {key: "attempts", label: "Att.", w: "3.5em", num: true},
      {key: "failure", label: "Failure", w: "minmax(5em, 0.8fr)", cell: function (r) { return r.failure ? el("span", {title: r.reason || r.failure, text: r.failure}) : ""; }}
    ];
    var AGE = {key: "created", label: "Age", w: "5.5em", num: true, cell: function (r) { return el("span", {title: fmtTime(r.created), text: fmtAge(now() - r.created)}); }};
    var cols = [];
    var filtered = [];
    var ROW = 26;

    function progressCell(r) {
      var p = isNum(r.progress) ? Math.max(0, Math.min(1, r.progress)) : null;
      var text = r.step != null ? (r.step + "/" + (r.total || "?")) : "-";
      return el("span", null, p != null ? el("span", {cls: "bar"}, el("i", {style: "width:" + (p * 100).toFixed(0) + "%"})) : null, text);
    }
    function value(r, key) {
      if (key.indexOf("p:") === 0) return (r.params || {})[key.slice(2)];
      return r[key];
    }
    function paramKeys(list) {
      var freq = {};
      list.forEach(function (r) { Object.keys(r.params || {}).forEach(function (k) { freq[k] = (freq[k] || 0) + 1; }); });
      return Object.keys(freq).sort(function (a, b) { return freq[b] - freq[a] || a.localeCompare(b); }).slice(0, 6);
    }
    function parseQuery(q) {
      var tests = [];
      q.trim().toLowerCase().split(/\s+/).filter(Boolean).forEach(function (tok) {
        var m = /^([^<>=!]+)(<=|>=|!=|=|<|>)(.*)$/.exec(tok);
        if (!m) { tests.push(function (r) { return r._hay.indexOf(tok) >= 0; }); return; }
        var key = m[1], op = m[2], want = m[3], wantNum = Number(want);
        tests.push(function (r) {
          var v = lookup(r, key);
          if (v === undefined) return false;
          if (isNum(v) && want !== "" && !isNaN(wantNum)) {
            return op === "=" ? v === wantNum : op === "!=" ? v !== wantNum : op === "<" ? v < wantNum :
                   op === ">" ? v > wantNum : op === "<=" ? v <= wantNum : v >= wantNum;
          }
          var s = String(v).toLowerCase();
          return op === "=" ? s === want : op === "!=" ? s !== want :
                 op === "<" ? s < want : op === ">" ? s > want : op === "<=" ? s <= want : s >= want;
        });
      });
      return tests;
    }
    function lookup(r, key) {
      var p = r.params || {};
      if (Object.prototype.hasOwnProperty.call(p, key)) return p[key];
      var ks = Object.keys(p);
      for (var i = 0; i < ks.length; i++) {
        var k = ks[i].toLowerCase();
        if (k === key || k.slice(-key.length - 1) === "." + key) return p[ks[i]];
      }
      if (key === "state") return r.state.toLowerCase();
      if (key === "name" || key === "experiment") return String(r.group).toLowerCase();
      if (Object.prototype.hasOwnProperty.call(r, key) && key[0] !== "_") return r[key];
      return undefined;
    }
    function update() {
      st.q = search.value;
      st.group = groupSel.value;
      var tests = parseQuery(st.q);
      var anyState = Object.keys(st.states).some(function (k) { return st.states[k]; });
      filtered = runs.filter(function (r) {
        if (anyState && !st.states[r.state]) return false;
        if (st.group && r.group !== st.group) return false;
        for (var i = 0; i < tests.length; i++) if (!tests[i](r)) return false;
        return true;
      });
      cols = BASE.concat(paramKeys(filtered).map(function (k) {
        return {key: "p:" + k, label: k.split(".").pop(), title: k, w: "minmax(4.5em, 0.6fr)", num: true};
      }), [AGE]);
      var keys = cols.map(function (c) { return c.key; });
      if (keys.indexOf(st.sort) < 0) { st.sort = "created"; st.dir = -1; }
      var sc = st.sort, dir = st.dir;
      filtered.sort(function (a, b) { return compare(value(a, sc), value(b, sc), dir) || compare(a.id, b.id, 1); });
      grid.style.setProperty("--cols", cols.map(function (c) { return c.w; }).join(" "));
      head.textContent = "";
      cols.forEach(function (c) {
        var h = el("div", {cls: (c.num ? "num " : "") + (c.key === st.sort ? (st.dir > 0 ? "sorted-asc" : "sorted-desc") : ""),
                           title: "sort by " + (c.title || c.label), "data-key": c.key, text: c.label});
        h.addEventListener("click", function () {
          if (st.sort === c.key) st.dir = -st.dir; else { st.sort = c.key; st.dir = 1; }
          update();
        });
        head.appendChild(h);
      });
      var g = st.group && meta.groups.filter(function (x) { return x.name === st.group; })[0];
      sweepLink.textContent = g ? "sweep page \u2192" : "";
      sweepLink.setAttribute("href", g ? safeHref(g.href) : "#");
      countEl.textContent = filtered.length === runs.length ? runs.length + " runs" : filtered.length + " of " + runs.length + " runs";
      spacer.style.height = (filtered.length * ROW) + "px";
      body.style.height = Math.max(120, Math.min(filtered.length * ROW + 2, window.innerHeight - body.getBoundingClientRect().top - 24)) + "px";
      body.scrollTop = 0;
      lastFirst = -1;
      paint();
      writeHash(st);
    }
    var lastFirst = -1;
    function paint() {
      var first = Math.max(0, Math.floor(body.scrollTop / ROW) - 10);
      var last = Math.min(filtered.length, first + Math.ceil(body.clientHeight / ROW) + 20);
      if (first === lastFirst && body.childNodes.length > 1) return;
      lastFirst = first;
      while (body.childNodes.length > 1) body.removeChild(body.lastChild);
      for (var i = first; i < last; i++) {
        var r = filtered[i];
        var row = el("div", {cls: "row", style: "top:" + (i * ROW) + "px", "data-id": r.id});
        cols.forEach(function (c) {
          var v = value(r, c.key);
          row.appendChild(el("div", {cls: c.num ? "num" : null}, c.cell ? c.cell(r) : fmt(v)));
        });
        body.appendChild(row);
      }
    }
    body.addEventListener("scroll", function () { window.requestAnimationFrame(paint); });
    window.addEventListener("resize", update);
    search.addEventListener("input", update);
    groupSel.addEventListener("change", update);
    clear.addEventListener("click", function () {
      search.value = ""; groupSel.value = ""; st.states = {};
      chips.querySelectorAll(".chip").forEach(function (c) { c.classList.remove("on"); });
      update();
    });
    update();
  }
  function readHash(st) {
    var h = decodeURIComponent(location.hash.slice(1));
    h.split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i < 0) return;
      var k = kv.slice(0, i), v = kv.slice(i + 1);
      if (k === "q") st.q = v;
      else if (k === "group") st.group = v;
      else if (k === "state") v.split(",").filter(Boolean).forEach(function (s) { st.states[s] = true; });
      else if (k === "sort") st.sort = v;
      else if (k === "dir") st.dir = v === "1" ? 1 : -1;
    });
  }
  function writeHash(st) {
    var parts = [];
    if (st.q) parts.push("q=" + st.q);
    if (st.group) parts.push("group=" + st.group);
    var s = Object.keys(st.states).filter(function (k) { return st.states[k]; });
    if (s.length) parts.push("state=" + s.join(","));
    parts.push("sort=" + st.sort, "dir=" + st.dir);
    history.replaceState(null, "", "#" + encodeURIComponent(parts.join("&")));
  }

  // ------------------------------------------------------------------ one run
  var TRAIN_CHARTS = [
    {title: "Loss", series: [["train", "loss", "train loss (step)"], ["train", "loss_avg", "train loss (interval mean)"],
                             ["eval", "train_loss", "train loss (eval)"], ["eval", "val_loss", "val loss"]]},
    {title: "Validation perplexity", series: [["eval", "val_ppl", "val ppl"]], logy: true},
    {title: "Learning rate", series: [["train", "lr", "lr"]]},
    {title: "Gradient norm", series: [["train", "grad_norm", "grad norm"]]},
    {title: "Throughput (tokens/s)", series: [["train", "tokens_per_sec", "tokens/s"]]},
    {title: "GPU memory", match: ["train", /^mem_/]},
    {title: "Model FLOPs utilization", series: [["train", "mfu", "MFU"]]},
    {title: "Length generalization: val perplexity at k\u00d7 the window", match: ["eval", /^val_ppl@/], logy: true}
  ];
  var NOT_CHARTED = {step: 1, tokens_seen: 1, attempt: 1, time: 1, nonfinite: 1};

  function renderRun() {
    var d = DATA, r = d.row;
    var app = document.getElementById("app");
    var root = document.body.getAttribute("data-root");
    app.appendChild(header(r.name, r.id, el("span", null, el("a", {href: root + "index.html", text: "\u2190 all runs"}), " \u00b7 ",
                                            el("a", {href: d.group_href, text: "experiment " + r.group}))));
    var main = el("main");
    app.appendChild(main);
    var sections = [["summary", "Summary"], ["curves", "Curves"], ["checks", "Checks"], ["attempts", "Attempts"],
                    ["diagnostics", "Diagnostics"], ["metrics", "Metrics"], ["samples", "Samples & predictions"],
                    ["spec", "Spec"], ["provenance", "Provenance"], ["logs", "Logs"]];
    main.appendChild(el("nav", {cls: "toc"}, sections.map(function (s) { return el("a", {href: "#" + s[0], text: s[1]}); })));

    // summary
    var rec = d.record || {};
    var facts = [["state", badge(r.state)], ["progress", r.step != null ? r.step + " / " + (r.total || "?") + (isNum(r.progress) ? " (" + (100 * r.progress).toFixed(0) + "%)" : "") : "-"],
                 ["train loss", fmt(r.train_loss)], ["val loss", fmt(r.val_loss)], ["best val loss", fmt(r.best_val_loss)],
                 ["val ppl", fmt(r.val_ppl)], ["tokens/s", fmt(r.tok_s)], ["checks", checksBadge(r.checks, r.checks_passed)],
                 ["attempts", fmt(r.attempts)], ["failure", r.failure || "-"], ["stop reason", rec.stop_reason || "-"],
                 ["backend", rec.backend || "-"], ["created", rec.created_at || "-"], ["ended", rec.ended_at || "-"],
                 ["heartbeat", isNum(r.beat) ? fmtAge(now() - r.beat) + " ago" : "-"], ["sweep", rec.sweep_id || "-"]];
    if (d.reason || r.reason) facts.push(["note", d.reason || r.reason]);
    var sc = d.scaling || {};
    if (isNum(sc.params)) facts.push(["parameters", fmt(sc.params)], ["tokens", fmt(sc.tokens_seen)],
                                     ["tokens/param", fmt(sc.tokens_per_param, 3) + " (Chinchilla " + fmt(sc.optimal_tpp) + ")"]);
    main.appendChild(el("h2", {id: "summary", text: "Summary"}));
    main.appendChild(el("div", {cls: "facts"}, facts.map(function (f) { return el("div", null, el("span", {text: f[0]}), f[1]); })));
    main.appendChild(el("div", {cls: "muted", text: "run folder: " + d.run_dir}));
    var params = r.params || {};
    if (Object.keys(params).length) {
      main.appendChild(el("h3", {text: "Sweep point"}));
      main.appendChild(kvTable(Object.keys(params).map(function (k) { return [k, params[k]]; })));
    }

    // curves
    main.appendChild(el("h2", {id: "curves", text: "Curves"}));
    var trainRows = logical(parseJsonl(textOf("orch-train"))), evalRows = logical(parseJsonl(textOf("orch-eval")));
    var cv = {train: columns(trainRows.rows), eval: columns(evalRows.rows),
              boundaries: trainRows.bounds.length ? trainRows.bounds : evalRows.bounds};
    var note = d.lines.train + " training log rows, " + d.lines.eval + " evaluations";
    if (trainRows.read < d.lines.train || evalRows.read < d.lines.eval) note += " (long files thinned evenly)";
    if (trainRows.rows.length < trainRows.read || evalRows.rows.length < evalRows.read) note += "; rows a resumed attempt rolled back are left out";
    if (cv.boundaries.length) note += "; dashed lines: where a requeued attempt resumed";
    main.appendChild(el("div", {cls: "muted", text: note + ". Drag to zoom, double-click to reset."}));
    var box = el("div", {cls: "charts"});
    main.appendChild(box);
    var used = {train: {}, eval: {}};
    TRAIN_CHARTS.forEach(function (spec) {
      var picks = spec.series ? spec.series.slice() : [];
      if (spec.match) Object.keys(cv[spec.match[0]]).forEach(function (k) { if (spec.match[1].test(k)) picks.push([spec.match[0], k, k]); });
      picks = picks.filter(function (p) { return cv[p[0]][p[1]]; });
      if (!picks.length) return;
      picks.forEach(function (p) { used[p[0]][p[1]] = true; });
      drawSeries(box, spec.title, picks, cv, spec);
    });
    ["eval", "train"].forEach(function (src) {
      Object.keys(cv[src]).forEach(function (k) {
        if (used[src][k] || NOT_CHARTED[k]) return;
        drawSeries(box, (src === "eval" ? "eval: " : "train: ") + k, [[src, k, k]], cv, {});
      });
    });
    lengthAtBest(box, d);
    if (!box.childNodes.length) box.appendChild(el("div", {cls: "muted", text: "no metrics recorded yet"}));

    // checks
    main.appendChild(el("h2", {id: "checks", text: "Checks"}));
    var ch = d.checks || {};
    if (ch.results && ch.results.length) {
      if (ch.summary) main.appendChild(el("div", null, checksBadge(ch.summary, ch.passed), " checked " + (ch.checked_at || "")));
      main.appendChild(sortableTable([
        {label: "status", get: function (x) { return x.status; }, cell: function (x) { return el("span", {cls: "badge c-" + x.status, text: x.status}); }},
        {label: "severity", get: function (x) { return x.severity; }},
        {label: "check", get: function (x) { return x.name; }, wrap: true},
        {label: "detail", get: function (x) { return x.detail; }, wrap: true},
        {label: "values", get: function (x) { return flatten(x.measured || {}).map(function (p) { return p[0] + "=" + fmt(p[1], 6); }).join("  "); }, wrap: true},
        {label: "message", get: function (x) { return x.message || ""; }, wrap: true}
      ], ch.results));
    } else {
      main.appendChild(el("div", {cls: "muted", text: "not checked yet (orch check RUN writes checks.json)"}));
    }

    // attempts
    main.appendChild(el("h2", {id: "attempts", text: "Attempts"}));
    timeline(main, d.attempts || []);
    if ((d.attempts || []).length) {
      main.appendChild(sortableTable([
        {label: "#", get: function (a) { return a.n; }, num: true},
        {label: "job", get: function (a) { return a.job_id; }},
        {label: "reason", get: function (a) { return a.reason; }},
        {label: "host", get: function (a) { return a.host; }},
        {label: "started", get: function (a) { return a.started_at || a.submitted_at; }},
        {label: "ended", get: function (a) { return a.ended_at; }},
        {label: "duration", get: function (a) { return dur(a); }, cell: function (a) { return fmtAge(dur(a)); }, num: true},
        {label: "state", get: function (a) { return a.state; }, cell: function (a) { return a.state ? badge(a.state) : "-"; }},
        {label: "exit", get: function (a) { return a.exit_code; }, num: true},
        {label: "signal", get: function (a) { return a.signal; }, num: true},
        {label: "cause / failure class", get: function (a) { return a.failure_class || a.cause || ""; }},
        {label: "error", get: function (a) { return a.error || ""; }, wrap: true}
      ], d.attempts));
    }
    if (d.failure) {
      var f = d.failure;
      main.appendChild(el("h3", {text: "Failure: " + (f["class"] || "unknown") + (f.inferred ? " (inferred)" : "")}));
      main.appendChild(el("div", {cls: "wrap", text: f.summary || ""}));
      if (f.exception) main.appendChild(el("div", {cls: "wrap", text: "exception: " + f.exception}));
      if (f.evidence && f.evidence.length) main.appendChild(el("pre", {cls: "evidence", text: f.evidence.join("\n")}));
    }

    // diagnostics
    main.appendChild(el("h2", {id: "diagnostics", text: "Diagnostics"}));
    var diag = trainRows.rows.length ? trainRows.rows[trainRows.rows.length - 1] : {};
    if (Object.keys(diag).length) {
      main.appendChild(el("h3", {text: "Last training log row (step " + fmt(diag.step) + ")"}));
      main.appendChild(kvTable(flatten(diag)));
    }
    var lastEval = d.final || {};
    if (lastEval.top_predictions) {
      main.appendChild(el("h3", {text: "Top predictions at the last evaluation"}));
      main.appendChild(el("div", {cls: "wrap", text: (lastEval.top_predictions || []).map(function (p) { return JSON.stringify(p); }).join("  ")}));
    }
    if (d.heartbeat && Object.keys(d.heartbeat).length) {
      main.appendChild(el("h3", {text: "Heartbeat"}));
      main.appendChild(kvTable(flatten(d.heartbeat).filter(function (p) { return p[0].indexOf("last_eval.") !== 0; })));
    }

    // metrics
    main.appendChild(el("h2", {id: "metrics", text: "Metrics"}));
    var m = d.metrics || {};
    if (Object.keys(m).length) main.appendChild(kvTable(flatten(m)));
    else {
      if (Object.keys(d.best || {}).length) { main.appendChild(el("h3", {text: "Best evaluation"})); main.appendChild(kvTable(flatten(d.best))); }
      if (!Object.keys(d.best || {}).length) main.appendChild(el("div", {cls: "muted", text: "no eval/metrics.json yet (written when training ends)"}));
    }

    // samples and predictions
    main.appendChild(el("h2", {id: "samples", text: "Samples & predictions"}));
    rowsTable(main, "Samples (eval/samples.jsonl)", d.samples, d.samples_more);
    rowsTable(main, "Predictions (eval/predictions.jsonl)", d.predictions, d.predictions_more);

    // spec and provenance
    main.appendChild(el("h2", {id: "spec", text: "Spec (spec.yaml, resolved)"}));
    main.appendChild(d.spec ? el("pre", {cls: "spec", text: d.spec}) : el("div", {cls: "muted", text: "no spec.yaml"}));
    main.appendChild(el("h2", {id: "provenance", text: "Provenance"}));
    main.appendChild(Object.keys(d.provenance || {}).length ? kvTable(flatten(d.provenance)) : el("div", {cls: "muted", text: "no provenance.json"}));

    // logs
    main.appendChild(el("h2", {id: "logs", text: "Logs"}));
    if (!(d.logs || []).length) main.appendChild(el("div", {cls: "muted", text: "no logs"}));
    (d.logs || []).forEach(function (lg, i) {
      main.appendChild(el("details", i < 3 ? {open: ""} : null,
                          el("summary", {text: lg.file + " (" + fmt(lg.size) + " bytes; last " + lg.lines.length + " lines)"}),
                          el("pre", {cls: "log", text: lg.lines.join("\n")})));
    });
  }
  function textOf(id) {
    var node = document.getElementById(id);
    return node ? node.textContent : "";
  }
  function parseJsonl(text) {
    // one record per line; a corrupt line is skipped (Python's NaN/Infinity tokens read as null)
    var out = [];
    text.split("\n").forEach(function (line) {
      if (!line.trim()) return;
      var rec;
      try { rec = JSON.parse(line); } catch (e) {
        try { rec = JSON.parse(line.replace(/-?\bInfinity\b|\bNaN\b/g, "null")); } catch (e2) { return; }
      }
      if (rec && typeof rec === "object" && !Array.isArray(rec)) out.push(rec);
    });
    return out;
  }
  function logical(rows) {
    // the same rule as orchestrator.report.collect.logical_rows: a row whose step is not after the
    // previous one starts a resumed attempt, and the rows it rolls back are dropped
    var out = [], bounds = [], segment = 1;
    rows.forEach(function (r) {
      var step = r.step;
      if (typeof step !== "number" || !isFinite(step)) return;
      if (out.length) {
        var prev = out[out.length - 1], rolled = prev.step >= step;
        var changed = r.attempt != null && prev.attempt != null && r.attempt !== prev.attempt;
        if (rolled || changed) {
          while (out.length && out[out.length - 1].step >= step) out.pop();
          while (bounds.length && bounds[bounds.length - 1].step >= step) bounds.pop();
          if (changed || r.attempt == null) {
            segment += 1;
            bounds.push({step: step, attempt: r.attempt != null ? r.attempt : segment});
          }
        }
      }
      out.push(r);
    });
    return {rows: out, bounds: bounds, read: rows.length};
  }
  function columns(rows) {
    // {step: [...], key: [...]} with null where a row lacks the key; a list of numbers (one per device) -> key/i
    var cols = {step: rows.map(function (r) { return r.step; })};
    rows.forEach(function (r, i) {
      Object.keys(r).forEach(function (k) {
        if (k === "step" || k === "time" || k === "attempt") return;
        var v = r[k];
        if (Array.isArray(v)) {
          v.forEach(function (x, j) { if (isNum(x)) put(k + "/" + j, i, x); });
        } else if (isNum(v)) put(k, i, v);
      });
    });
    function put(k, i, v) {
      if (!cols[k]) cols[k] = new Array(rows.length).fill(null);
      cols[k][i] = v;
    }
    return cols;
  }
  function dur(a) {
    var s = Date.parse(a.started_at || ""), e = Date.parse(a.ended_at || "");
    if (isNaN(s)) return null;
    return ((isNaN(e) ? Date.now() : e) - s) / 1000;
  }
  function drawSeries(box, title, picks, cv, spec) {
    var sources = [];
    var bySrc = {};
    picks.forEach(function (p) { (bySrc[p[0]] = bySrc[p[0]] || []).push(p); });
    var labels = [];
    Object.keys(bySrc).forEach(function (src) {
      sources.push({x: cv[src].step, cols: bySrc[src].map(function (p) { return cv[src][p[1]]; })});
      bySrc[src].forEach(function (p) { labels.push(p[2]); });
    });
    var j = sources.length === 1 ? {x: sources[0].x, cols: sources[0].cols} : joinColumns(sources);
    var logy = spec.logy && j.cols.every(function (c) { return c.every(function (v) { return v == null || v > 0; }); });
    return chart(box, title, j.x, j.cols.map(function (c, i) { return {label: labels[i], values: c}; }),
                 {logy: logy, marks: cv.boundaries});
  }
  function lengthAtBest(box, d) {
    var rows = [["best", d.best || {}], ["last", d.final || {}]];
    var keys = {};
    rows.forEach(function (r) { Object.keys(r[1]).forEach(function (k) { var m = /^val_ppl@(\d+(?:\.\d+)?)x$/.exec(k); if (m) keys[k] = Number(m[1]); }); });
    var ks = Object.keys(keys).sort(function (a, b) { return keys[a] - keys[b]; });
    if (!ks.length) return;
    var xs = [1].concat(ks.map(function (k) { return keys[k]; }));
    chart(box, "Perplexity vs sequence length (multiple of the training window)", xs, rows.map(function (r) {
      return {label: r[0] + " (step " + fmt(r[1].step) + ")", values: [r[1].val_ppl].concat(ks.map(function (k) { return r[1][k]; }))};
    }), {xlabel: "length multiple"});
  }
  function timeline(main, attempts) {
    var spans = attempts.map(function (a) {
      return {a: a, q: Date.parse(a.submitted_at || ""), s: Date.parse(a.started_at || ""), e: Date.parse(a.ended_at || "")};
    }).filter(function (x) { return !isNaN(x.s) || !isNaN(x.q); });
    if (!spans.length) { main.appendChild(el("div", {cls: "muted", text: "no attempt has started"})); return; }
    var t0 = Math.min.apply(null, spans.map(function (x) { return isNaN(x.q) ? x.s : x.q; }));
    var t1 = Math.max.apply(null, spans.map(function (x) { return isNaN(x.e) ? Date.now() : x.e; }));
    var W = 900, H = 26 * spans.length + 24, L = 90, span = Math.max(1, t1 - t0);
    var NS = "http://www.w3.org/2000/svg";
    function s(tag, attrs, text) {
      var n = document.createElementNS(NS, tag);
      Object.keys(attrs).forEach(function (k) { n.setAttribute(k, attrs[k]); });
      if (text != null) n.textContent = text;
      return n;
    }
    var svg = s("svg", {"class": "timeline", width: "100%", viewBox: "0 0 " + W + " " + H, role: "img"});
    var color = {COMPLETED: "#2b8a3e", FAILED: "#c62828", TIMEOUT: "#e67700", PREEMPTED: "#e67700", CANCELLED: "#868e96"};
    spans.forEach(function (x, i) {
      var y = 6 + i * 26, sx = function (t) { return L + (W - L - 10) * (t - t0) / span; };
      svg.appendChild(s("text", {x: 4, y: y + 14}, "attempt " + x.a.n));
      if (!isNaN(x.q) && !isNaN(x.s) && x.s > x.q) svg.appendChild(s("rect", {x: sx(x.q), y: y + 6, width: Math.max(1, sx(x.s) - sx(x.q)), height: 6, fill: "#ced4da"}));
      if (!isNaN(x.s)) {
        var end = isNaN(x.e) ? Date.now() : x.e;
        var rect = s("rect", {x: sx(x.s), y: y + 2, width: Math.max(2, sx(end) - sx(x.s)), height: 14, rx: 2,
                              fill: color[x.a.state] || "#2f6fde"});
        rect.appendChild(s("title", {}, (x.a.state || "running") + (x.a.failure_class || x.a.cause ? " (" + (x.a.failure_class || x.a.cause) + ")" : "")));
        svg.appendChild(rect);
        var label = (x.a.state || "running") + (x.a.failure_class || x.a.cause ? ": " + (x.a.failure_class || x.a.cause) : "");
        var lx = sx(end) + 4 > W - 140 ? sx(x.s) - 4 : sx(end) + 4;
        svg.appendChild(s("text", {x: lx, y: y + 14, "text-anchor": sx(end) + 4 > W - 140 ? "end" : "start"}, label));
      }
    });
    svg.appendChild(s("text", {x: L, y: H - 4}, new Date(t0).toLocaleString()));
    svg.appendChild(s("text", {x: W - 150, y: H - 4}, new Date(t1).toLocaleString()));
    main.appendChild(svg);
  }
  function rowsTable(main, title, rows, more) {
    main.appendChild(el("h3", {text: title}));
    if (!rows || !rows.length) { main.appendChild(el("div", {cls: "muted", text: "none"})); return; }
    var keys = [];
    rows.forEach(function (r) { Object.keys(r).forEach(function (k) { if (keys.indexOf(k) < 0) keys.push(k); }); });
    main.appendChild(sortableTable(keys.map(function (k) {
      return {label: k, get: function (r) { var v = r[k]; return v != null && typeof v === "object" ? JSON.stringify(v) : v; },
              num: false, wrap: true};
    }), rows));
    if (more) main.appendChild(el("div", {cls: "muted", text: "(first " + rows.length + " rows shown)"}));
  }

  // ------------------------------------------------------------------ one experiment (sweep / compare)
  function renderGroup() {
    var d = DATA, items = d.runs;
    var app = document.getElementById("app");
    var root = document.body.getAttribute("data-root");
    app.appendChild(header(d.name, items.length + " runs", el("a", {href: root + "index.html#" + encodeURIComponent("group=" + d.name), text: "\u2190 all runs"})));
    var main = el("main");
    app.appendChild(main);
    var pkeys = [];
    items.forEach(function (it) { Object.keys(it.row.params || {}).forEach(function (k) { if (pkeys.indexOf(k) < 0) pkeys.push(k); }); });
    var metricKeys = ["val_loss", "val_ppl"];
    items.forEach(function (it) { Object.keys(it.best || {}).forEach(function (k) { if (/^val_ppl@/.test(k) && metricKeys.indexOf(k) < 0) metricKeys.push(k); }); });

    main.appendChild(el("h2", {text: "Runs against their swept parameters"}));
    var cols = [{label: "run", get: function (it) { return it.row.id; }, cell: function (it) { return el("a", {href: "../" + it.row.href, text: it.row.id}); }},
                {label: "state", get: function (it) { return it.row.state; }, cell: function (it) { return badge(it.row.state); }}];
    pkeys.forEach(function (k) { cols.push({label: k.split(".").pop(), title: k, get: function (it) { return (it.row.params || {})[k]; }, num: true}); });
    metricKeys.forEach(function (k) { cols.push({label: "best " + k, get: function (it) { return it.best[k]; }, num: true}); });
    cols.push({label: "final val_loss", get: function (it) { return it.final.val_loss; }, num: true},
              {label: "step", get: function (it) { return it.row.step; }, num: true},
              {label: "checks", get: function (it) { return it.row.checks; }, cell: function (it) { return checksBadge(it.row.checks, it.row.checks_passed); }});
    main.appendChild(sortableTable(cols, items));

    var charts = el("div", {cls: "charts"});
    main.appendChild(charts);
    pkeys.forEach(function (k) {
      var vals = items.map(function (it) { return it.row.params[k]; }).filter(isNum);
      var distinct = vals.filter(function (v, i) { return vals.indexOf(v) === i; }).sort(function (a, b) { return a - b; });
      if (distinct.length < 2) return;
      var others = pkeys.filter(function (o) { return o !== k; });
      var groups = {};
      items.forEach(function (it) {
        if (!isNum(it.row.params[k]) || !isNum(it.best.val_loss)) return;
        var label = others.map(function (o) { return o.split(".").pop() + "=" + fmt(it.row.params[o]); }).join(", ") || "best val_loss";
        (groups[label] = groups[label] || {})[it.row.params[k]] = it.best.val_loss;
      });
      var labels = Object.keys(groups);
      if (labels.length > 10) {  // too many combinations for lines: every run as a point
        var all = {};
        labels.forEach(function (l) { Object.keys(groups[l]).forEach(function (x) { all[x] = Math.min(all[x] == null ? Infinity : all[x], groups[l][x]); }); });
        groups = {"best over the other parameters": all};
        labels = Object.keys(groups);
      }
      var logx = distinct[0] > 0 && distinct[distinct.length - 1] / distinct[0] >= 20;
      chart(charts, "best val_loss vs " + k, distinct, labels.map(function (l) {
        return {label: l, values: distinct.map(function (x) { var v = groups[l][x]; return v == null ? null : v; })};
      }), {xlabel: k, logx: logx});
    });
    var withCurves = items.filter(function (it) { return it.curve && it.curve.val_loss && it.curve.val_loss.length; });
    if (withCurves.length) {
      var j = joinColumns(withCurves.map(function (it) {
        return {x: it.curve.val_loss.map(function (p) { return p[0]; }), cols: [it.curve.val_loss.map(function (p) { return p[1]; })]};
      }));
      chart(charts, "val_loss of the best " + withCurves.length + " runs", j.x, j.cols.map(function (c, i) {
        var it = withCurves[i], p = it.row.params || {};
        var lbl = Object.keys(p).map(function (k) { return k.split(".").pop() + "=" + fmt(p[k]); }).join(", ");
        return {label: lbl || it.row.id, values: c};
      }));
    }
    // length generalization at the best evaluation
    var lens = metricKeys.filter(function (k) { return /^val_ppl@/.test(k); });
    if (lens.length) {
      var mult = lens.map(function (k) { return Number(/@(\d+(?:\.\d+)?)x/.exec(k)[1]); });
      var xs = [1].concat(mult);
      var runsL = items.filter(function (it) { return isNum(it.best.val_ppl); }).slice(0, 12);
      chart(charts, "Perplexity vs length multiple (best evaluation)", xs, runsL.map(function (it) {
        return {label: it.row.id, values: [it.best.val_ppl].concat(lens.map(function (k) { return it.best[k]; }))};
      }), {xlabel: "length multiple"});
    }

    // scaling
    var sc = items.filter(function (it) { return it.scaling && isNum(it.scaling.params); });
    if (sc.length) {
      main.appendChild(el("h2", {text: "Scaling: parameters, tokens and Chinchilla's 20 tokens per parameter"}));
      main.appendChild(sortableTable([
        {label: "run", get: function (it) { return it.row.id; }, cell: function (it) { return el("a", {href: "../" + it.row.href, text: it.row.id}); }},
        {label: "parameters", get: function (it) { return it.scaling.params; }, num: true},
        {label: "non-embedding", get: function (it) { return it.scaling.non_embedding; }, num: true},
        {label: "tokens", get: function (it) { return it.scaling.tokens_seen; }, num: true},
        {label: "tokens / param", get: function (it) { return it.scaling.tokens_per_param; }, num: true},
        {label: "\u00d7 Chinchilla (20)", get: function (it) { return it.scaling.ratio; }, num: true},
        {label: "best val_loss", get: function (it) { return it.best.val_loss; }, num: true},
        {label: "verdict", get: function (it) { return it.scaling.verdict || ""; }}
      ], sc.slice().sort(function (a, b) { return a.scaling.params - b.scaling.params; })));
      var ps = sc.filter(function (it) { return isNum(it.best.val_loss); });
      var px = ps.map(function (it) { return it.scaling.params; }).filter(function (v, i, a) { return a.indexOf(v) === i; }).sort(function (a, b) { return a - b; });
      if (px.length >= 2) {
        var best = {};
        ps.forEach(function (it) { var k = it.scaling.params; best[k] = Math.min(best[k] == null ? Infinity : best[k], it.best.val_loss); });
        chart(charts, "best val_loss vs parameters", px, [{label: "best val_loss", values: px.map(function (p) { return best[p]; })}],
              {xlabel: "parameters", logx: true, logy: true});
      }
    }
  }

  try {
    if (PAGE === "index") renderIndex();
    else if (PAGE === "run") renderRun();
    else if (PAGE === "group") renderGroup();
  } catch (e) {
    document.getElementById("app").appendChild(el("pre", {text: "report.js: " + (e && e.stack || e)}));
    throw e;
  }
})();

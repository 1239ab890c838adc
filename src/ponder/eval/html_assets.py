"""The CSS and vanilla JavaScript of the HTML report (no libraries, no network).

The script reads the JSON blocks written by ponder.eval.html: `runs-data` (the sortable
runs table), `index-data` (the paginated problem list, PAGE rows a page) and `pd-N` (one
problem's detail, parsed when opened). `#problem=ID` in the URL opens a problem.
"""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 2em 3em;color:#222;background:#fafafa}
header h1{margin:.6em 0 0}.sub{color:#666;margin:.2em 0}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef;cursor:pointer;user-select:none}td.num{text-align:right}
tr.problem{cursor:pointer}tr.problem:hover{background:#ffd}tr.open{background:#ffe9a8}
.ok{color:#070;font-weight:bold}.bad{color:#b00;font-weight:bold}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots img{max-width:100%;border:1px solid #ddd}
figure{margin:0}figcaption{color:#666;font-size:12px}
pre{white-space:pre-wrap;max-height:20em;overflow:auto;background:#f4f4f4;padding:4px;margin:0}
.bar{display:inline-block;height:12px;background:#69c;vertical-align:middle;margin-right:4px}
.run{border:1px solid #ccc;background:#fff;padding:.5em 1em;margin:.8em 0}
.tree ul{list-style:none;padding-left:1.4em;border-left:1px dashed #ccc}
.tree li{margin:2px 0}.chosen>.step{background:#cfc;font-weight:bold}
.pruned>.step{color:#999}.acc{color:#070}.rej{color:#b00}.hint{color:#666}
.pager{margin:.5em 0}#filter{margin-left:1em;width:20em}
"""

JS = r"""
(function () {
  "use strict";
  var PAGE = 50;
  function data(id) { return JSON.parse(document.getElementById(id).textContent); }
  var runs = data("runs-data"), index = data("index-data");
  var page = 0, shown = index, open = null;

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k]; else e.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) {
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }
  function fmt(v, d) {
    if (v === null || v === undefined) return "";
    return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(d || 3)) : String(v);
  }
  function mark(ok) { return el("span", {"class": ok ? "ok" : "bad", text: ok ? "\u2713" : "\u2717"}); }

  // ---- runs table (sortable) ----
  var cols = [["label", "method"], ["strategy", "strategy"], ["model", "model"], ["task", "task"],
    ["problems", "problems"], ["accuracy", "accuracy"], ["ci", "95% CI"],
    ["generated_tokens_per_problem", "gen tok/prob"], ["tokens_per_problem", "tokens/prob"],
    ["seconds_per_problem", "s/prob"], ["options", "options"], ["run_id", "run"]];
  function cell(r, key) {
    if (key === "ci") return r.accuracy_ci95;
    // key=value, comma and space: the cell wraps instead of widening the table past the page
    if (key === "options") return Object.keys(r.options).map(function (k) {
      return k + "=" + JSON.stringify(r.options[k]);
    }).join(", ");
    return r[key];
  }
  var sortKey = null, sortDir = 1;
  function drawRuns() {
    var head = document.querySelector("#runs-table thead"), body = document.querySelector("#runs-table tbody");
    head.textContent = ""; body.textContent = "";
    head.appendChild(el("tr", {}, cols.map(function (c) {
      var th = el("th", {"data-key": c[0], text: c[1] + (sortKey === c[0] ? (sortDir > 0 ? " \u25b2" : " \u25bc") : "")});
      th.addEventListener("click", function () {
        sortDir = sortKey === c[0] ? -sortDir : 1; sortKey = c[0]; drawRuns();
      });
      return th;
    })));
    var rows = runs.map(function (r, i) { return [r, i]; });
    if (sortKey) rows.sort(function (a, b) {
      var x = cell(a[0], sortKey), y = cell(b[0], sortKey);
      if (Array.isArray(x)) { x = x[0]; y = y[0]; }
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    rows.forEach(function (p) {
      var r = p[0];
      body.appendChild(el("tr", {"class": "run-row"}, cols.map(function (c) {
        var v = cell(r, c[0]);
        if (c[0] === "ci") v = "[" + fmt(v[0]) + ", " + fmt(v[1]) + "]";
        if (c[0] === "run_id") v = v.slice(0, 8);
        return el("td", {"class": typeof v === "number" ? "num" : "", text: fmt(v, c[0] === "accuracy" ? 3 : 1)});
      })));
    });
  }

  // ---- problem list (paginated) ----
  function drawProblems() {
    var head = document.querySelector("#problem-table thead"), body = document.querySelector("#problem-table tbody");
    head.textContent = ""; body.textContent = "";
    head.appendChild(el("tr", {}, [el("th", {text: "#"}), el("th", {text: "problem"}),
      el("th", {text: "question"}), el("th", {text: "gold"})].concat(
      runs.map(function (r) { return el("th", {text: r.label}); }))));
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (p) {
      var tr = el("tr", {"class": "problem" + (open === p.id ? " open" : ""), "data-id": p.id},
        [el("td", {"class": "num", text: String(index.indexOf(p) + 1)}), el("td", {text: p.id}),
         el("td", {text: p.question}), el("td", {text: p.gold})].concat(runs.map(function (r, i) {
          var v = p.results[String(i)];
          return el("td", {}, v === undefined ? [] : [mark(v)]);
        })));
      tr.addEventListener("click", function () { location.hash = "problem=" + encodeURIComponent(p.id); });
      body.appendChild(tr);
    });
    document.getElementById("page-info").textContent =
      "page " + (page + 1) + " of " + pages + " (" + shown.length + " problems)";
  }

  // ---- one problem ----
  function votes(list) {
    if (!list || !list.length) return el("div");
    var top = Math.max.apply(null, list.map(function (v) { return v.votes; }));
    return el("div", {"class": "votes"}, [el("h4", {text: "votes"})].concat(list.map(function (v) {
      return el("div", {}, [el("span", {"class": "bar", style: "width:" + (150 * v.votes / top) + "px"}),
        (v.answer === null ? "(none)" : String(v.answer)) + ": " + v.votes +
        (v.weight !== undefined && v.weight !== v.votes ? " (weight " + fmt(v.weight) + ")" : "")]);
    })));
  }
  function samples(list) {
    var t = el("table", {"class": "samples"}, [el("tr", {}, ["#", "extracted", "correct", "score",
      "tokens", "text"].map(function (h) { return el("th", {text: h}); }))]);
    list.forEach(function (s, i) {
      t.appendChild(el("tr", {"class": "sample"}, [el("td", {"class": "num", text: String(i)}),
        el("td", {text: s.extracted === null ? "(none)" : s.extracted}), el("td", {}, [mark(s.correct)]),
        el("td", {"class": "num", text: fmt(s.score)}), el("td", {"class": "num", text: fmt(s.tokens)}),
        el("td", {}, [el("details", {}, [el("summary", {text: (s.text || "").slice(0, 80)}),
          el("pre", {text: s.text || ""})])])]));
    });
    return t;
  }
  function tree(nodes, chosen) {
    var kids = {}, on = {};
    (chosen || []).forEach(function (id) { on[id] = true; });
    nodes.forEach(function (n) { var k = n.parent === null ? "root" : n.parent; (kids[k] = kids[k] || []).push(n); });
    function branch(key) {
      return el("ul", {}, (kids[key] || []).map(function (n) {
        var info = "[" + n.id + "] score " + fmt(n.score) + (n.visits ? ", visits " + n.visits + ", q " + fmt(n.q) : "") +
          ", " + fmt(n.tokens) + " tok" + (n.final ? ", final" : "") + (n.kept === false ? ", pruned" : "");
        return el("li", {"class": on[n.id] ? "chosen" : (n.kept === false ? "pruned" : "")},
          [el("div", {"class": "step"}, [el("code", {text: info}), el("pre", {text: n.text || ""})]), branch(n.id)]);
      }));
    }
    return el("div", {"class": "tree"}, [el("h4", {text: "search tree (chosen path highlighted)"}), branch("root")]);
  }
  function chains(list, acceptance) {
    var box = el("div", {"class": "chains"}, [el("h4", {text: "MCMC chains"})]);
    list.forEach(function (chain, c) {
      var acc = chain.filter(function (p) { return p.accepted; }).length;
      var rate = chain.length ? acc / chain.length : 0;
      var per = acceptance && acceptance[c] ? " (per block: " + [].concat(acceptance[c]).map(function (a) { return fmt(a, 2); }).join(", ") + ")" : "";
      box.appendChild(el("p", {text: "chain " + c + ": " + acc + "/" + chain.length + " proposals accepted, rate " + fmt(rate, 2) + per}));
      var t = el("table", {}, [el("tr", {}, ["block", "step", "proposed tokens", "log ratio", ""].map(function (h) { return el("th", {text: h}); }))]);
      chain.forEach(function (p) {
        t.appendChild(el("tr", {}, [el("td", {text: fmt(p.block)}), el("td", {text: fmt(p.m)}), el("td", {text: fmt(p.proposed_tokens)}),
          el("td", {text: fmt(p.log_ratio, 2)}), el("td", {"class": p.accepted ? "acc" : "rej", text: p.accepted ? "accepted" : "rejected"})]));
      });
      box.appendChild(el("details", {}, [el("summary", {text: "proposals of chain " + c}), t]));
    });
    return box;
  }
  function particles(sweeps) {
    // Per sweep (particle Gibbs runs several), per step: ESS, weights, and who resampled from whom.
    var box = el("div", {"class": "chains"}, [el("h4", {text: "particles"})]);
    sweeps.forEach(function (steps, s) {
      var t = el("table", {}, [el("tr", {}, ["step", "ESS", "weights", "resampled (particle <- parent)"].map(function (h) { return el("th", {text: h}); }))]);
      steps.forEach(function (st, k) {
        var moves = st.ancestors ? st.ancestors.map(function (a, i) { return i + "<-" + a; }).join(" ") : "";
        t.appendChild(el("tr", {}, [el("td", {text: String(k + 1)}), el("td", {text: fmt(st.ess, 2)}),
          el("td", {text: (st.weights || []).map(function (w) { return fmt(w, 3); }).join(" ")}), el("td", {text: moves})]));
      });
      var resampled = steps.filter(function (st) { return st.ancestors; }).length;
      box.appendChild(el("details", {}, [el("summary", {text: (sweeps.length > 1 ? "sweep " + s + ": " : "") +
        steps.length + " steps, resampled at " + resampled}), t]));
    });
    return box;
  }
  function showProblem(id) {
    var at = -1;
    index.forEach(function (p, i) { if (p.id === id) at = i; });
    var box = document.getElementById("detail");
    box.textContent = "";
    open = at < 0 ? null : id;
    if (at < 0) { drawProblems(); return; }
    if (shown.indexOf(index[at]) >= 0) page = Math.floor(shown.indexOf(index[at]) / PAGE);
    drawProblems();
    var d = data("pd-" + at);
    box.appendChild(el("h3", {text: "Problem " + id}));
    box.appendChild(el("pre", {"class": "question", text: d.question}));
    box.appendChild(el("p", {}, ["gold answer: ", el("b", {text: d.gold})]));
    Object.keys(d.runs).forEach(function (r) {
      var res = d.runs[r], u = res.usage || {};
      var part = el("div", {"class": "run"}, [el("h4", {}, [runs[+r].label + ": answer " +
        (res.answer === null ? "(none)" : res.answer) + " ", mark(res.correct)]),
        el("p", {"class": "hint", text: "generated " + fmt(u.generated_tokens) + " tokens, forward " +
          fmt(u.forward_tokens) + ", scorer " + fmt(u.scorer_tokens) + ", " + fmt(u.wall_seconds, 2) + " s"}),
        votes(res.votes), samples(res.samples || [])]);
      if (res.nodes && res.nodes.length) part.appendChild(tree(res.nodes, res.chosen));
      if (res.chains && res.chains.length) part.appendChild(chains(res.chains, res.acceptance));
      if (res.particles && res.particles.length) part.appendChild(particles(res.particles));
      box.appendChild(part);
    });
    box.scrollIntoView();
  }
  function route() {
    var m = /^#problem=(.*)$/.exec(location.hash);
    if (m) showProblem(decodeURIComponent(m[1]));
  }

  document.getElementById("prev").addEventListener("click", function () { page--; drawProblems(); });
  document.getElementById("next").addEventListener("click", function () { page++; drawProblems(); });
  document.getElementById("filter").addEventListener("input", function (e) {
    var q = e.target.value.toLowerCase();
    shown = index.filter(function (p) { return (p.id + " " + p.question).toLowerCase().indexOf(q) >= 0; });
    page = 0; drawProblems();
  });
  window.addEventListener("hashchange", route);
  drawRuns(); drawProblems(); route();
})();
"""

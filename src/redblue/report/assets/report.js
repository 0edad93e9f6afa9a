// redblue report.html: sortable tables, curve readouts (hover and slider), heatmap readouts.
// Plain DOM, no framework, no network: the page's policy allows nothing to be fetched.
"use strict";

(function () {
  // --- sortable tables: click (or Enter on) a header; numbers sort on data-sort, text on its content
  function cellKey(row, column) {
    const cell = row.cells[column];
    if (!cell) return { missing: true };
    if (cell.hasAttribute("data-sort")) {
      const raw = cell.getAttribute("data-sort");
      return raw === "" ? { missing: true } : { number: parseFloat(raw) };
    }
    const text = cell.textContent.trim();
    return text === "—" ? { missing: true } : { text: text };
  }

  function compare(a, b) {
    if (a.missing || b.missing) return a.missing === b.missing ? 0 : a.missing ? 1 : -1;
    if ("number" in a && "number" in b) return a.number - b.number;
    return String(a.text ?? a.number).localeCompare(String(b.text ?? b.number), undefined, { numeric: true });
  }

  function sortTable(table, column) {
    const header = table.tHead.rows[0].cells[column];
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    for (const th of table.tHead.rows[0].cells) th.setAttribute("aria-sort", "none");
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort(function (r1, r2) {
      const a = cellKey(r1, column), b = cellKey(r2, column);
      if (a.missing || b.missing) return compare(a, b); // missing values last either way
      return ascending ? compare(a, b) : compare(b, a);
    });
    for (const row of rows) body.appendChild(row);
  }

  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach(function (th, column) {
      th.addEventListener("click", function () { sortTable(table, column); });
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, column); }
      });
    });
  }

  // --- curves: the guide line, the highlighted points and the readout follow the mouse or the slider
  function format(value) {
    return value === null || value === undefined ? "—" : value.toFixed(4);
  }

  for (const figure of document.querySelectorAll("figure.chart")) {
    const data = JSON.parse(figure.querySelector("script.chart-data").textContent);
    const svg = figure.querySelector("svg.plot");
    const guide = svg.querySelector("line.guide");
    const slider = figure.querySelector("input[type=range]");
    const readout = figure.querySelector("output.readout");

    function show(index) {
      const x = data.px[index];
      guide.setAttribute("x1", x);
      guide.setAttribute("x2", x);
      guide.setAttribute("visibility", "visible");
      for (const dot of svg.querySelectorAll("circle")) {
        dot.classList.toggle("on", Number(dot.getAttribute("data-i")) === index);
      }
      readout.textContent = "";
      const head = document.createElement("b");
      head.textContent = (data.x_label || "eps") + " = " + data.x[index];
      readout.appendChild(head);
      for (const series of data.series) {
        const item = document.createElement("span");
        item.className = "reading";
        item.style.setProperty("--c", series.color);
        item.textContent = series.name + ": " + format(series.y[index]);
        readout.appendChild(document.createTextNode(" "));
        readout.appendChild(item);
      }
      if (slider.value !== String(index)) slider.value = String(index);
      figure.setAttribute("data-shown", String(index));
    }

    function nearest(clientX) {
      const box = svg.getBoundingClientRect();
      const scale = svg.viewBox.baseVal.width / box.width;
      const x = (clientX - box.left) * scale;
      let best = 0;
      data.px.forEach(function (px, i) { if (Math.abs(px - x) < Math.abs(data.px[best] - x)) best = i; });
      return best;
    }

    svg.addEventListener("mousemove", function (event) { show(nearest(event.clientX)); });
    slider.addEventListener("input", function () { show(Number(slider.value)); });
    show(0);
  }

  // --- heatmaps: the readout names the cell under the mouse
  for (const figure of document.querySelectorAll("figure.heatmap-figure")) {
    const readout = figure.querySelector("output.readout");
    for (const cell of figure.querySelectorAll("td[data-readout]")) {
      cell.addEventListener("mouseenter", function () {
        readout.textContent = cell.getAttribute("data-readout");
        cell.classList.add("on");
      });
      cell.addEventListener("mouseleave", function () { cell.classList.remove("on"); });
    }
  }
})();

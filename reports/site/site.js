// itrbench leaderboard: sortable columns (click a header) and row filters (selects and a text box).
"use strict";
(function () {
  function cellValue(row, index) {
    const cell = row.cells[index];
    if (!cell) return { num: NaN, text: "" };
    const raw = cell.getAttribute("data-value");
    const num = raw === null || raw === "" ? NaN : Number(raw);
    return { num: num, text: cell.textContent.trim().toLowerCase() };
  }

  function sortBy(table, index, th) {
    const body = table.tBodies[0];
    const descending = th.getAttribute("aria-sort") !== "descending";
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = cellValue(a, index), y = cellValue(b, index);
      const xn = !Number.isNaN(x.num), yn = !Number.isNaN(y.num);
      if (xn && yn && x.num !== y.num) return descending ? y.num - x.num : x.num - y.num;
      if (xn !== yn) return xn ? -1 : 1; // rows without a number go last either way
      return descending ? y.text.localeCompare(x.text) : x.text.localeCompare(y.text);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.from(table.tHead.rows[0].cells).forEach(function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  function applyFilters(bar) {
    const table = document.getElementById(bar.getAttribute("data-table"));
    if (!table) return;
    const controls = Array.from(bar.querySelectorAll("[data-filter]"));
    let shown = 0;
    Array.from(table.tBodies[0].rows).forEach(function (row) {
      const visible = controls.every(function (c) {
        const want = c.value.trim().toLowerCase();
        if (!want) return true;
        const key = c.getAttribute("data-filter");
        if (key === "*") return row.textContent.toLowerCase().indexOf(want) >= 0;
        return (row.getAttribute("data-" + key) || "").toLowerCase() === want;
      });
      row.hidden = !visible;
      if (visible) shown += 1;
    });
    bar.setAttribute("data-shown", String(shown));
  }

  document.querySelectorAll("table.board").forEach(function (table) {
    Array.from(table.tHead.rows[0].cells).forEach(function (th, index) {
      if (th.hasAttribute("data-sort")) {
        th.addEventListener("click", function () { sortBy(table, index, th); });
      }
    });
  });
  document.querySelectorAll("div.filters").forEach(function (bar) {
    bar.querySelectorAll("[data-filter]").forEach(function (c) {
      c.addEventListener("input", function () { applyFilters(bar); });
      c.addEventListener("change", function () { applyFilters(bar); });
    });
  });
})();

// Line charts as inline SVG, drawn without a library: a time axis (the last 15 minutes), a value
// axis from 0 to a rounded maximum, one polyline per series (a gap where a value is missing).
'use strict';

window.Charts = (function () {
  const NS = 'http://www.w3.org/2000/svg';
  const W = 600, H = 160, L = 48, R = 8, T = 8, B = 20;

  function node(tag, attrs, parent) {
    const n = document.createElementNS(NS, tag);
    for (const k in attrs) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }

  // 1, 2 or 5 times a power of ten, at least `v`.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmt(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + 'M';
    if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + 'k';
    return String(Math.round(v * 100) / 100);
  }

  // `series`: [{name, points: [[t_ms, value or null], ...]}]; `span_ms`: the time window.
  function line(container, series, span_ms) {
    const now = Date.now();
    const t0 = now - span_ms;
    let max = 0, count = 0;
    for (const s of series) for (const [t, v] of s.points) {
      if (t >= t0 && v != null) { max = Math.max(max, v); count++; }
    }
    const top = niceMax(max);
    const svg = node('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
    svg.dataset.points = String(count);
    const x = t => L + (W - L - R) * (t - t0) / span_ms;
    const y = v => T + (H - T - B) * (1 - v / top);
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4;
      node('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: i ? 'grid-line' : 'axis' }, svg);
      node('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' }, svg).textContent = fmt(v);
    }
    for (let m = 0; m <= span_ms / 60000; m += 5) {
      const t = now - m * 60000;
      node('text', { x: x(t), y: H - 6, 'text-anchor': 'middle' }, svg).textContent = m ? `-${m} min` : 'now';
    }
    series.forEach((s, i) => {
      let run = [];
      const flush = () => {
        if (run.length) node('polyline', { points: run.join(' '), class: 's' + i }, svg);
        run = [];
      };
      for (const [t, v] of s.points) {
        if (t < t0) continue;
        if (v == null) { flush(); continue; }
        run.push(x(t).toFixed(1) + ',' + y(Math.min(v, top)).toFixed(1));
      }
      flush();
    });
    const legend = document.createElement('div');
    legend.className = 'legend';
    series.forEach((s, i) => {
      const last = [...s.points].reverse().find(p => p[1] != null);
      const span = document.createElement('span');
      span.className = 'l' + i;
      span.textContent = `■ ${s.name}${last ? ': ' + fmt(last[1]) : ''}`;
      legend.appendChild(span);
    });
    container.replaceChildren(svg, legend);
    container.dataset.points = String(count);
  }

  return { line };
})();

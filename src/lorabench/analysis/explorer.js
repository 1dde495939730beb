// Redraw the explorer for the chosen dataset and metrics (a Bokeh CustomJS callback; lorabench.analysis.explorer).
// Args: full (every trained row), view (the points and the table), front (the frontier line), level (the base),
// dsel/xsel/ysel (the menus), xaxis/yaxis, note, levels (dataset -> metric -> base mean), primary (dataset ->
// its task metric), metrics (column -> [label, higher is better]), columns (the metrics on offer).
const dataset = dsel.value
const d = full.data
const idx = []
for (let i = 0; i < d.dataset.length; i++) if (d.dataset[i] === dataset) idx.push(i)
const has = (m) => idx.some((i) => d[m][i] !== null && !Number.isNaN(d[m][i]))
if (!has(ysel.value) && has(primary[dataset]) && ysel.value !== primary[dataset]) {
  ysel.value = primary[dataset]  // this change runs the callback again, with the dataset's own metric
} else {
  const [x, y] = [xsel.value, ysel.value]
  const num = (v) => (v === null || v === undefined ? NaN : v)
  const rows = idx.filter((i) => !Number.isNaN(num(d[x][i])) && !Number.isNaN(num(d[y][i])))
  const out = {}
  for (const k of Object.keys(view.data)) out[k] = []
  // Pareto frontier: a point is on it unless another is at least as good on both metrics and better on one.
  const better = (m, a, b) => (metrics[m][1] ? a > b : a < b)
  const dominated = (i) => rows.some((j) => j !== i
    && !better(x, d[x][i], d[x][j]) && !better(y, d[y][i], d[y][j])
    && (better(x, d[x][j], d[x][i]) || better(y, d[y][j], d[y][i])))
  for (const i of rows) {
    for (const k of ["method", "type", "colour", "seeds", "settings", "verdict"]) out[k].push(d[k][i])
    for (const m of columns) out[m].push(num(d[m][i]))
    out.x.push(d[x][i]); out.y.push(d[y][i])
    out.x_lo.push(num(d[x + "_lo"][i])); out.x_hi.push(num(d[x + "_hi"][i]))
    out.y_lo.push(num(d[y + "_lo"][i])); out.y_hi.push(num(d[y + "_hi"][i]))
    out.frontier.push(dominated(i) ? "no" : "yes")
  }
  view.data = out
  const onFront = rows.filter((i) => !dominated(i)).sort((i, j) => d[x][i] - d[x][j])
  front.data = {x: onFront.map((i) => d[x][i]), y: onFront.map((i) => d[y][i])}
  xaxis.axis_label = metrics[x][0] + (metrics[x][1] ? " (higher is better)" : " (lower is better)")
  yaxis.axis_label = metrics[y][0] + (metrics[y][1] ? " (higher is better)" : " (lower is better)")
  const base = (levels[dataset] || {})[y]
  level.visible = base !== undefined
  if (base !== undefined) level.location = base
  const skipped = idx.length - rows.length
  note.text = `<b>${dataset}</b>: ${rows.length} methods` + (skipped ? `; ${skipped} without both metrics left out` : "")
    + (base !== undefined ? `; the untrained base scores ${base.toPrecision(4)} (dashed)` : "")
}

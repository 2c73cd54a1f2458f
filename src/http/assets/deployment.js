// The deployment page: filters the log, and follows the deployment live over server-sent
// events until it ends. Page state comes from the JSON data island #page-state; every value
// from the server is put into the page as text, never as markup.
(function () {
  'use strict';
  const page = window.dropship.page();
  if (!page) return;
  const log = document.getElementById('log');
  const filter = document.getElementById('filter');
  let after = page.after;
  const hue = (name) => {
    let h = 7;
    for (const c of new TextEncoder().encode(name)) h = (Math.imul(h, 31) + c) >>> 0;
    return h % 12;
  };
  const show = (line) => {
    const q = filter.value.toLowerCase();
    line.hidden = q !== '' && !line.textContent.toLowerCase().includes(q);
  };
  filter.addEventListener('input', () => {
    for (const line of log.children) show(line);
  });
  if (page.final || !page.live) return;
  const cls = (s) => ({ success: 'ok', failure: 'bad', error: 'bad', timed_out: 'bad', running: 'run' })[s] || 'wait';
  let url = '/deployments/' + encodeURIComponent(page.deployment) + '/events?after=' + encodeURIComponent(after);
  if (page.token) url += '&token=' + encodeURIComponent(page.token);
  const source = new EventSource(url);
  source.addEventListener('log', (e) => {
    const l = JSON.parse(e.data);
    if (l.seq <= after) return;
    after = l.seq;
    const name = l.server || 'dropship';
    const line = window.dropship.logLine(l.stream, 'server hue-' + hue(name), name, l.line);
    line.dataset.seq = l.seq;
    show(line);
    log.appendChild(line);
  });
  source.addEventListener('step', (e) => {
    const s = JSON.parse(e.data);
    const grid = document.getElementById('grid');
    const head = grid.tHead.rows[0];
    const body = grid.tBodies[0];
    const cellId = (step, server) => 'cell-' + step + '-' + server;
    if (!Array.from(head.cells).some((th) => th.dataset.server === s.server)) {
      const th = document.createElement('th');
      th.dataset.server = s.server;
      th.textContent = s.server;
      head.appendChild(th);
      for (const r of body.rows) {
        const td = document.createElement('td');
        td.id = cellId(r.dataset.step, s.server);
        r.appendChild(td);
      }
    }
    let row = Array.from(body.rows).find((r) => r.dataset.step === String(s.step_index));
    if (!row) {
      row = body.insertRow();
      row.dataset.step = s.step_index;
      const th = document.createElement('th');
      th.textContent = s.step;
      row.appendChild(th);
      for (const h of Array.from(head.cells).slice(1)) {
        const td = document.createElement('td');
        td.id = cellId(s.step_index, h.dataset.server);
        row.appendChild(td);
      }
    }
    const cell = document.getElementById(cellId(s.step_index, s.server));
    if (cell) {
      cell.className = cls(s.state);
      cell.textContent = s.state.replace('_', ' ') + (s.exit_code && s.state !== 'success' ? ' (exit ' + s.exit_code + ')' : '');
    }
  });
  source.addEventListener('state', (e) => {
    const s = JSON.parse(e.data);
    const badge = document.getElementById('state');
    badge.textContent = s.state;
    badge.className = 'badge ' + cls(s.state);
    document.getElementById('description').textContent = s.description || '';
    if (['success', 'failure', 'error', 'inactive'].includes(s.state)) {
      source.close();
      const cancel = document.getElementById('cancel');
      if (cancel) cancel.closest('form').remove();
    }
  });
})();

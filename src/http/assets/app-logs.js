// An app's container logs page: follows new lines over server-sent events. Page state comes
// from the JSON data island #page-state; lines are put into the page as text.
(function () {
  'use strict';
  const island = document.getElementById('page-state');
  if (!island) return;
  const page = JSON.parse(island.textContent);
  const log = document.getElementById('log');
  let after = page.after;
  const source = new EventSource(page.events + '?after=' + encodeURIComponent(after));
  source.addEventListener('line', (e) => {
    const l = JSON.parse(e.data);
    if (l.id <= after) return;
    after = l.id;
    const line = document.createElement('span');
    line.className = 'line ' + l.stream;
    const app = document.createElement('span');
    app.className = 'app';
    app.textContent = l.app + '@' + l.server;
    line.appendChild(app);
    line.appendChild(document.createTextNode(' ' + l.line + '\n'));
    log.appendChild(line);
    window.scrollTo(0, document.body.scrollHeight);
  });
})();

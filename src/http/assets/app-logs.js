// An app's container logs page: follows new lines over server-sent events. Page state comes
// from the JSON data island #page-state; lines are put into the page as text.
(function () {
  'use strict';
  const page = window.dropship.page();
  if (!page) return;
  const log = document.getElementById('log');
  let after = page.after;
  const source = new EventSource(page.events + '?after=' + encodeURIComponent(after));
  source.addEventListener('line', (e) => {
    const l = JSON.parse(e.data);
    if (l.id <= after) return;
    after = l.id;
    log.appendChild(window.dropship.logLine(l.stream, 'app', l.app + '@' + l.server, l.line));
    window.scrollTo(0, document.body.scrollHeight);
  });
})();

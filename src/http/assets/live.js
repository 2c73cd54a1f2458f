// What the live pages share: their state from the JSON data island #page-state, and a log line
// built as text, never as markup. Loaded before each page's own script.
(function () {
  'use strict';
  window.dropship = {
    // The page's state, or null on a page without one.
    page() {
      const island = document.getElementById('page-state');
      return island ? JSON.parse(island.textContent) : null;
    },
    // A log line: `label` in a span of class `labelClass`, then the text.
    logLine(stream, labelClass, label, text) {
      const line = document.createElement('span');
      line.className = 'line ' + stream;
      const tag = document.createElement('span');
      tag.className = labelClass;
      tag.textContent = label;
      line.appendChild(tag);
      line.appendChild(document.createTextNode(' ' + text + '\n'));
      return line;
    },
  };
})();

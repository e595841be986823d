/* The "Finished files" table shared by the upload pages: GET /api/finished/ and render it.
 * window.tusbridgeExample.refreshFinished() returns a promise of the rows it showed. */
(function () {
  'use strict';

  function formatBytes(n) {
    var units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
    var exact = n.toLocaleString('en-US') + ' bytes';
    if (n < 1024) return exact;
    var value = n, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return value.toFixed(value < 10 ? 2 : 1) + ' ' + units[unit] + ' (' + exact + ')';
  }

  function cell(row, text, className) {
    var td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  var seen = null;  // upload ids shown before, to highlight new rows

  function render(files) {
    var table = document.getElementById('finished');
    if (!table) return;
    var body = table.tBodies[0];
    body.textContent = '';
    if (!files.length) {
      var empty = document.createElement('tr');
      cell(empty, 'No finished uploads yet.', 'empty').colSpan = 5;
      body.appendChild(empty);
    }
    files.forEach(function (file) {
      var row = document.createElement('tr');
      row.dataset.uploadId = file.upload_id;
      row.dataset.sha256 = file.sha256;
      row.dataset.size = String(file.size);
      row.dataset.name = file.name;
      row.dataset.protocol = file.protocol;
      row.dataset.finishedWith = file.finished_with;
      if (seen && !seen[file.upload_id]) row.className = 'fresh';
      cell(row, file.name, 'name');
      cell(row, formatBytes(file.size), 'size');
      cell(row, file.sha256, 'sha256');
      cell(row, file.protocol === file.finished_with || !file.finished_with
        ? file.protocol : file.protocol + ' \u2192 ' + file.finished_with, 'protocol');
      cell(row, file.upload_id.slice(0, 8) + '\u2026', 'upload-id').title = file.upload_id;
      body.appendChild(row);
    });
    seen = {};
    files.forEach(function (file) { seen[file.upload_id] = true; });
  }

  function refreshFinished() {
    var table = document.getElementById('finished');
    if (!table) return Promise.resolve([]);
    return fetch(table.dataset.url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (response) {
        if (!response.ok) throw new Error('GET ' + table.dataset.url + ' answered ' + response.status);
        return response.json();
      })
      .then(function (data) { render(data.files); return data.files; })
      .catch(function (error) {
        var body = table.tBodies[0];
        body.textContent = '';
        var row = document.createElement('tr');
        cell(row, 'Could not load the list: ' + error.message, 'empty').colSpan = 5;
        body.appendChild(row);
        return [];
      });
  }

  window.tusbridgeExample = window.tusbridgeExample || {};
  window.tusbridgeExample.refreshFinished = refreshFinished;
  window.tusbridgeExample.formatBytes = formatBytes;
  document.addEventListener('DOMContentLoaded', refreshFinished);
})();

/* Uppy Dashboard + Tus against tusbridge's /files/ (same origin: the session cookie goes along). */
(function () {
  'use strict';
  var config = JSON.parse(document.getElementById('uppy-config').textContent);
  var example = window.tusbridgeExample;
  if (!window.Uppy) return;  // npm packages missing: the page says so

  var uppy = new window.Uppy.Uppy({ id: 'tusbridge-example', autoProceed: false })
    .use(window.Uppy.Dashboard, {
      inline: true,
      target: '#dashboard',
      width: '100%',
      height: 430,
      proudlyDisplayPoweredByUppy: false,
      showRemoveButtonAfterComplete: true,
      note: 'Any files, several at once. Uploads resume after a reload: add the same file again.',
    })
    .use(window.Uppy.Tus, {
      endpoint: config.endpoint,
      chunkSize: config.chunkSize,
      retryDelays: [0, 1000, 3000, 5000],
      // Keep upload URLs in localStorage (tus-js-client's default) so that the
      // same file resumes after a reload; forget them once the upload is done,
      // so adding a finished file again makes a new upload.
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      limit: 3,
    });

  // For people reading the console and for the browser tests.
  window.uppy = uppy;
  window.uppyEvents = [];
  ['upload-success', 'upload-error', 'complete'].forEach(function (name) {
    uppy.on(name, function (file) {
      window.uppyEvents.push({ event: name, name: file && file.name, url: file && file.tus && file.tus.uploadUrl });
    });
  });
  uppy.on('upload-success', function () { example.refreshFinished(); });
  uppy.on('complete', function () { example.refreshFinished(); listUnfinished(); });

  /* Upload URLs tus-js-client keeps in localStorage ("tus::<fingerprint>::<n>"), with the
   * offset the server reports for each (HEAD). Gone or finished ones are forgotten. */
  function listUnfinished() {
    var list = document.getElementById('unfinished');
    var entries = [];
    for (var i = 0; i < localStorage.length; i++) {
      var key = localStorage.key(i);
      if (key && key.indexOf('tus::') === 0) {
        try { entries.push({ key: key, value: JSON.parse(localStorage.getItem(key)) }); } catch (e) { /* not ours */ }
      }
    }
    return Promise.all(entries.map(function (entry) {
      return fetch(entry.value.uploadUrl, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' }, credentials: 'same-origin' })
        .then(function (response) {
          var offset = Number(response.headers.get('Upload-Offset'));
          var length = Number(response.headers.get('Upload-Length'));
          if (!response.ok || (length && offset >= length)) { localStorage.removeItem(entry.key); return null; }
          return { entry: entry, offset: offset, length: length };
        })
        .catch(function () { return null; });
    })).then(function (rows) {
      rows = rows.filter(Boolean);
      list.textContent = '';
      rows.forEach(function (row) {
        var li = document.createElement('li');
        var meta = row.entry.value.metadata || {};
        li.dataset.uploadUrl = row.entry.value.uploadUrl;
        li.dataset.offset = String(row.offset);
        li.textContent = (meta.filename || meta.name || row.entry.value.uploadUrl) + ': ' +
          example.formatBytes(row.offset) + ' of ' + example.formatBytes(row.length) + ' on the server (' +
          Math.floor(100 * row.offset / row.length) + '%)';
        list.appendChild(li);
      });
      document.getElementById('unfinished-section').hidden = rows.length === 0;
      return rows;
    });
  }
  window.tusbridgeExample.listUnfinished = listUnfinished;
  listUnfinished();
})();

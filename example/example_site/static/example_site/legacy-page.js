/* jQuery-File-Upload speaking the legacy chunked-upload protocol, as django-chunked-upload's demo
 * page does it (formData with the CSRF token and the upload_id, md5 with SparkMD5, completion POST),
 * plus a progress bar and resuming after a failed chunk. */
(function ($) {
  'use strict';
  var config = JSON.parse(document.getElementById('legacy-config').textContent);
  var example = window.tusbridgeExample;
  if (!$ || !$.fn.fileupload || !window.SparkMD5) return;  // npm packages missing: the page says so

  var RETRY_DELAYS = [200, 1000, 2000, 4000, 8000];
  var csrf = $("input[name='csrfmiddlewaretoken']")[0].value;
  // The CSRF token always goes first; the upload_id is pushed after the first chunk.
  var form_data = [{ name: 'csrfmiddlewaretoken', value: csrf }];
  var md5 = null;
  var retries = 0;
  // What happened, for people reading the console and for the browser tests.
  var state = window.legacyUpload = { uploadId: null, md5: null, resumedAt: [], completed: false, error: null };

  function showProgress(loaded, total, className) {
    var pct = example.percent(loaded, total);
    $('#progress-bar').css('width', pct + '%').attr('class', 'bar legacy' + (className ? ' ' + className : ''));
    $('#progress-label').text(pct + '% \u2014 ' + loaded.toLocaleString('en-US') + ' of ' + total.toLocaleString('en-US') + ' bytes');
  }

  function complete(uploadId, size) {
    example.setStatus('All ' + size.toLocaleString('en-US') + ' bytes sent; waiting for the md5\u2026');
    md5.then(function (hex) {
      state.md5 = hex;
      example.log('md5 computed in the browser: ' + hex);
      return $.ajax({
        type: 'POST',
        url: config.completeUrl,
        data: { csrfmiddlewaretoken: csrf, upload_id: uploadId, md5: hex },
        dataType: 'json',
      });
    }).then(function (result) {
      state.completed = true;
      example.log('completed: ' + JSON.stringify(result));
      showProgress(size, size, 'done');
      example.setStatus('Upload complete (md5 ' + state.md5 + ' confirmed by the server).', 'ok');
      return example.refreshFinished();
    }, function (xhr) {
      var detail = (xhr && xhr.responseJSON && xhr.responseJSON.detail) || String(xhr);
      state.error = 'completion failed: ' + detail;
      example.log(state.error, 'error');
      example.setStatus('Completion failed: ' + detail, 'error');
      showProgress(size, size, 'failed');
    });
  }

  $('#chunked_upload').fileupload({
    url: config.chunkUrl,
    dataType: 'json',
    maxChunkSize: config.chunkSize,
    formData: form_data,
    add: function (e, data) {  // a file was chosen
      var file = data.files[0];
      $('#messages').empty();
      // A second upload from this page starts without the previous upload_id.
      form_data.splice(1);
      retries = 0;
      state.uploadId = null; state.md5 = null; state.resumedAt = []; state.completed = false; state.error = null;
      md5 = example.calculateMd5(file, config.chunkSize);
      showProgress(0, file.size);
      example.setStatus('Uploading ' + file.name + ' (' + file.size.toLocaleString('en-US') + ' bytes)\u2026');
      data.submit();
    },
    chunkdone: function (e, data) {  // after each chunk
      if (form_data.length < 2) {
        form_data.push({ name: 'upload_id', value: data.result.upload_id });
        state.uploadId = data.result.upload_id;
      }
      retries = 0;
      example.log('chunk ' + data.contentRange + ' \u2192 ' + JSON.stringify(data.result));
    },
    progress: function (e, data) {
      showProgress(data.loaded, data.total);
    },
    fail: function (e, data) {
      var xhr = data.jqXHR;
      var body = xhr && xhr.responseJSON;
      var size = data.files[0].size;
      var status = xhr ? xhr.status : 0;
      var permanent = [401, 403, 404, 410, 413].indexOf(status) >= 0 ||
        (status === 400 && !(body && typeof body.offset === 'number'));
      example.log('chunk failed: ' + (status ? status + ' ' + JSON.stringify(body || xhr.responseText) : 'network error, no answer'), 'error');
      if (permanent || retries >= RETRY_DELAYS.length) {
        state.error = 'upload failed' + (body && body.detail ? ': ' + body.detail : '');
        example.setStatus('Upload failed' + (body && body.detail ? ': ' + body.detail : '') + '.', 'error');
        showProgress(data.uploadedBytes || 0, size, 'failed');
        return;
      }
      // Ask the server where it stands: a chunk that starts elsewhere than the server's
      // offset is answered 400 "Offsets do not match" with that offset. After a lost
      // request or a lost answer, resending from what we believe is that question.
      if (body && typeof body.offset === 'number') {
        data.uploadedBytes = body.offset;
      }
      var from = data.uploadedBytes || 0;
      var delay = RETRY_DELAYS[retries];
      retries += 1;
      state.resumedAt.push(from);
      example.setStatus('A chunk failed; retrying from byte ' + from.toLocaleString('en-US') + ' in ' + delay + ' ms (try ' + retries + ')\u2026');
      example.log('retry ' + retries + ' from byte ' + from, 'legacy');
      data.data = null;  // rebuild the multipart body for the next chunk
      window.setTimeout(function () { data.submit(); }, delay);
    },
    done: function (e, data) {  // the last chunk (or the only request) succeeded
      var file = data.files[0];
      if (!state.uploadId) {
        state.uploadId = data.result.upload_id;
        example.log('whole file in one request \u2192 ' + JSON.stringify(data.result));
      }
      complete(data.result.upload_id, file.size);
    },
  });
})(window.jQuery);

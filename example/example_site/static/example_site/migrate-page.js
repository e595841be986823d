/* Begin an upload with jQuery-File-Upload (legacy chunks), finish it with tus-js-client on
 * /files/<upload_id>: the migration path of a site moving its pages to tus one at a time. */
(function ($) {
  'use strict';
  var config = JSON.parse(document.getElementById('migrate-config').textContent);
  var example = window.tusbridgeExample;
  if (!$ || !$.fn.fileupload || !window.tus) return;  // npm packages missing: the page says so

  var csrf = $("input[name='csrfmiddlewaretoken']")[0].value;
  var form_data = [{ name: 'csrfmiddlewaretoken', value: csrf }];
  var state = window.migration = null;

  function showProgress(size) {
    var legacyPct = 100 * state.legacyBytes / size;
    var tusPct = 100 * Math.max(0, state.offset - state.legacyBytes) / size;
    $('#bar-legacy').css('width', legacyPct + '%');
    $('#bar-tus').css('width', tusPct + '%');
    $('#progress-label').text(example.percent(state.offset, size) + '% \u2014 ' +
      state.legacyBytes.toLocaleString('en-US') + ' bytes legacy + ' +
      Math.max(0, state.offset - state.legacyBytes).toLocaleString('en-US') + ' bytes tus of ' +
      size.toLocaleString('en-US'));
  }

  function finishWithTus(file) {
    var uploadUrl = config.tusUploadUrlPrefix + state.uploadId;
    state.phase = 'tus';
    example.log('switching to tus-js-client at ' + uploadUrl + ' (the server has ' + state.legacyBytes + ' bytes)', 'tus');
    example.setStatus('Continuing with tus from byte ' + state.legacyBytes.toLocaleString('en-US') + '\u2026');
    var upload = new window.tus.Upload(file, {
      uploadUrl: uploadUrl,  // resume this upload: HEAD for the offset, then PATCH
      chunkSize: config.tusChunkSize,
      retryDelays: [0, 1000, 3000],
      metadata: { filename: file.name, filetype: file.type },
      storeFingerprintForResuming: false,  // the URL is known; keep localStorage for the Uppy page
      onAfterResponse: function (req, res) {
        if (req.getMethod() === 'HEAD') {
          state.tusStartOffset = Number(res.getHeader('Upload-Offset'));
          example.log('HEAD ' + uploadUrl + ' \u2192 Upload-Offset: ' + state.tusStartOffset, 'tus');
        } else if (req.getMethod() === 'PATCH') {
          example.log('PATCH \u2192 Upload-Offset: ' + res.getHeader('Upload-Offset'), 'tus');
        }
      },
      onProgress: function (sent, total) {
        state.offset = sent;
        showProgress(total);
      },
      onSuccess: function () {
        state.offset = file.size;
        state.completed = true;
        state.phase = 'done';
        showProgress(file.size);
        example.setStatus('Upload complete: ' + state.legacyBytes.toLocaleString('en-US') + ' bytes legacy, ' +
          (file.size - state.tusStartOffset).toLocaleString('en-US') + ' bytes tus, one upload (' + state.uploadId + ').', 'ok');
        example.refreshFinished();
      },
      onError: function (error) {
        state.error = String(error);
        example.log('tus failed: ' + error, 'error');
        example.setStatus('tus failed: ' + error, 'error');
      },
    });
    upload.start();
  }

  $('#migrate_upload').fileupload({
    url: config.chunkUrl,
    dataType: 'json',
    maxChunkSize: config.chunkSize,
    formData: form_data,
    add: function (e, data) {
      var file = data.files[0];
      $('#messages').empty();
      form_data.splice(1);
      state = window.migration = {
        uploadId: null, phase: 'legacy', legacyChunks: 0, legacyBytes: 0, offset: 0,
        tusStartOffset: null, completed: false, error: null,
        // Stop after the configured number of chunks, but always leave something for tus.
        stopAfter: Math.min(config.legacyChunks, Math.ceil(file.size / config.chunkSize) - 1),
      };
      if (state.stopAfter < 1) {
        state.error = 'file too small';
        example.setStatus('Choose a file larger than one chunk (' + config.chunkSize + ' bytes).', 'error');
        return;
      }
      showProgress(file.size);
      example.setStatus('Sending the first ' + state.stopAfter + ' chunks with jQuery-File-Upload\u2026');
      data.submit();
    },
    chunksend: function (e, data) {  // before each chunk; false stops the legacy upload here
      if (state.legacyChunks >= state.stopAfter) {
        state.switching = true;
        return false;
      }
      return undefined;
    },
    chunkdone: function (e, data) {
      if (form_data.length < 2) {
        form_data.push({ name: 'upload_id', value: data.result.upload_id });
        state.uploadId = data.result.upload_id;
      }
      state.legacyChunks += 1;
      state.legacyBytes = state.offset = data.result.offset;
      example.log('legacy chunk ' + data.contentRange + ' \u2192 ' + JSON.stringify(data.result), 'legacy');
      showProgress(data.files[0].size);
    },
    fail: function (e, data) {
      if (state.switching) {
        finishWithTus(data.files[0]);
        return;
      }
      var body = data.jqXHR && data.jqXHR.responseJSON;
      state.error = 'legacy chunk failed' + (body && body.detail ? ': ' + body.detail : '');
      example.log(state.error, 'error');
      example.setStatus(state.error, 'error');
    },
  });
})(window.jQuery);

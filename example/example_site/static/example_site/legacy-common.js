/* Helpers shared by the legacy and migration pages: md5 with SparkMD5, progress bar, log. */
(function () {
  'use strict';
  var example = window.tusbridgeExample = window.tusbridgeExample || {};

  /* md5 of a File, read in slices of chunkSize with FileReader and fed to SparkMD5
   * incrementally (as django-chunked-upload's demo does), so big files never sit whole
   * in memory. Resolves to lowercase hex. */
  example.calculateMd5 = function (file, chunkSize) {
    return new Promise(function (resolve, reject) {
      var slice = File.prototype.slice || File.prototype.mozSlice || File.prototype.webkitSlice;
      var chunks = Math.max(1, Math.ceil(file.size / chunkSize));
      var current = 0;
      var spark = new SparkMD5.ArrayBuffer();
      function readNext() {
        var reader = new FileReader();
        var start = current * chunkSize;
        reader.onload = function (event) {
          spark.append(event.target.result);
          current += 1;
          if (current < chunks) readNext(); else resolve(spark.end());
        };
        reader.onerror = function () { reject(reader.error); };
        reader.readAsArrayBuffer(slice.call(file, start, Math.min(start + chunkSize, file.size)));
      }
      readNext();
    });
  };

  /* The log keeps its last 200 lines: a 1 GB file is over 10 000 chunks, and a list
   * that grows by one line per chunk makes every later chunk slower to show. The
   * numbering goes on where the dropped lines left it. */
  var LOG_LINES = 200;
  example.log = function (text, className) {
    var li = document.createElement('li');
    li.textContent = text;
    if (className) li.className = className;
    var list = document.getElementById('messages');
    list.appendChild(li);
    while (list.children.length > LOG_LINES) {
      list.removeChild(list.firstElementChild);
      list.start = (list.start || 1) + 1;
    }
    list.scrollTop = list.scrollHeight;
  };

  example.setStatus = function (text, className) {
    var status = document.getElementById('status');
    status.textContent = text;
    status.className = 'status' + (className ? ' ' + className : '');
  };

  example.percent = function (loaded, total) {
    return total ? Math.min(100, Math.floor(100 * loaded / total)) : 100;
  };
})();

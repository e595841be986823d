#!/usr/bin/env node
// Upload one file with tus-js-client and print the result as JSON on stdout.
//
// Reads its options as JSON on stdin (so cookies never show up in a process list):
//   {
//     "endpoint": "http://127.0.0.1:8000/files/",   // the tus collection URL
//     "file": "/path/to/file",                       // what to upload
//     "source": "stream" | "buffer",                 // fs.createReadStream (default) or a Buffer
//     "chunkSize": 262144,                           // optional, bytes per PATCH
//     "parallelUploads": 3,                          // optional, > 1 uses the concatenation extension
//     "headers": {"Cookie": "sessionid=..."},        // optional, sent with every request
//     "metadata": {"filename": "a.bin"},             // optional Upload-Metadata
//     "retryDelays": [0, 200, 500],                  // optional; default null (fail on the first error)
//     "urlStorage": "/path/to/urls.json",            // optional FileUrlStorage: fingerprints are kept there
//     "resume": true,                                // optional, with urlStorage: resume the first previous upload
//     "abortAfter": 1048576                          // optional: upload.abort() once progress reaches this
//   }
//
// On success prints {"url": <final upload URL>, "requests": [...], "aborted": null,
// "retries": [...], "clientPorts": [...]} where each request is
// {method, url, status, uploadConcat, requestOffset, uploadOffset} as
// tus-js-client sent it and saw the answer (requestOffset is the Upload-Offset
// sent, uploadOffset the one answered), each retry is {attempt, error, status}
// (one per onShouldRetry call) and clientPorts are the local ports of every
// connection opened. With abortAfter, "aborted" is the progress (bytes) at which
// the upload was aborted, and the script exits 0 without finishing. On failure prints
// {"error": <message>, "status": <HTTP status or null>, "body": <response text or null>}
// on stdout and exits with status 1.

'use strict'

const fs = require('node:fs')
const http = require('node:http')
const tus = require('tus-js-client')

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = []
    process.stdin.on('data', (chunk) => chunks.push(chunk))
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

function fail(error) {
  const res = error && error.originalResponse ? error.originalResponse : null
  const out = {
    error: String(error && error.message ? error.message : error),
    status: res ? res.getStatus() : null,
    body: res ? res.getBody() : null,
  }
  process.stdout.write(`${JSON.stringify(out)}\n`)
  process.exit(1)
}

// An HTTP agent that records the local port of every connection it opens, so a
// test can wait until the server is done with them.
function trackingAgent(ports) {
  const agent = new http.Agent({ keepAlive: true })
  const createConnection = agent.createConnection.bind(agent)
  agent.createConnection = (...args) => {
    const socket = createConnection(...args)
    socket.once('connect', () => ports.push(socket.localPort))
    return socket
  }
  return agent
}

async function main() {
  const options = JSON.parse(await readStdin())
  if (!options.endpoint || !options.file) {
    throw new Error('endpoint and file are required')
  }
  const input =
    options.source === 'buffer' ? fs.readFileSync(options.file) : fs.createReadStream(options.file)
  const requests = []
  const retries = []
  const clientPorts = []
  let aborted = null

  const url = await new Promise((resolve, reject) => {
    let upload = null
    const uploadOptions = {
      endpoint: options.endpoint,
      headers: options.headers || {},
      metadata: options.metadata || {},
      httpStack: new tus.DefaultHttpStack({ agent: trackingAgent(clientPorts) }),
      // By default fail on the first error instead of retrying: the test wants to see it.
      retryDelays: options.retryDelays || null,
      onShouldRetry(err, attempt, opts) {
        const res = err.originalResponse
        retries.push({ attempt, error: String(err.message), status: res ? res.getStatus() : null })
        return tus.defaultOptions.onShouldRetry(err, attempt, opts)
      },
      onProgress(bytesSent) {
        if (options.abortAfter && aborted === null && bytesSent >= options.abortAfter) {
          aborted = bytesSent
          // On the next turn, so the piece of the PATCH body just reported has been sent:
          // the abort then cuts a PATCH whose body the server has started to receive.
          setImmediate(() => upload.abort().then(() => resolve(upload.url), reject))
        }
      },
      onAfterResponse(req, res) {
        requests.push({
          method: req.getMethod(),
          url: req.getURL(),
          status: res.getStatus(),
          uploadConcat: req.getHeader('Upload-Concat') || null,
          requestOffset: req.getHeader('Upload-Offset') || null,
          uploadOffset: res.getHeader('Upload-Offset') || null,
        })
      },
      onError: reject,
      onSuccess: () => resolve(upload.url),
    }
    if (options.urlStorage) {
      uploadOptions.urlStorage = new tus.FileUrlStorage(options.urlStorage)
      uploadOptions.storeFingerprintForResuming = true
      uploadOptions.removeFingerprintOnSuccess = false
    }
    if (options.chunkSize) {
      uploadOptions.chunkSize = options.chunkSize
    }
    if (options.parallelUploads) {
      uploadOptions.parallelUploads = options.parallelUploads
    }
    upload = new tus.Upload(input, uploadOptions)
    if (!options.resume) {
      upload.start()
      return
    }
    upload
      .findPreviousUploads()
      .then((previous) => {
        if (previous.length === 0) {
          throw new Error(`no previous upload in ${options.urlStorage}`)
        }
        upload.resumeFromPreviousUpload(previous[0])
        upload.start()
      })
      .catch(reject)
  })
  process.stdout.write(`${JSON.stringify({ url, requests, aborted, retries, clientPorts })}\n`)
  // An aborted upload may leave its file source open; do not wait for it.
  process.exit(0)
}

main().catch(fail)

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
//     "metadata": {"filename": "a.bin"}              // optional Upload-Metadata
//   }
//
// On success prints {"url": <final upload URL>, "requests": [...]} where each
// request is {method, url, status, uploadConcat, uploadOffset}
// as tus-js-client sent it and saw the answer. On failure prints
// {"error": <message>, "status": <HTTP status or null>, "body": <response text or null>}
// on stdout and exits with status 1.

'use strict'

const fs = require('node:fs')
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

async function main() {
  const options = JSON.parse(await readStdin())
  if (!options.endpoint || !options.file) {
    throw new Error('endpoint and file are required')
  }
  const input =
    options.source === 'buffer' ? fs.readFileSync(options.file) : fs.createReadStream(options.file)
  const requests = []

  const url = await new Promise((resolve, reject) => {
    let upload = null
    const uploadOptions = {
      endpoint: options.endpoint,
      headers: options.headers || {},
      metadata: options.metadata || {},
      // Fail on the first error instead of retrying: the test wants to see it.
      retryDelays: null,
      onAfterResponse(req, res) {
        requests.push({
          method: req.getMethod(),
          url: req.getURL(),
          status: res.getStatus(),
          uploadConcat: req.getHeader('Upload-Concat') || null,
          uploadOffset: res.getHeader('Upload-Offset') || null,
        })
      },
      onError: reject,
      onSuccess: () => resolve(upload.url),
    }
    if (options.chunkSize) {
      uploadOptions.chunkSize = options.chunkSize
    }
    if (options.parallelUploads) {
      uploadOptions.parallelUploads = options.parallelUploads
    }
    upload = new tus.Upload(input, uploadOptions)
    upload.start()
  })
  process.stdout.write(`${JSON.stringify({ url, requests })}\n`)
}

main().catch(fail)

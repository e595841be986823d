// The official tus Node server as tusbridge's benchmarks run it: @tus/server with
// @tus/file-store on one directory, exactly as its README's standalone example.
// Usage: node server.mjs PORT DIRECTORY   (binds 127.0.0.1, serves /files/)
import http from "node:http";
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const [port, directory] = process.argv.slice(2);
if (!port || !directory) {
  console.error("usage: node server.mjs PORT DIRECTORY");
  process.exit(2);
}

const tus = new Server({
  path: "/files",
  datastore: new FileStore({ directory }),
});

const server = http.createServer((req, res) => tus.handle(req, res));
// Node's defaults close idle keep-alive connections after 5 s and limit a whole
// request to 300 s; a 1 GiB PATCH on a slow machine may need longer.
server.requestTimeout = 0;
server.listen(Number(port), "127.0.0.1", () => {
  console.log(`tus node server on http://127.0.0.1:${port}/files/ storing in ${directory}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}

#!/usr/bin/env node
// A Corral out-of-process gateway plugin in Node.js (protocol: docs/plugins.md).
//
// It listens on the Unix socket the gateway names in CORRAL_PLUGIN_SOCKET and answers each
// on_request frame: it tags the request with `X-Tag: node` (seen by the upstream), and
// answers 403 itself when the path starts with /forbidden. A request carrying `X-Hang: 1`
// is never answered, to show the gateway's timeout at work.
"use strict";
const net = require("net");
const fs = require("fs");

const path = process.env.CORRAL_PLUGIN_SOCKET;
if (!path) {
  console.error("tag.js: CORRAL_PLUGIN_SOCKET is not set (the gateway starts this plugin)");
  process.exit(2);
}
try { fs.unlinkSync(path); } catch (e) { /* no stale socket */ }

function frame(message) {
  const body = Buffer.from(JSON.stringify(message), "utf8");
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  return Buffer.concat([head, body]);
}

function handle(request) {
  const headers = new Map(request.headers.map(([name, value]) => [name.toLowerCase(), value]));
  if (headers.get("x-hang") === "1") return null; // never answered
  if (request.path.startsWith("/forbidden")) {
    return { id: request.id, action: "respond", status: 403,
             headers: { "Content-Type": "text/plain" }, body: "forbidden by tag.js\n" };
  }
  return { id: request.id, action: "continue", set_headers: { "X-Tag": "node" } };
}

net.createServer((socket) => {
  let buf = Buffer.alloc(0);
  socket.on("data", (data) => {
    buf = Buffer.concat([buf, data]);
    while (buf.length >= 4) {
      const size = buf.readUInt32BE(0);
      if (buf.length < 4 + size) break;
      const request = JSON.parse(buf.subarray(4, 4 + size).toString("utf8"));
      buf = buf.subarray(4 + size);
      const reply = handle(request);
      if (reply !== null) socket.write(frame(reply));
    }
  });
  socket.on("error", () => {}); // the gateway went away: wait for the next connection
}).listen(path);

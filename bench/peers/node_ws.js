// Node `ws`: each message a client sends goes to every open client, with
// `client.send()` in a loop as in the library's README broadcast example.
// Run by bench.fanout with NODE_PATH pointing at a bench-local install.
"use strict";

const { WebSocketServer, WebSocket } = require("ws");

const args = process.argv.slice(2);
const port = Number(args[args.indexOf("--port") + 1]);
const host = args.includes("--host") ? args[args.indexOf("--host") + 1] : "127.0.0.1";

const wss = new WebSocketServer({ host, port, backlog: 4096, perMessageDeflate: false });

wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
});

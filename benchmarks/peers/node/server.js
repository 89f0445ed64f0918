// The skill-sharing protocol in plain Node.js: the reference peer the
// benchmarks compare talkserver with (see README.md beside this file).
//
//   node benchmarks/peers/node/server.js [PORT]       (default 8300, on 127.0.0.1)
//
// Environment: HOST (default 127.0.0.1), POLL_TIMEOUT_MS (default 90000),
// HEARTBEAT_MS (event-stream comments when idle, default 15000).
//
// Its one dependency is the ws package (package.json beside this file, installed
// with `npm ci` there; `make test` does), for GET /talks upgraded to a WebSocket.
//
// It is written the plain way, as the book's server is: everything in memory,
// each waiting client's answer encoded for that client, the list of changed
// titles walked on every request.  Only the cursor is taken care of: each
// change gets a stamp greater than every earlier one, so two changes in the
// same millisecond are both seen.

"use strict";

const http = require("node:http");

let WebSocketServer;
try {
  ({ WebSocketServer } = require("ws"));
} catch (_) {
  console.error("node peer: the ws package is missing: make benchmarks/peers/node/node_modules/.installed (npm ci there)");
  process.exit(2);
}

const PORT = Number(process.argv[2] || 8300);
const HOST = process.env.HOST || "127.0.0.1";
const POLL_TIMEOUT_MS = Number(process.env.POLL_TIMEOUT_MS || 90000);
const HEARTBEAT_MS = Number(process.env.HEARTBEAT_MS || 15000);
const MAX_BODY = 1 << 20;

// -- the board: talks, and per title the stamp of its latest change ----------

const talks = new Map(); // title -> {title, presenter, summary, comments}
const stamps = new Map(); // title -> stamp; a deleted title stays, as a tombstone
let head = Date.now(); // the stamp of the latest change: the cursor answers carry

function changed(title) {
  head = Math.max(Date.now(), head + 1);
  stamps.delete(title); // re-inserted at the end: the Map stays in stamp order
  stamps.set(title, head);
  for (const waiter of waiters) waiter(); // every poll and stream gets its answer
}

// The /talks answer for a cursor (null: every talk); null when nothing is newer.
function answer(since) {
  if (since === null || since > head) {
    const reset = since !== null; // a cursor from another server's life
    return { serverTime: head, talks: [...talks.values()], ...(reset && { reset }) };
  }
  const changes = [];
  for (const [title, stamp] of stamps) {
    if (stamp > since) changes.push(talks.get(title) || { title, deleted: true });
  }
  return changes.length ? { serverTime: head, talks: changes } : null;
}

// -- following: long polls and event streams wait here ------------------------

const waiters = new Set(); // callbacks, called on every change

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": Buffer.byteLength(data),
    "Cache-Control": "no-store",
  });
  res.end(data);
}

// GET /talks?changesSince=T: answer now if anything is newer, else at the next
// change, else empty after POLL_TIMEOUT_MS.
function poll(req, res, since) {
  const now = answer(since);
  if (now || since === null) return send(res, 200, now);
  const done = () => {
    waiters.delete(wake);
    clearTimeout(timer);
  };
  const wake = () => {
    done();
    send(res, 200, answer(since));
  };
  const timer = setTimeout(() => {
    done();
    send(res, 200, { serverTime: head, talks: [] });
  }, POLL_TIMEOUT_MS);
  waiters.add(wake);
  res.on("close", done);
}

// GET /talks with Accept: text/event-stream: the first event holds the board
// (or what changed after Last-Event-ID or changesSince), then one event per change.
function stream(req, res, since) {
  const lastId = req.headers["last-event-id"];
  if (lastId !== undefined && /^\d+$/.test(lastId)) since = Number(lastId);
  res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-store" });
  res.write("retry: 2000\n\n");
  const event = () => {
    const body = answer(since);
    if (!body) return;
    since = body.serverTime;
    res.write(`id: ${body.serverTime}\ndata: ${JSON.stringify(body)}\n\n`);
  };
  event();
  const heartbeat = setInterval(() => res.write(": heartbeat\n\n"), HEARTBEAT_MS);
  waiters.add(event);
  res.on("close", () => {
    waiters.delete(event);
    clearInterval(heartbeat);
  });
}

// GET /talks upgraded to a WebSocket: the first text frame at once, holding what
// a poll would answer now (the board, or the changes after changesSince, possibly
// none), then one frame per change.  What the client sends is ignored.
function socket(ws, since) {
  const first = answer(since) || { serverTime: head, talks: [] };
  since = first.serverTime;
  ws.send(JSON.stringify(first));
  const change = () => {
    const body = answer(since);
    if (!body) return;
    since = body.serverTime;
    ws.send(JSON.stringify(body));
  };
  waiters.add(change);
  ws.on("close", () => waiters.delete(change));
  ws.on("error", () => ws.terminate()); // a bad frame: drop that socket, not the server
}

// -- requests --------------------------------------------------------------

function readJSON(req, res, use) {
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      send(res, 413, { error: `the body is larger than ${MAX_BODY} bytes` });
      req.destroy();
    } else chunks.push(chunk);
  });
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch (_) {
      return send(res, 400, { error: "the body is not JSON" });
    }
    use(body);
  });
}

const text = (value) => typeof value === "string";

function talksRequest(req, res, url) {
  const raw = url.searchParams.get("changesSince");
  if (raw !== null && !/^\d+$/.test(raw)) {
    return send(res, 400, { error: "changesSince must be a whole number" });
  }
  const since = raw === null ? null : Number(raw);
  if ((req.headers.accept || "").includes("text/event-stream")) return stream(req, res, since);
  poll(req, res, since);
}

function talkRequest(req, res, title) {
  if (req.method === "GET") {
    const talk = talks.get(title);
    return talk ? send(res, 200, talk) : send(res, 404, { error: `there is no talk titled ${title}` });
  }
  if (req.method === "DELETE") {
    if (talks.delete(title)) changed(title);
    res.writeHead(204).end();
    return;
  }
  if (req.method === "PUT") {
    return readJSON(req, res, (body) => {
      if (!body || !text(body.presenter) || !text(body.summary)) {
        return send(res, 400, { error: "a talk needs a presenter and a summary (strings)" });
      }
      talks.set(title, { title, presenter: body.presenter, summary: body.summary, comments: [] });
      changed(title);
      res.writeHead(204).end();
    });
  }
  send(res, 405, { error: `${req.method} is not allowed here` });
}

function commentRequest(req, res, title) {
  if (req.method !== "POST") return send(res, 405, { error: `${req.method} is not allowed here` });
  readJSON(req, res, (body) => {
    const talk = talks.get(title);
    if (!body || !text(body.author) || !text(body.message)) {
      return send(res, 400, { error: "a comment needs an author and a message (strings)" });
    }
    if (!talk) return send(res, 404, { error: `there is no talk titled ${title}` });
    // A new object: answers being written keep the talk as it was.
    talks.set(title, { ...talk, comments: [...talk.comments, { author: body.author, message: body.message }] });
    changed(title);
    res.writeHead(204).end();
  });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://peer");
  const path = url.pathname.split("/");
  let title;
  try {
    title = path[2] === undefined ? undefined : decodeURIComponent(path[2]);
  } catch (_) {
    return send(res, 400, { error: "the title is not valid URL encoding" });
  }
  if (url.pathname === "/talks" && req.method === "GET") return talksRequest(req, res, url);
  if (path[1] === "talks" && title && path.length === 3) return talkRequest(req, res, title);
  if (path[1] === "talks" && title && path.length === 4 && path[3] === "comments") {
    return commentRequest(req, res, title);
  }
  send(res, 404, { error: `no such path: ${url.pathname}` });
});

// Upgrades skip the request handler above: only GET /talks becomes a WebSocket.
// permessage-deflate is off (ws's default), as in talkserver.
const sockets = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
server.on("upgrade", (req, conn, firstBytes) => {
  const url = new URL(req.url, "http://peer");
  const raw = url.searchParams.get("changesSince");
  const refuse = (status) => conn.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  if (url.pathname !== "/talks") return refuse("404 Not Found");
  if (raw !== null && !/^\d+$/.test(raw)) return refuse("400 Bad Request");
  sockets.handleUpgrade(req, conn, firstBytes, (ws) => socket(ws, raw === null ? null : Number(raw)));
});

// Long polls stay quiet for POLL_TIMEOUT_MS: no request timeout shorter than that.
server.requestTimeout = 0;
server.keepAliveTimeout = POLL_TIMEOUT_MS + 5000;
// Port 0 picks a free port; the line says which one was bound.
server.listen(PORT, HOST, () => console.log(`node peer on http://${HOST}:${server.address().port}/`));
process.on("SIGTERM", () => process.exit(0));

// Sends events to Rivulet and receives them, with the official CloudEvents SDK for JavaScript.
//
//   node cloudevents_sdk.cjs send URL binary|structured|batch < events.json
//     Reads a JSON array of events in the CloudEvents JSON format, builds them as SDK events
//     (extension values keep their JSON types) and posts them to URL: one request per event in
//     binary or structured mode, one request for all of them as a batch. Prints one JSON line
//     per request: {"status": 202, "body": "..."}.
//
//   node cloudevents_sdk.cjs receive
//     Serves HTTP on 127.0.0.1 at a free port, prints {"listening": PORT}, then one JSON line
//     per request: {"path", "mode", "events"}, every event as the SDK read it.
//
// The SDK reads batches but has no batch writer, so a batch is the JSON array of the SDK's own
// event encodings.
"use strict";

const http = require("node:http");
const { CloudEvent, HTTP } = require("cloudevents");

const BATCH = "application/cloudevents-batch+json";

async function readAll(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function send(url, mode) {
  const events = JSON.parse(await readAll(process.stdin)).map((spec) => new CloudEvent(spec));
  let requests;
  if (mode === "batch") {
    const body = JSON.stringify(events.map((event) => event.toJSON()));
    requests = [{ headers: { "content-type": BATCH }, body }];
  } else {
    requests = events.map((event) => (mode === "binary" ? HTTP.binary(event) : HTTP.structured(event)));
  }
  for (const { headers, body } of requests) {
    const response = await fetch(url, { method: "POST", headers, body });
    console.log(JSON.stringify({ status: response.status, body: await response.text() }));
  }
}

function receive() {
  const server = http.createServer(async (request, response) => {
    const body = await readAll(request);
    const contentType = request.headers["content-type"] || "";
    const isBinaryMode = Object.keys(request.headers).some((name) => name.startsWith("ce-"));
    const mode = contentType.startsWith(BATCH) ? "batch" : isBinaryMode ? "binary" : "structured";
    // Binary data stays bytes; anything else is handed to the SDK as text.
    const isJsonOrText = /json|^text\//.test(contentType) || contentType === "";
    const message = { headers: request.headers, body: isJsonOrText ? body.toString("utf8") : body };
    const read = HTTP.toEvent(message);
    const events = (Array.isArray(read) ? read : [read]).map((event) => event.toJSON());
    console.log(JSON.stringify({ path: request.url, mode, events }));
    response.writeHead(200, { "content-length": "0" });
    response.end();
  });
  server.listen(0, "127.0.0.1", () => {
    console.log(JSON.stringify({ listening: server.address().port }));
  });
}

const [command, url, mode] = process.argv.slice(2);
if (command === "send" && url && mode) {
  send(url, mode).catch((error) => {
    console.error(error);
    process.exit(1);
  });
} else if (command === "receive") {
  receive();
} else {
  console.error("usage: cloudevents_sdk.cjs send URL binary|structured|batch < events.json | receive");
  process.exit(2);
}

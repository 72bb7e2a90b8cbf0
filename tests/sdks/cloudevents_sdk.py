"""Sends events to Rivulet and receives them, with the official CloudEvents SDK for Python.

    cloudevents_sdk.py send URL binary|structured|batch < events.json
        Reads a JSON array of events in the CloudEvents JSON format, builds them as SDK
        events (extension values keep their JSON types) and posts them to URL: one request
        per event in binary or structured mode, one request for all of them as a batch.
        Prints one JSON line per request: {"status": 202, "body": "..."}.

    cloudevents_sdk.py receive
        Serves HTTP on 127.0.0.1 at a free port, prints {"listening": PORT}, then one JSON
        line per request: {"path", "mode", "events"}, every event as the SDK read it.

The SDK has no batch writer, so a batch is the JSON array of the SDK's own encodings.
"""

import base64
import json
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse

BATCH = "application/cloudevents-batch+json"
# The receiver answers requests on several threads; one line at a time goes to stdout.
PRINT_LOCK = threading.Lock()


def sdk_event(spec):
    attributes = dict(spec)
    data = attributes.pop("data", None)
    data_base64 = attributes.pop("data_base64", None)
    if data_base64 is not None:
        data = base64.b64decode(data_base64)
    if "time" in attributes:
        attributes["time"] = isoparse(attributes["time"])
    return CloudEvent(attributes, data)


def post(url, headers, body):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def send(url, mode):
    events = [sdk_event(spec) for spec in json.load(sys.stdin)]
    if mode == "batch":
        body = b"[" + b",".join(JSONFormat().write(e) for e in events) + b"]"
        requests = [({"Content-Type": BATCH}, body)]
    else:
        encode = to_binary_event if mode == "binary" else to_structured_event
        requests = [(m.headers, m.body) for m in map(encode, events)]
    for headers, body in requests:
        status, text = post(url, headers, body)
        print(json.dumps({"status": status, "body": text}), flush=True)


def as_json(event):
    out = {}
    for name, value in event.get_attributes().items():
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        out["data_base64"] = base64.b64encode(data).decode("ascii")
    elif data is not None:
        out["data"] = data
    return out


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        content_type = headers.get("content-type", "")
        if content_type.startswith(BATCH):
            mode = "batch"
            fmt = JSONFormat()
            events = [fmt.read(None, json.dumps(e)) for e in json.loads(body)]
        else:
            mode = "binary" if any(h.startswith("ce-") for h in headers) else "structured"
            events = [from_http_event(HTTPMessage(headers=headers, body=body))]
        line = {"path": self.path, "mode": mode, "events": [as_json(e) for e in events]}
        with PRINT_LOCK:
            print(json.dumps(line), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def receive():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["send"] and len(sys.argv) == 4:
        send(sys.argv[2], sys.argv[3])
    elif sys.argv[1:] == ["receive"]:
        receive()
    else:
        sys.exit(__doc__)

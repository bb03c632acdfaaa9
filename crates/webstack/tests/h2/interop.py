"""An independent HTTP/2 client (Python's h2, Debian's python3-h2) against the lb's HTTP/2 server.

Usage: interop.py CA_PEM ADDRESS STATIC_FILE_LENGTH
Prints one line per check; exits non-zero on the first failure. Every socket wait is bounded.
"""
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings

ca, address, css_length = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.create_default_context(cafile=ca)
context.set_alpn_protocols(["h2"])
sock = context.wrap_socket(socket.create_connection((address, 8443), timeout=20),
                           server_hostname="www.foobar.com")
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
# A small window: every answer longer than 1000 bytes waits for our WINDOW_UPDATEs.
conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
sock.sendall(conn.data_to_send())

streams = {}
uploads = {}
pings = []
closed = []


def track(sid, path):
    streams[sid] = {"path": path, "headers": None, "informational": None, "body": bytearray(), "ended": False,
                    "reset": None}


def request(path, method="GET", body=None):
    sid = conn.get_next_available_stream_id()
    fields = [(":method", method), (":scheme", "https"), (":authority", "www.foobar.com"), (":path", path)]
    if body is not None:
        fields.append(("content-type", "application/octet-stream"))
    conn.send_headers(sid, fields, end_stream=body is None)
    track(sid, path)
    if body is not None:
        uploads[sid] = memoryview(body)
    return sid


def send_uploads():
    for sid, rest in list(uploads.items()):
        # After the answer the upload goes on (the lb reads the rest and drops it); a reset
        # stops it.
        if streams[sid]["reset"] is not None:
            del uploads[sid]
            continue
        while len(rest) > 0:
            n = min(len(rest), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n <= 0:
                break
            conn.send_data(sid, rest[:n].tobytes())
            rest = rest[n:]
            streams[sid]["sent"] = streams[sid].get("sent", 0) + n
        uploads[sid] = rest
        if len(rest) == 0:
            conn.end_stream(sid)
            del uploads[sid]


def run_until(done, what):
    while not done():
        send_uploads()
        sock.sendall(conn.data_to_send())
        try:
            data = sock.recv(65536)
        except socket.timeout:
            sys.exit(f"FAIL: timed out waiting for {what}")
        if not data:
            closed.append(True)
            if not done():
                sys.exit(f"FAIL: the lb closed the connection before {what}")
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.InformationalResponseReceived):
                streams[event.stream_id]["informational"] = dict(event.headers)[":status"]
            elif isinstance(event, h2.events.ResponseReceived):
                streams[event.stream_id]["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                streams[event.stream_id]["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                streams[event.stream_id]["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                streams[event.stream_id]["reset"] = event.error_code
            elif isinstance(event, h2.events.PingAckReceived):
                pings.append(event.ping_data)
            elif isinstance(event, h2.events.ConnectionTerminated):
                closed.append(event.error_code)
        sock.sendall(conn.data_to_send())


def check(ok, message):
    if not ok:
        sys.exit(f"FAIL: {message}")
    print(f"ok: {message}", flush=True)


# 1. Twenty streams at once, each answer through a 1000-byte window.
ids = [request("/static/style.css") for _ in range(10)] + [request("/") for _ in range(10)]
run_until(lambda: all(streams[s]["ended"] or streams[s]["reset"] is not None for s in ids), "20 answers")
for sid in ids:
    s = streams[sid]
    check(s["reset"] is None and s["headers"][":status"] == "200", f"stream {sid} {s['path']} answered 200")
for sid in ids[:10]:
    check(len(streams[sid]["body"]) == css_length == int(streams[sid]["headers"]["content-length"]),
          f"stream {sid}: style.css whole ({css_length} bytes) through the small window")
check(all(b"</html>" in streams[s]["body"] for s in ids[10:]), "the home pages are whole")

# 2. An upload three times the lb's windows (1 MiB each): it goes through only if the lb gives
#    the room back as it reads. The app answers it early (it is no form); the lb reads the rest.
size = 3 * 1024 * 1024
big = request("/posts", method="POST", body=b"x" * size)
run_until(lambda: streams[big]["ended"] and big not in uploads, "the upload's answer and its end")
answer = streams[big]["headers"] or {}
check(answer.get(":status", "").startswith("4") and "x-served-by" in answer,
      f"the upload got the app's answer through the web server ({answer})")
check(streams[big]["reset"] is None and streams[big].get("sent") == size,
      f"all {size} bytes went through the lb's windows (sent {streams[big].get('sent')})")

# 3. A stream reset at once; the connection goes on.
gone = request("/api/whoami")
conn.reset_stream(gone, error_code=8)
after = request("/api/whoami")
run_until(lambda: streams[after]["ended"], "the answer after a reset")
check(streams[after]["headers"][":status"] == "200" and b'"app"' in streams[after]["body"],
      "a stream after a reset one is answered")

# 4. PING.
conn.ping(b"interop!")
run_until(lambda: b"interop!" in pings, "the PING's ACK")
check(True, "PING answered")

# 5. Expect: 100-continue. The client holds its body back until the lb asks for it, which the lb
#    does when it starts forwarding the body (curl otherwise waits a second); one it refuses at
#    once (a declared length over max_body, 100 MiB) is answered without a 100.
def held_back(length):
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", "www.foobar.com"),
                            (":path", "/api/posts"), ("content-type", "application/json"),
                            ("content-length", str(length)), ("expect", "100-continue")])
    track(sid, "/api/posts")
    return sid


# Cut short on purpose: the app's JSON parser refuses it (400), which it can only do once the
# body reached it (this topology has no database to store a post in).
post = b'{"author": "interop", "body": "sent after a 100 (Continue)'
waiting = held_back(len(post))
run_until(lambda: streams[waiting]["informational"] is not None or streams[waiting]["headers"] is not None,
          "a 100 (Continue) for the held-back body")
check(streams[waiting]["informational"] == "100" and streams[waiting]["headers"] is None,
      "the lb asked for the body with a 100 before any answer")
conn.send_data(waiting, post, end_stream=True)
run_until(lambda: streams[waiting]["ended"], "the answer to the body sent after the 100")
answer = streams[waiting]["headers"]
check(answer[":status"] == "400" and "x-served-by" in answer,
      f"the body sent after the 100 reached the app, whose JSON parser refused it ({answer}, {bytes(streams[waiting]['body'])})")
refused = held_back(200 * 1024 * 1024)
run_until(lambda: streams[refused]["ended"] or streams[refused]["reset"] is not None, "the refusal of a too large body")
check(streams[refused]["headers"] is not None and streams[refused]["headers"][":status"] == "413"
      and streams[refused]["informational"] is None,
      "a body refused at once is answered 413 without a 100 inviting it")
conn.reset_stream(refused, error_code=8)  # the body it declared is never sent

# 6. Our GOAWAY: the lb closes the connection.
conn.close_connection()
sock.sendall(conn.data_to_send())
run_until(lambda: bool(closed), "the close after GOAWAY")
check(True, "closed after the client's GOAWAY")

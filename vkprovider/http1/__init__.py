"""HTTP/1.1 for vkprovider's hot paths, on httptools (llhttp: the parser of Node.js, used by uvicorn).

Why it exists: vkprovider's steady work is small requests, hundreds a second at 1,000 bases (Lease renewals,
heartbeats, arklet calls), and aiohttp's per-request machinery was most of the CPU of each; a request costs a
fraction of that here (the figures, aiohttp's and this module's: docs/performance.md, "HTTP/1.1 on httptools").
This package keeps what such a request needs and nothing else:

- :class:`Pool`: keep-alive connections to one origin (TLS, or through an HTTP CONNECT proxy), one request at a
  time on each, a total time limit per request, a size cap per answer, and streamed answers for watches. Its
  connections (the API server's) send TCP keepalive probes after ``KEEPALIVE_IDLE_S`` of silence, every
  ``KEEPALIVE_INTERVAL_S``, and give up after ``KEEPALIVE_PROBES`` unanswered: a peer that vanished without a
  reset (a node gone, a dropped NAT entry) is found dead in 25 s, not after the kernel's two-hour default;
- :func:`exchange`: one request on a connection of its own, its answer read to the end or to EOF (arklet sends no
  length and closes after the body);
- on both, an answer ends only where it says (its length, its last chunk) or, without a length, at a clean EOF:
  a connection *reset* is a cut, never an end, so such an answer cut by a reset is an error (``closed``), not a
  shorter whole answer; and informational answers (``1xx``, e.g. ``100 Continue``) are skipped: the answer is the
  final one that follows them;
- :class:`ServerConnection`: the server side of small request/answer endpoints with a synchronous handler (the
  heartbeat listener): every byte is hostile, so a request head and body are size-capped, a request must arrive
  whole within a time limit, an idle keep-alive connection is closed after it, and a connection that never sent
  a whole request is counted (``serving`` adds the cap on open connections and the metrics). Answers meet
  back-pressure: when the transport holds more than ``WRITE_HIGH_WATER`` unsent bytes (a client that pipelines
  requests and does not read the answers) the connection stops reading until it drains below
  ``WRITE_LOW_WATER``; the requests already read are still answered, but a connection that gets more than
  ``ServerLimits.max_queued_answers`` answers past the high-water mark, or stays blocked for the idle timeout,
  is aborted (closing it would wait for a client that does not read). So one connection holds at most about
  ``WRITE_HIGH_WATER + max_queued_answers`` answers of memory, whatever the client sends.

Everything else (probes, metrics, the kubelet API, MQTT) keeps aiohttp: those are not hot.
"""

from vkprovider.http1.client import (
    KEEPALIVE_IDLE_S,
    KEEPALIVE_INTERVAL_S,
    KEEPALIVE_PROBES,
    MAX_HEAD_BYTES,
    WRITE_HIGH_WATER,
    WRITE_LOW_WATER,
    Answer,
    HttpError,
    Pool,
    Proxy,
    Streamed,
    exchange,
    request_head,
)
from vkprovider.http1.server import (
    ConnectionGuard,
    Handler,
    Refused,
    Request,
    Response,
    ServerConnection,
    ServerLimits,
    response_bytes,
)

__all__ = ["KEEPALIVE_IDLE_S", "KEEPALIVE_INTERVAL_S", "KEEPALIVE_PROBES", "MAX_HEAD_BYTES", "WRITE_HIGH_WATER",
           "WRITE_LOW_WATER", "Answer", "ConnectionGuard", "Handler", "HttpError", "Pool", "Proxy", "Refused",
           "Request", "Response", "ServerConnection", "ServerLimits", "Streamed", "exchange", "request_head",
           "response_bytes"]

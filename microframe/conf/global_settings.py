"""Default settings of every microframe service.

A service overrides these in its own settings module (``MICROFRAME_SETTINGS_MODULE``), then the
YAML files of ``conf/<MICROFRAME_ENV>/`` overlay that module. Library code reads them only
through :data:`microframe.conf.settings`.
"""

DEBUG = False

# Name the service registers and reports under.
SERVICE_NAME = "microframe"

# Dotted path of the module whose ``routes`` bind every RPC to its controller (genproto writes it).
ROOT_ROUTER = None

# Where the per-environment YAML overlays live; None means ``<service root>/conf``.
CONF_DIR = None

GRPC = {
    "HOST": "127.0.0.1",
    "PORT": 50051,
    # {"CERT": path, "KEY": path, "CLIENT_CA": path or None} to serve TLS (mTLS with CLIENT_CA).
    "TLS": None,
    # Largest message accepted or sent; a bigger request is answered RESOURCE_EXHAUSTED.
    "MAX_MESSAGE_BYTES": 4 << 20,
    # Calls served at once per process; the ones past it are answered RESOURCE_EXHAUSTED.
    # Health checks and reflection are never counted (nor refused).
    "MAX_CONCURRENT_RPCS": 1000,
    # The limits below protect the server from hostile or broken clients (docs/topics/security.md).
    # Calls one connection may have running at once (None: a quarter of MAX_CONCURRENT_RPCS, no
    # limit when that is None);
    # past it that connection's calls are answered RESOURCE_EXHAUSTED, the others' served.
    "MAX_CALLS_PER_CONNECTION": None,
    # Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS):
    # grpc refuses the streams past it (REFUSED_STREAM) before they cost anything.
    "MAX_STREAMS_PER_CONNECTION": 2000,
    # Connections the server accepts at once; more are closed as they arrive.
    "MAX_CONNECTIONS": 4096,
    # Largest header block (metadata) of a call, in bytes: a bigger one is always refused.
    "MAX_METADATA_BYTES": 16 * 1024,
    # Memory, in bytes, for request messages still arriving 50 ms after the server asked for
    # them: MAX_MESSAGE_BYTES a message, so RECEIVE_BUFFER_BYTES // MAX_MESSAGE_BYTES receive
    # slots (64 by default), a quarter of them per connection, half for client streams waiting
    # for a later message; a call finding none free is answered RESOURCE_EXHAUSTED.
    "RECEIVE_BUFFER_BYTES": 256 << 20,
    # Seconds a call's request message (the first one of a client stream) may take to arrive
    # once the call has started; a slower one is answered DEADLINE_EXCEEDED and its buffer freed.
    "RECEIVE_TIMEOUT": 5.0,
    # Seconds a client stream may wait for its next message (None: as long as the call lasts).
    "STREAM_IDLE_TIMEOUT": 60.0,
    # Seconds a reply message may wait for the client to read it (flow control): past it the
    # call is ended and its slot given back.
    "SEND_TIMEOUT": 10.0,
    # HTTP/2 window of each stream, in bytes: what a client may send before the server reads.
    "STREAM_WINDOW_BYTES": 64 * 1024,
    # Seconds a new connection may take to send its HTTP/2 preface (and TLS handshake).
    "HANDSHAKE_TIMEOUT": 5.0,
    # Seconds between the server's keepalive pings; a connection that does not answer within
    # KEEPALIVE_TIMEOUT is closed (None: no pings).
    "KEEPALIVE_TIME": 60.0,
    "KEEPALIVE_TIMEOUT": 20.0,
    # Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    "GRACE": 10.0,
    # Seconds to keep serving after SIGTERM (health NOT_SERVING, deregistered) before the port
    # closes, so that clients following health checks or the registry move away first.
    "SHUTDOWN_DELAY": 0.0,
    "HEALTH": True,
    "REFLECTION": True,
    # Threads running plain ``def`` controllers (None: min(32, cpu + 4)).
    "THREADS": None,
    # "auto" uses uvloop when it is installed; "asyncio" or "uvloop" force one.
    "EVENT_LOOP": "auto",
    # What carries gRPC (docs/topics/transport.md): "grpc.aio" (grpc core), "native"
    # (pygrpc-native: the "native" extra), or "auto": native when it is installed and applies
    # every limit these settings ask for, else grpc.aio.
    "TRANSPORT": "auto",
    # Extra grpc channel arguments for the server, as (key, value) pairs.
    "OPTIONS": [],
    # The longest a call of a method may run, in seconds, by full method name
    # ({"/pkg.Service/Method": 0.5}; "/pkg.Service/*" for every method of a service, an exact
    # name wins). A call is given the earlier of its caller's deadline and this cap; past it,
    # it is answered DEADLINE_EXCEEDED and an async controller is cancelled (a plain def one,
    # in its worker thread, cannot be stopped: its result is discarded). Methods not named run
    # as long as their callers allow, at no cost.
    "METHOD_TIMEOUTS": {},
}

METRICS = {
    "ENABLED": True,
    "HOST": "127.0.0.1",
    "PORT": 9464,
    # Constant labels added to every exported sample (env, cluster, idc...).
    "LABELS": {},
    "BUCKETS": (
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ),
    # Call colors (x-md-global-color) that label the grpc_server_* and grpc_client_* metrics
    # (label "color"; "other" for any other color, "" for none). Empty: no color label. Each
    # color multiplies those series, and the callers choose the colors: only these count.
    "COLORS": [],
}

REGISTRY = {
    # The backend (a dotted path) and its keyword arguments. The default needs no server:
    # services on one machine find each other through a shared directory.
    "BACKEND": "microframe.contrib.registry.file.FileRegistry",
    "OPTIONS": {},
    # Register the instance when runserver serves (and deregister it when it stops).
    "REGISTER": True,
    # "host:port" clients should dial; None: GRPC["HOST"] and the port served, or this host's
    # primary address when GRPC["HOST"] is a wildcard (0.0.0.0, ::).
    "ADVERTISE": None,
    # None: "<advertised host>:<port>".
    "INSTANCE_ID": None,
    "WEIGHT": 100,
    # String pairs published with the instance: zone, idc, env...
    "METADATA": {},
    "VERSION": "",
    # Where clients keep the last known instances of every service, for registry outages.
    # None: "microframe-discovery-<uid>" in the temporary directory, this user's alone.
    "CACHE_DIR": None,
}

# The batteries plugged in (microframe.batteries), in order: dotted paths of packages with a
# battery.py module, or of Battery subclasses. Each one's ready() runs once, before the checks
# (it registers its checks), and its management/commands/ are commands of manage.py. A service
# adds its own: BATTERIES = [*global_settings.BATTERIES, "orders"].
BATTERIES = [
    "microframe.contrib.metrics",
    "microframe.contrib.logging",
    "microframe.contrib.tracing",
    "microframe.contrib.limiter",
    "microframe.contrib.registry",
    "microframe.contrib.gateway",
    "microframe.contrib.auth",
    "microframe.contrib.validation",
    "microframe.contrib.config",
    "microframe.contrib.coordination",
]

MIDDLEWARE = [
    "microframe.contrib.metrics.middleware.MetricsMiddleware",
    "microframe.contrib.tracing.middleware.TracingMiddleware",
    "microframe.contrib.logging.middleware.AccessLogMiddleware",
    "microframe.contrib.auth.middleware.AuthMiddleware",
    "microframe.contrib.limiter.middleware.RateLimitMiddleware",
    "microframe.contrib.limiter.shedding.SheddingMiddleware",
    "microframe.contrib.validation.middleware.ValidationMiddleware",
]

# Request validation from the protovalidate rules of the protos (ValidationMiddleware, last in
# MIDDLEWARE: the call was admitted before its request is examined). RESPONSES: check the
# replies too (for tests: a reply that breaks its rules is answered INTERNAL and logged).
VALIDATION = {
    "RESPONSES": False,
}

# Authentication of the calls served (microframe.contrib.auth, AuthMiddleware): a bearer token
# in the `authorization` metadata, or, under mTLS (GRPC["TLS"]["CLIENT_CA"]), the client
# certificate. TOKENS maps an identity to its token (keep tokens out of settings.py: read them
# from the environment), TOKEN_HASHES to the SHA-256 hex of its token; MTLS_IDENTITIES maps a
# certificate's common name or SAN to an identity ("*": any certificate the CA signed, named
# by its common name). PERMISSIONS maps "/pkg.Svc/Method" or "/pkg.Svc/*" to the identities
# allowed (methods not listed: any authenticated identity); EXEMPT lists methods (or
# "/pkg.Svc/*") served without credentials. Refused: UNAUTHENTICATED; not allowed:
# PERMISSION_DENIED.
AUTH = {
    "ENABLED": False,
    "TOKENS": {},
    "TOKEN_HASHES": {},
    "MTLS": True,
    "MTLS_IDENTITIES": {},
    "PERMISSIONS": {},
    "EXEMPT": [],
}

# Rate limiting of the calls served (microframe.contrib.limiter): a backend and its options, what
# happens over the limit ("reject": RESOURCE_EXHAUSTED with a retry-after; "wait": queue up to
# MAX_WAIT seconds, never past the call's deadline), what a limit counts ("service", "method",
# "peer", "metadata:<key>"), and per-method overrides ({"/pkg.Svc/Method": {...}} or None to
# exempt a method). The default is koala's: a limit no fresh service reaches.
LIMITER = {
    "ENABLED": True,
    "BACKEND": "microframe.contrib.limiter.backends.TokenBucket",
    "OPTIONS": {"rate": 50000, "burst": 50000},
    "MODE": "reject",
    "MAX_WAIT": 1.0,
    "KEY": "service",
    "METHODS": {},
}

# Distributed tracing (microframe.contrib.tracing; needs the "tracing" extra): a server span per
# RPC, a client span per outgoing call, the context carried in gRPC metadata (uber-trace-id for
# jaeger, W3C traceparent for otlp and log).
TRACING = {
    "ENABLED": False,
    # "jaeger" (jaeger-client, UDP to the agent), "otlp" (OpenTelemetry SDK, OTLP/gRPC to a
    # collector), "log" (spans written to the "microframe.tracing.spans" logger).
    "BACKEND": "jaeger",
    # The service name spans are reported under; None: SERVICE_NAME.
    "SERVICE_NAME": None,
    # type: "const" (param 1: every trace, 0: none), "probabilistic" (param: the share of new
    # traces, 0-1) or "ratelimiting" (param: new traces per second). A call whose caller's
    # trace is sampled is sampled.
    "SAMPLER": {"type": "const", "param": 1},
    # jaeger: the agent's UDP address; every backend: how often spans are sent and how many may
    # wait (more are dropped, never blocking a request).
    "REPORTER": {
        "LOCAL_AGENT_HOST_PORT": "127.0.0.1:6831", "FLUSH_INTERVAL": 1.0, "QUEUE_SIZE": 2048,
    },
    # otlp: the collector's OTLP/gRPC address, extra headers (auth), plaintext or TLS (CA file).
    "OTLP": {
        "ENDPOINT": "127.0.0.1:4317", "HEADERS": {}, "INSECURE": True, "CA": None, "TIMEOUT": 10.0,
    },
    # Tags of every span of the process (jaeger process tags, OpenTelemetry resource attributes).
    "TAGS": {},
}

# Adaptive load shedding (microframe.contrib.limiter.shedding, Kratos' BBR): while the process's
# CPU use (of the cores its cgroup quota allows, at most one per worker) is at or above
# CPU_THRESHOLD, calls finding more in flight than the last WINDOW seconds show the service can
# hold are answered RESOURCE_EXHAUSTED; COOL_OFF seconds after a shed the test still applies.
# CPU use is sampled every CPU_INTERVAL seconds and smoothed (EWMA, CPU_DECAY); CORES overrides
# the cores it is measured against.
SHEDDING = {
    "ENABLED": False,
    "CPU_THRESHOLD": 0.8,
    "WINDOW": 10.0,
    "BUCKETS": 100,
    "COOL_OFF": 1.0,
    "CPU_INTERVAL": 0.25,
    "CPU_DECAY": 0.95,
    "CORES": None,
}

# The HTTP/JSON gateway (microframe.contrib.gateway: `gunicorn <service>.wsgi`): every RPC the
# router serves as POST /<package.Service>/<Method>, and the routes of google.api.http annotations.
GATEWAY = {
    # The registry name of the service to call (None: SERVICE_NAME), or a fixed "host:port"
    # (None: through discovery).
    "SERVICE": None,
    "ADDRESS": None,
    # Deadline of each call, in seconds.
    "TIMEOUT": 10.0,
    # Largest request body accepted; a bigger one is answered 413.
    "MAX_BODY_BYTES": 4 << 20,
    # Most messages a client-streaming call may take from one JSON array (413 past it).
    "MAX_STREAM_MESSAGES": 10_000,
    # Deepest JSON nesting accepted in a body (400 past it).
    "MAX_JSON_DEPTH": 64,
    # Most bytes (names and values) of the metadata a request passes on to the service (431, or
    # RESOURCE_EXHAUSTED for gRPC-Web, past it): under the service's GRPC["MAX_METADATA_BYTES"],
    # whose refusal would end the gateway's connection to it and every call on it.
    "MAX_METADATA_BYTES": 8 * 1024,
    # The limits of the gateway's gunicorn worker (microframe.contrib.gateway.worker.GatewayWorker):
    # seconds a connection may take to send its request's head (408 past it), then its body;
    # seconds a reply may wait for the client to read it (the connection is closed past it);
    # the largest request head, in bytes (431 past it).
    "HEADER_TIMEOUT": 10.0,
    "BODY_TIMEOUT": 30.0,
    "SEND_TIMEOUT": 30.0,
    "MAX_HEADER_BYTES": 64 * 1024,
    # Request headers passed to the service as metadata ("Grpc-Metadata-<key>" headers pass
    # too, as <key>, except credentials and the keys named here: those pass only under their
    # own header; X-Md-Global-* and X-Md-Local-* pass as they are; the caller's address is
    # added to x-forwarded-for).
    "FORWARD_HEADERS": [
        "authorization", "x-request-id", "traceparent", "tracestate", "uber-trace-id",
    ],
    # Print the fields that hold their default value in replies.
    "EMIT_DEFAULTS": False,
    # Pass the messages of UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS and DEADLINE_EXCEEDED
    # errors on to HTTP callers (they may name internal services and addresses); None: DEBUG.
    "EXPOSE_ERRORS": None,
    # Serve the OpenAPI 3.1 document of the routes at /openapi.json.
    "OPENAPI": True,
    # Serve the API's docs page (Swagger UI, every asset from the gateway) at /docs.
    "DOCS": True,
    # Serve gRPC-Web (application/grpc-web, +proto, +json, -text) at /<package.Service>/<Method>.
    "GRPC_WEB": True,
    # Cross-origin requests from browsers (microframe.contrib.gateway.cors): the origins allowed
    # ("*": any; none by default), the methods and request headers a preflight may ask for, the
    # answer headers a script may read, whether cookies and credentials go along (never with
    # "*": gateway.W001), and how many seconds a browser may cache a preflight's answer.
    "CORS": {
        "ALLOW_ORIGINS": [],
        "ALLOW_METHODS": ["GET", "POST", "PUT", "PATCH", "DELETE"],
        "ALLOW_HEADERS": [
            "content-type", "authorization", "x-request-id", "x-grpc-web", "x-user-agent",
            "grpc-timeout", "connect-protocol-version", "connect-timeout-ms",
        ],
        "EXPOSE_HEADERS": [
            "grpc-status", "grpc-message", "grpc-status-details-bin", "retry-after",
            "x-request-id",
        ],
        "ALLOW_CREDENTIALS": False,
        "MAX_AGE": 600,
    },
}

# Metadata that travels (microframe.core.propagation): the x-md-global-* keys a request
# received are sent on every call it makes through microframe's client, at every hop, at most
# MAX_KEYS of them and MAX_BYTES bytes (names and values): the rest are dropped (counted in
# microframe_metadata_dropped_total), so that a caller cannot inflate every downstream call.
# STRESS_KEY marks load-test traffic (stress=1 in the access log, ctx.stress): an x-md-global-*
# key, so that every service down the chain sees it; a call carrying it with no color goes to
# the instances of STRESS_COLOR (shadow instances) when it is set, as a call of that color.
PROPAGATION = {
    "MAX_KEYS": 16,
    "MAX_BYTES": 4096,
    "STRESS_KEY": "x-md-global-stress",
    "STRESS_COLOR": None,
}

# The client chain, outermost first (see microframe.client.middleware).
CLIENT_MIDDLEWARE = [
    "microframe.client.middleware.PrepareMiddleware",
    "microframe.client.middleware.AccessLogMiddleware",
    "microframe.contrib.tracing.middleware.ClientTracingMiddleware",
    "microframe.contrib.metrics.middleware.ClientMetricsMiddleware",
    "microframe.contrib.limiter.middleware.ClientRateLimitMiddleware",
    "microframe.client.breaker.CircuitBreakerMiddleware",
    "microframe.client.middleware.DiscoveryMiddleware",
    "microframe.client.middleware.RetryMiddleware",
    "microframe.client.middleware.BalancerMiddleware",
]

# Options of the clients of each service, by registered name: {"orders": {"TIMEOUT": 0.5}}.
# Keys and defaults: microframe.client.options.DEFAULTS.
CLIENTS: dict = {}

# Check ids to silence, e.g. ["microframe.W001"].
SILENCED_SYSTEM_CHECKS: list[str] = []

# The configuration center (microframe.contrib.config; docs/topics/config.md): settings kept in
# etcd, read at start-up over the module and its YAML overlays, then watched. BACKEND None: no
# configuration center; "microframe.contrib.config.etcd.EtcdConfig" with OPTIONS (the etcd
# registry's connection options: endpoints, user, password, ca_cert, cert, key, server_name,
# timeout, dial_timeout). The key <PREFIX>/_shared/<SETTING> holds the JSON of one setting for
# every service, <PREFIX>/<SERVICE_NAME>/<SETTING> for this one (merged in that order, as YAML
# overlays are). A running service applies a change of a setting listed in RELOAD (the parts
# of it its batteries can rebuild, checked by the system checks first); any other change is
# logged and waits for a restart. CACHE_DIR keeps the last values read (mode 0600: they may
# hold tokens), for a start while etcd is down; None: "microframe-config-<uid>" in the
# temporary directory, this user's alone.
CONFIG = {
    "BACKEND": None,
    "OPTIONS": {},
    "PREFIX": "/microframe/config",
    "RELOAD": ["LIMITER", "LOG", "ACCESS_LOG", "CLIENTS", "AUTH"],
    "CACHE_DIR": None,
}

# What the default LOGGING is built from (microframe.contrib.logging.config): the level of the
# root and microframe loggers ("TRACE" is one, between DEBUG and INFO), the line format ("text"
# or "json"), the directory of the log file (relative to the service root; None: console only),
# its rotation (by size, or by time with ROTATE_WHEN such as "midnight") and the old files
# kept, and the records the writer thread may fall behind by before new ones are dropped.
LOG = {
    "LEVEL": "INFO",
    "FORMAT": "text",
    "DIR": "logs",
    "ROTATE_BYTES": 100 * 1024 * 1024,
    "ROTATE_WHEN": None,
    "BACKUPS": 7,
    "QUEUE_SIZE": 10000,
}

# logging.config.dictConfig settings merged deeply over the default built from LOG.
LOGGING_CONFIG = "logging.config.dictConfig"
# The function microframe.setup() calls first to configure logging from LOG, LOGGING_CONFIG and
# LOGGING (the logging battery's); None leaves logging as the program set it.
LOGGING_SETUP = "microframe.contrib.logging.config.configure_from_settings"
LOGGING: dict = {}

# The access log (microframe.contrib.logging.middleware.AccessLogMiddleware): a line per call
# on the "microframe.access" logger (off by default, as in gunicorn: it costs a busy service
# about a fifth of its throughput, see docs/performance.md), with the status code, duration,
# peer, sizes, the fields controllers add with ctx.add_field(), and the request's metadata if
# METADATA says so: True for every key, a list for those keys, False (the default: it costs a
# copy per call) for none.
# The values of the REDACTED keys (and of any key ending in "-bin") are never written.
ACCESS_LOG = {
    "ENABLED": False,
    "METADATA": False,
    "REDACTED": [
        "authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key",
        "x-auth-token",
    ],
}

# Locks, leader election and TASKS (microframe.contrib.coordination), on etcd leases: the
# EtcdConnection options (endpoints, user, password, ca_cert, cert, key, server_name, timeout,
# dial_timeout; None: those of CONFIG when the config center is on etcd, else REGISTRY's when
# the registry is), the key prefix, and the seconds a lock or a leadership outlives its process.
COORDINATION = {
    "OPTIONS": None,
    "PREFIX": "/microframe/coordination",
    "TTL": 10,
}

# Periodic jobs runserver runs in the process that stands for the instance (the server, or the
# supervisor of --workers N): {"cleanup": {"CALLABLE": "orders.tasks.cleanup", "EVERY": 60,
# "LEADER_ONLY": True}}. CALLABLE: a def (run in a thread) or an async def of no arguments;
# EVERY: seconds between runs (> 0; a run still going when the next is due skips that one);
# LEADER_ONLY: run only on the instance leading the election "<SERVICE_NAME>-tasks" (etcd).
TASKS: dict = {}

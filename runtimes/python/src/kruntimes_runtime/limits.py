"""Bounds on every size and count the server accepts (the protocol's limits)."""

from __future__ import annotations

import re

EXECUTION_ID_MAX = 128
EXECUTION_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
ARGV_MAX_ENTRIES = 4096
# argv (and script args) plus env, each entry counted with its NUL terminator(s).
ARGV_ENV_MAX_BYTES = 1 << 20
SCRIPT_MAX_BYTES = 1 << 20
FILENAME_MAX_BYTES = 255
WORKING_DIR_MAX_BYTES = 4096
# uint64 milliseconds would overflow timers; a Run never needs more than a year.
TIMEOUT_MAX_MS = 365 * 24 * 3600 * 1000
GRACE_MAX_MS = 3600 * 1000
DEFAULT_GRACE_MS = 10_000

DEFAULT_BUFFER_BYTES = 4 << 20
BUFFER_MIN_BYTES = 64 << 10
BUFFER_MAX_BYTES = 1 << 30
# Capacity requested for each execution's stdout pipe (F_SETPIPE_SZ).
PIPE_BYTES = 256 << 10
# Largest OutputChunk sent: everything available is coalesced up to this size.
CHUNK_MAX_BYTES = 256 << 10
# A chatty child (many small writes in quick succession) is read at most every
# COALESCE_DELAY_S, so its output travels in large chunks, not one per write.
# The first read after a quiet period is immediate (no added latency).
COALESCE_DELAY_S = 0.002
COALESCE_SMALL_BYTES = 16 << 10
# Output of a running process waits up to this long (unless CHUNK_MAX_BYTES
# are pending) before it is sent, so that it can travel with what follows,
# the exit of a short Run above all, in one EventBatch.
OUTPUT_LINGER_S = 0.002

DEFAULT_MAX_EXECUTIONS = 64
MAX_EXECUTIONS_LIMIT = 4096
# Most executions one Forget drops (execution_id plus more_execution_ids).
FORGET_MAX_IDS = 256
# Finished executions are kept until Forget; past this many, Start is refused so
# the retained buffers stay bounded.
DEFAULT_MAX_RETAINED = 1024

# After the leader exits (its group SIGKILLed), how long the pipes may stay open
# (held by a process that left the group) before the server stops reading them.
DRAIN_TIMEOUT_S = 2.0

# How long Handshake waits for the zygote to answer.
ZYGOTE_PING_TIMEOUT_S = 5.0
ZYGOTE_MESSAGE_MAX_BYTES = 8 << 20

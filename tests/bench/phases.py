#!/usr/bin/env python3
"""Where a trivial bash Run's time goes, step by step, beside the bare chain.

A diagnostic for the bash figure (docs/benchmarks.md), not a test. It reads
a system-wide `perf` trace of syscall and scheduler tracepoints taken while
`kruntimes-bench --only bash` runs, finds every spawn of the bash Runtime
Server and of the bench's bare-chain spawner, and prints the p50 and mean of
each step of the Run's path for both: from the request reaching the proxy
(runtimed, or the chain's proxy) to the Start's write, the server's work
before `clone3`, the exec, the process's own run, the exit reaching the
server's reply, and the reply to the result's write to the client.

Usage (root, with perf; the trace covers a few hundred Runs):

    target/release/kruntimes-bench --only bash --bash-iterations 1000 &
    sleep 5
    perf record -a -o /tmp/phases.data -e 'syscalls:sys_enter_sendto,\
syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_clone3,\
syscalls:sys_exit_clone3,syscalls:sys_exit_execve,syscalls:sys_enter_exit_group' \
        -- sleep 3
    wait
    perf script -i /tmp/phases.data -F comm,pid,tid,cpu,time,event,trace \\
        | python3 tests/bench/phases.py
"""

import re
import statistics
import sys

LINE = re.compile(r"\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def read(stream):
    events = []
    for line in stream:
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, tid, _cpu, t, event, rest = m.groups()
        if comm == "perf":
            continue
        events.append((float(t) * 1e6, comm, int(pid), int(tid), event, rest.strip()))
    return events


def find(events, i, step, pred):
    while 0 <= i < len(events):
        if pred(events[i]):
            return i
        i += step
    return None


def length(args):
    m = re.search(r"len: (0x[0-9a-f]+)", args)
    return int(m.group(1), 16) if m else 0


def steps(events):
    """Per spawn: the steps of its Run, keyed by which chain ran it."""
    out = {}
    for i, (t, comm, pid, tid, event, _) in enumerate(events):
        # The baseline's own spawns come from the bench's tokio threads.
        if event != "syscalls:sys_enter_clone3" or comm.startswith("tokio"):
            continue
        server = tid
        kind = "runtimed + bash server" if comm.startswith("kruntimes-bash") else "bare chain"
        srv_recv = find(events, i, -1, lambda e: e[3] == server and e[4] == "syscalls:sys_enter_recvfrom")
        if srv_recv is None:
            continue
        start = find(events, srv_recv, -1, lambda e: e[4] == "syscalls:sys_enter_sendto" and e[2] != pid)
        if start is None:
            continue
        proxy = events[start][3]
        request = find(events, start, -1, lambda e: e[3] == proxy and e[4] == "syscalls:sys_enter_recvfrom")
        ret = find(events, i, 1, lambda e: e[3] == server and e[4] == "syscalls:sys_exit_clone3" and e[5] != "0x0")
        if request is None or ret is None:
            continue
        child = int(events[ret][5], 16)
        exec_done = find(events, i, 1, lambda e: e[3] == child and e[4] == "syscalls:sys_exit_execve" and e[5] == "0x0")
        exit_group = find(events, i, 1, lambda e: e[3] == child and e[4] == "syscalls:sys_enter_exit_group")
        if exec_done is None or exit_group is None:
            continue
        # The server's Exit message; the bash server's SIGCHLD handler also
        # sends one byte (to its self-pipe), which is not it.
        reply = find(
            events, exit_group, 1,
            lambda e: e[3] == server and e[4] == "syscalls:sys_enter_sendto" and length(e[5]) > 8,
        )
        if reply is None:
            continue
        result = find(
            events, reply, 1,
            lambda e: e[3] == proxy and e[4] in ("syscalls:sys_enter_writev", "syscalls:sys_enter_sendto"),
        )
        if result is None:
            continue
        at = lambda j: events[j][0]
        out.setdefault(kind, []).append([
            ("request in -> Start written", at(start) - at(request)),
            ("Start written -> server reads it", at(srv_recv) - at(start)),
            ("server reads it -> clone3", t - at(srv_recv)),
            ("clone3 -> exec done", at(exec_done) - t),
            ("exec done -> exit_group", at(exit_group) - at(exec_done)),
            ("exit_group -> server's reply", at(reply) - at(exit_group)),
            ("server's reply -> result written", at(result) - at(reply)),
            ("request in -> result written", at(result) - at(request)),
        ])
    return out


def main():
    runs = steps(read(sys.stdin))
    if not runs:
        sys.exit("no Runs found: was kruntimes-bench --only bash running during the trace?")
    for kind, samples in sorted(runs.items()):
        print(f"{kind}: {len(samples)} Runs (µs)")
        for n, (name, _) in enumerate(samples[0]):
            values = [s[n][1] for s in samples]
            print(f"  {name:36} p50 {statistics.median(values):6.0f}  mean {statistics.mean(values):6.0f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where Redis's time per job goes, for scripts/bench.sh.

  redis_cost.py commandstats FILE JOBS
      FILE is `INFO commandstats` taken after `CONFIG RESETSTAT`: calls and µs of every
      command per job. Commands that scripts run are counted under their own names as well
      as inside the script's (`evalsha`) time.
  redis_cost.py slowlog FILE JOBS LUA...
      FILE is `redis-cli --json SLOWLOG GET n` of a run at threshold 0: every top-level call
      (a script call, or a plain command) grouped by script name (the SHA-1 of one of the LUA
      files; a script with a generated prelude shows its SHA-1) or by command and key shape,
      with calls and µs per job; then the commands the scripts ran (logged as well, with no
      client address). Durations are execution only, not reading or writing the socket
      (that is the rest of INFO cpu).
"""

import hashlib
import json
import re
import sys
from pathlib import Path


def commandstats(path, jobs):
    rows = []
    for line in Path(path).read_text().splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
        if m:
            rows.append((m.group(1), int(m.group(2)), int(m.group(3))))
    rows = [r for r in rows if r[0] not in ("info", "config")]
    rows.sort(key=lambda r: -r[2])
    print("Redis commands per job (INFO commandstats; a script's commands also under their names):")
    print(f"  {'command':<20} {'calls/job':>9} {'µs/job':>8} {'µs/call':>8}")
    for name, calls, usec in rows:
        if calls / jobs < 0.01:
            continue
        print(f"  {name:<20} {calls / jobs:>9.2f} {usec / jobs:>8.1f} {usec / calls:>8.2f}")


SHAPES = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<job>"),
    (re.compile(r"[0-9a-f]{16,}"), "<hex>"),
    (re.compile(r"\d+"), "<n>"),
]


def shape(key):
    for pattern, repl in SHAPES:
        key = pattern.sub(repl, key)
    return key


def slowlog(path, jobs, lua_files):
    names = {}
    for f in lua_files:
        names[hashlib.sha1(Path(f).read_bytes()).hexdigest()] = Path(f).stem
    top, inner = {}, {}
    for entry in json.loads(Path(path).read_text() or "[]"):
        usec, args = int(entry[2]), entry[3]
        if not args:
            continue
        cmd = args[0].lower()
        if cmd in ("slowlog", "config", "info"):
            continue
        if cmd in ("evalsha", "eval") and len(args) >= 3:
            sha = args[1] if cmd == "evalsha" else hashlib.sha1(args[1].encode()).hexdigest()
            name = names.get(sha, sha[:10])
            first = shape(args[3]) if int(args[2]) > 0 and len(args) > 3 else ""
            label = f"script {name} ({first}, {args[2]} keys)"
        else:
            label = f"{cmd} {shape(args[1]) if len(args) > 1 else ''}".strip()
        # A command a script ran is logged too, with no client address.
        groups = inner if len(entry) > 4 and entry[4] == "?:0" else top
        calls, total = groups.get(label, (0, 0))
        groups[label] = (calls + 1, total + usec)
    print(f"Redis calls per job, SLOWLOG at threshold 0 ({jobs} jobs; execution time only):")
    table(top, jobs, "all calls")
    if inner:
        print("  of which run inside the scripts above:")
        table(inner, jobs, "all commands in scripts")


def table(groups, jobs, total_label):
    print(f"  {'call':<62} {'calls/job':>9} {'µs/job':>8} {'µs/call':>8}")
    all_calls = all_usec = 0
    for label, (calls, usec) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        all_calls += calls
        all_usec += usec
        if calls / jobs < 0.01:
            continue
        print(f"  {label[:62]:<62} {calls / jobs:>9.2f} {usec / jobs:>8.1f} {usec / calls:>8.2f}")
    print(f"  {total_label:<62} {all_calls / jobs:>9.2f} {all_usec / jobs:>8.1f}")


def main():
    mode, path, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "commandstats":
        commandstats(path, jobs)
    elif mode == "slowlog":
        slowlog(path, jobs, sys.argv[4:])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

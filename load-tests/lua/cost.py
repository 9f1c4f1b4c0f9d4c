#!/usr/bin/env python3
"""Redis CPU per notification of the queue's Lua functions, each on its own.

Starts its own redis-server (no persistence) on a free loopback port, loads
src/store/lua/ as one function library the way RedisStore does, then runs N rounds of
64 e2e-shaped notifications (webhook, a campaign, shared content, per-notification labels)
through enqueue, claim and finish, one phase after the other, and prints each phase's
Redis time per notification from `INFO commandstats` (FCALL usec). With --without NAME the
finish runs without one of its parts, to see what that part costs (see VARIANTS).

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install redis
    /tmp/venv/bin/python load-tests/lua/cost.py [--rounds 200] [--without receipt_xadd] [--lua DIR]

Only a measuring tool: Herald does not use it.
"""
import argparse, os, socket, subprocess, sys, tempfile, time

import redis

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "store", "lua")
BODIES = ["enqueue", "claim", "finish", "promote", "receipt", "cancel"]
B = 64  # notifications per call (--batch)
# Parts of finish left out with --without: (file, text, replacement). finish's common case
# (`sent` in finish.lua) makes its own record write, history and expiry; the receipt goes
# through the prelude's add_receipt.
VARIANTS = {
    "receipt_xadd": [("prelude", "  redis.call('XADD', RECEIPTS,", "  if false then redis.call('XADD', RECEIPTS,"),
                     ("prelude", "'cmp', cmp, 'lb', lb)\n", "'cmp', cmp, 'lb', lb) end\n")],
    "pexpire": [("finish", "  redis.call('PEXPIRE', rk, KEEP)", "  --")],
    "hset": [("finish", "  if #set > 0 then redis.call('HSET', rk, unpack(set)) end", "  --")],
    "history": [("finish", "    put_parts(set, 'h' .. txt(hn), 'a' .. att, history_part)", "    --"),
                ("finish", "    put_parts(set, 'h' .. txt(hn), 'r' .. e, history_part)", "    --")],
}


def library(root, without):
    text = {n: open(os.path.join(root, n + ".lua")).read() for n in ["prelude"] + BODIES}
    for f, old, new in VARIANTS.get(without, []):
        assert text[f].count(old) == 1, old
        text[f] = text[f].replace(old, new)
    code = "#!lua name=herald_cost\n" + text["prelude"] + "\n"
    for n in BODIES:
        body = text[n]
        code += (f"local function {n}_body()\n{body}\nend\n"
                 f"redis.register_function('cost_{n}', function(keys, args) "
                 f"begin(keys, args) return done({n}_body()) end)\n")
    return code


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    global B
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--without", choices=sorted(VARIANTS), default=None)
    ap.add_argument("--lua", default=ROOT, help="the Lua to load (default: src/store/lua)")
    ap.add_argument("--batch", type=int, default=64,
                    help="notifications per call (64, a dispatch batch; 1, a unary Send)")
    ap.add_argument("--idem", action="store_true",
                    help="every notification carries an idempotency key, as the unary load test's Sends do")
    ap.add_argument("--instructions", action="store_true",
                    help="run redis-server under valgrind's callgrind and print the instructions "
                         "each phase executes per notification: exact and repeatable on a noisy "
                         "machine, where the microseconds are not (slow: use --rounds 50)")
    a = ap.parse_args()
    B = a.batch
    port = free_port()
    d = tempfile.mkdtemp()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
           "--save", "", "--appendonly", "no", "--dir", d]
    if a.instructions:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + os.path.join(d, "cg.%p"),
               "--dump-line=no", "--compress-strings=no"] + cmd
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(600):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        meter = Instructions(srv.pid, d) if a.instructions else Microseconds(r)
        run(r, a.rounds, library(a.lua, a.without), a.without != "receipt_xadd", meter, a.idem)
    finally:
        srv.terminate()
        srv.wait()


class Microseconds:
    """Redis's own time in FCALL (`INFO commandstats`)."""
    unit = "us"

    def __init__(self, r):
        self.r = r

    def start(self):
        self.r.config_resetstat()

    def stop(self):
        return self.r.info("commandstats").get("cmdstat_fcall", {"usec": 0})["usec"]


class Instructions:
    """Instructions redis-server executed (callgrind's Ir), counted between two dumps."""
    unit = "instructions"

    def __init__(self, pid, d):
        self.pid, self.d, self.n = pid, d, 0

    def dump(self):
        subprocess.run(["callgrind_control", "-d", str(self.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.n += 1
        path = os.path.join(self.d, f"cg.{self.pid}.{self.n}")
        for _ in range(200):
            if os.path.exists(path):
                for line in open(path):
                    if line.startswith("totals:") or line.startswith("summary:"):
                        return int(line.split()[1])
            time.sleep(0.05)
        sys.exit(f"no callgrind dump at {path}")

    def start(self):
        self.dump()

    def stop(self):
        return self.dump()


def run(r, n_rounds, code, check, meter, idem=False):
    r.function_load(code, replace=True)
    key = "herald:{0}:"
    common = [1796202324337, 1000000, 604800000]
    blob = (b"\x99\xa7default\xa0\x9b\xa6c60003\xa0\xa0\xa0\xa0\x90\x90\x90"
            b"\xbbhttp://127.0.0.1:39309/hook\xa0\xa0\x91\x02\x01\x02\x00\x00\x00")
    content = b"\x98\xa9Load test\xd9" + b"x" * 120 + b"\xa0\x90\xc0\x80\xa0\xa0"
    ids = [[f"01M8V00RBG{n * B + i:014d}XX-0" for i in range(B)] for n in range(n_rounds)]
    claimed = []

    def enqueue():
        for n in range(n_rounds):
            args = common + [86400000, 1209600000]
            for i, id_ in enumerate(ids[n]):
                labels = b"\x82\xa2lg\xa3e2e\xa2t0\xb0" + str(1796202324333225 + i).encode()
                key_fp = [f"t:{id_}", "5be1f0c2a4d9e3b7"] if idem else ["", ""]
                args += [id_, *key_fp, blob, "webhook", "2", "0", "0", "lg-e2e", labels,
                         "30a5f288968fc7c617edbf80", content if i == 0 else ""]
            r.fcall("cost_enqueue", 1, key, *args)

    def claim():
        # A consumer per batch, as each worker holds only its own batch.
        for n in range(n_rounds):
            claimed.append(r.fcall("cost_claim", 1, key, *(common + ["webhook", f"w{n}", B, 0, 3])))

    def finish():
        for n, rows in enumerate(claimed):
            args = common + ["webhook", f"w{n}"]
            for row in rows:
                pr, eid, id_ = row[0], row[1], row[7]
                attempt = (b"\x9a\x01\x02\xcf\x00\x00\x01\xa26\x00aS\xcf\x00\x00\x01\xa26\x00aV"
                           b"\xa4sent\xc0\xa0\xa0\xbc" + id_ + b"\x80")
                args += [pr, eid, id_, "sent", "7", "", attempt, id_, "", "", "0", ""]
            r.fcall("cost_finish", 1, key, *args)

    for name, f in [("enqueue", enqueue), ("claim", claim), ("finish", finish)]:
        meter.start()
        f()
        print(f"{name}: {meter.stop() / (n_rounds * B):.1f} {meter.unit} of Redis per notification")
    done = r.xlen(key + "receipts")
    if check and done != n_rounds * B:
        sys.exit(f"only {done} of {n_rounds * B} notifications finished")


if __name__ == "__main__":
    main()

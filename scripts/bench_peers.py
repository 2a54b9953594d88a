"""The peer benchmark's measurements (scripts/bench-peers.sh builds, installs and starts what
this needs, then runs it). Against a running holdfast-sqs-server at ENDPOINT: preloads each
queue with a separate process (the server crate's `preload` example), starts one consumer
process, and reads

- messages/s: messages drained / time from the consumer's first ReceiveMessage reaching the
  server to the queue holding no message (the server's GET /__stats, polled every 5 ms);
- CPU ms per 1,000 messages: user + system time of the consumer process over that window
  (/proc/PID/stat, all threads);
- requests per message: SQS requests the server counted while the consumer ran, per message;
- peak RSS: VmHWM of the consumer process (/proc/PID/status).

Consumers are interleaved (A B C ... A B C ...), each run on a fresh queue, and medians are
reported. Every wait is bounded; a consumer that does not drain its queue in time fails the
run (exit status 1), which is what --smoke checks.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")
DRAIN_LIMIT_S = 180
ONE_THREAD = "@1thread"
START_LIMIT_S = 30


class Bench:
    def __init__(self, endpoint, bins, node_dir):
        self.endpoint = endpoint
        self.bins = bins
        self.node_dir = node_dir
        self.queues = 0
        self.env = dict(
            os.environ,
            AWS_ENDPOINT_URL_SQS=endpoint,
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            RUST_LOG="warn",
        )
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HOLDFAST_QUEUE_URL", "COPILOT_QUEUE_URI", "TOKIO_WORKER_THREADS"):
            self.env.pop(name, None)

    # --- the server -------------------------------------------------------------------
    def stats(self):
        with urllib.request.urlopen(self.endpoint + "/__stats", timeout=10) as r:
            return json.load(r)

    def sqs(self, action, payload):
        request = urllib.request.Request(
            self.endpoint + "/",
            data=json.dumps(payload).encode(),
            headers={"X-Amz-Target": "AmazonSQS." + action, "Content-Type": "application/x-amz-json-1.0"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    def not_visible(self, url):
        names = ["ApproximateNumberOfMessagesNotVisible"]
        out = self.sqs("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": names})
        return int(out["Attributes"][names[0]])

    def preload(self, label, messages, body='{"job":1}'):
        self.queues += 1
        name = f"{label}-{self.queues}"
        out = subprocess.run(
            [self.bins["preload"], self.endpoint, name, str(messages), body],
            check=True, capture_output=True, text=True, timeout=120,
        )
        return name, out.stdout.strip()

    # --- consumers ---------------------------------------------------------------------
    def command(self, consumer, url, handler_ms):
        kind, arg = consumer
        env = dict(self.env)
        if kind.endswith(ONE_THREAD):
            # A Rust consumer on one tokio worker thread, as #[tokio::main] gives a task of
            # one vCPU.
            kind = kind[: -len(ONE_THREAD)]
            env["TOKIO_WORKER_THREADS"] = "1"
        if kind == "holdfast":
            env.update(HOLDFAST_QUEUE_URL=url, HOLDFAST_CONCURRENCY=str(arg), **arg_env(handler_ms))
            return [self.bins["bench_worker"]], env, None
        if kind == "bare":
            return [self.bins["sqs_loop"], url, str(arg)], env, None
        if kind == "bare-attributes":
            return [self.bins["sqs_loop"], url, str(arg), "attributes"], env, None
        mode, slots = arg
        argv = ["node", "sqs_consumer.mjs", url, mode, str(slots), str(handler_ms)]
        return argv, env, self.node_dir

    def start(self, consumer, url, handler_ms, extra_env=None, wrapper=()):
        """Starts CONSUMER on URL, its command run by WRAPPER (e.g. valgrind) if given."""
        argv, env, cwd = self.command(consumer, url, handler_ms)
        env.update(extra_env or {})
        return subprocess.Popen([*wrapper, *argv], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def wait_first_receive(self, process, base):
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            s = self.stats()
            if s["requests"].get("ReceiveMessage", 0) > base["requests"].get("ReceiveMessage", 0):
                return s
            if process.poll() is not None:
                raise Failure(f"exited with {process.returncode} before receiving: {stderr_of(process)}")
            time.sleep(0.002)
        raise Failure(f"made no receive within {START_LIMIT_S} s")

    def drain(self, label, consumer, messages, handler_ms=0):
        """One drain of MESSAGES preloaded messages; returns its figures."""
        name, url = self.preload(label, messages)
        base = self.stats()
        process = self.start(consumer, url, handler_ms)
        try:
            self.wait_first_receive(process, base)
            t0, cpu0 = time.monotonic(), cpu_s(process.pid)
            s = self.wait_drained(process, name, messages, DRAIN_LIMIT_S)
            t1, cpu1, hwm = time.monotonic(), cpu_s(process.pid), hwm_mib(process.pid)
        finally:
            stop(process)
        requests = s["total"] - base["total"]
        return {
            "rate": messages / (t1 - t0),
            "cpu_ms_per_1000": (cpu1 - cpu0) * 1e6 / messages,
            "requests_per_message": requests / messages,
            "rss_mib": hwm,
            "seconds": t1 - t0,
        }

    def wait_drained(self, process, name, messages, limit_s):
        """Waits for queue NAME to hold no message; returns the server's stats then."""
        deadline = time.monotonic() + limit_s
        while True:
            s = self.stats()
            left = s["queues"][name]["messages"]
            if left == 0:
                return s
            if process.poll() is not None:
                raise Failure(f"exited with {process.returncode}, {left} left: {stderr_of(process)}")
            if time.monotonic() > deadline:
                raise Failure(f"{left} of {messages} messages left after {limit_s} s")
            time.sleep(0.005)

    def instructions(self, label, consumer, messages, out_dir):
        """Instructions the consumer process runs (valgrind's callgrind, which counts them the
        same whatever else the machine does) from its start to its exit, draining MESSAGES:
        started under callgrind, sent SIGTERM once the queue is empty. The difference between
        two drains of different sizes is the cost of the messages between them, without the
        start-up and the exit."""
        name, url = self.preload(label, messages)
        out = os.path.join(out_dir, f"{name}.callgrind")
        base = self.stats()
        # No wait for the long poll in flight at the SIGTERM: the queue is empty by then.
        process = self.start(consumer, url, 0, {"HOLDFAST_SHUTDOWN_RECEIVE": "abandon"},
                             ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        try:
            self.wait_first_receive(process, base)
            s = self.wait_drained(process, name, messages, 10 * DRAIN_LIMIT_S)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                raise Failure("did not exit within 120 s of SIGTERM") from None
        finally:
            stop(process)
        with open(out) as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("summary:"))
        return {"instructions": total, "requests": s["total"] - base["total"]}

    def in_flight_rss(self, label, consumer, messages):
        """Peak RSS once MESSAGES messages are all in flight in long handlers."""
        _, url = self.preload(label, messages)
        base = self.stats()
        process = self.start(consumer, url, 120_000, {"HOLDFAST_VISIBILITY_TIMEOUT": "300"})
        try:
            self.wait_first_receive(process, base)
            t0 = time.monotonic()
            while self.not_visible(url) < messages:
                if process.poll() is not None:
                    raise Failure(f"exited with {process.returncode}: {stderr_of(process)}")
                if time.monotonic() - t0 > 90:
                    raise Failure(f"only {self.not_visible(url)} of {messages} in flight after 90 s")
                time.sleep(0.1)
            reached = time.monotonic() - t0
            time.sleep(1.0)
            return {"rss_mib": hwm_mib(process.pid), "seconds": reached}
        finally:
            stop(process)

    def sigterm(self, label, busy, extra_env):
        """Seconds from SIGTERM to exit: idle (1 s after the first receive reached the
        server) or busy (100 two-second jobs in flight, 0.5 s into them)."""
        messages = 100 if busy else 0
        name, url = self.preload(label, messages)
        base = self.stats()
        consumer = ("holdfast", 100 if busy else 10)
        process = self.start(consumer, url, 2000 if busy else 0, extra_env)
        try:
            self.wait_first_receive(process, base)
            if busy:
                t0 = time.monotonic()
                while self.not_visible(url) < messages:
                    if time.monotonic() - t0 > 30:
                        raise Failure("100 jobs never all in flight")
                    time.sleep(0.01)
                time.sleep(0.5)
            else:
                time.sleep(1.0)
            killer = threading.Timer(60, process.kill)
            killer.start()
            t = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait()
            took = time.monotonic() - t
            killer.cancel()
        finally:
            stop(process)
        if code != 0:
            raise Failure(f"exited with {code} after SIGTERM: {stderr_of(process)}")
        left = self.stats()["queues"][name]["messages"]
        if left:
            raise Failure(f"{left} messages left in the queue after a busy SIGTERM")
        return {"exit_s": took}


class Failure(Exception):
    pass


def arg_env(handler_ms):
    return {"BENCH_HANDLER_MS": str(handler_ms)} if handler_ms else {}


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stderr_of(process):
    if process.poll() is None:
        return ""
    return (process.stderr.read() or "").strip()[-2000:]


def stop(process):
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stderr:
        process.stderr.close()


def describe(consumer):
    kind, arg = consumer
    if kind.endswith(ONE_THREAD):
        return describe((kind[: -len(ONE_THREAD)], arg)) + ", 1 worker thread"
    if kind == "holdfast":
        return f"holdfast, concurrency {arg}"
    if kind == "bare":
        return f"bare aws-sdk-sqs loop x{arg}"
    if kind == "bare-attributes":
        return f"bare loop x{arg}, asking every attribute"
    mode, slots = arg
    if str(slots).startswith("x"):
        return f"sqs-consumer {mode} x{slots[1:]}"
    return f"sqs-consumer {mode}, {slots} at once"


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def interleaved(bench, label, consumers, runs, job, failures, results):
    """Runs job(consumer) RUNS times for each consumer, interleaved; keeps what succeeded."""
    for run in range(runs):
        for consumer in consumers:
            key = describe(consumer)
            try:
                figures = job(consumer)
            except (Failure, subprocess.SubprocessError, OSError) as e:
                failures.append(f"{label} / {key} (run {run + 1}): {e}")
                print(f"   FAILED {label} / {key}: {e}", flush=True)
                continue
            results.setdefault(key, []).append(figures)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
            print(f"   {label} / {key} (run {run + 1}): {shown}", flush=True)


SECTIONS = ["noop", "50ms", "rss", "sigterm"]
# Not in the default run: needs valgrind, and each drain runs about fifty times slower.
EXTRA_SECTIONS = ["instructions"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("endpoint")
    p.add_argument("--bin-dir", required=True, help="where bench_worker, sqs_loop and preload are")
    p.add_argument("--node-dir", required=True)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", help="write every run's figures here as JSON")
    p.add_argument("--only", action="append", choices=SECTIONS + EXTRA_SECTIONS,
                   help="run only this section (repeatable; default: all but instructions)")
    p.add_argument("--callgrind-dir", help="where the instructions section writes callgrind's files "
                   "(default: BIN_DIR/callgrind-peers)")
    a = p.parse_args()
    wanted = set(a.only or SECTIONS)
    bins = {
        "bench_worker": os.path.join(a.bin_dir, "examples", "bench_worker"),
        "sqs_loop": os.path.join(a.bin_dir, "examples", "sqs_loop"),
        "preload": os.path.join(a.bin_dir, "examples", "preload"),
    }
    bench = Bench(a.endpoint, bins, a.node_dir)
    runs = 1 if a.smoke else a.runs
    failures, report = [], {}

    noop = [
        ("holdfast", 10),
        ("holdfast", 40),
        ("sqs-consumer", ("single", 10)),
        ("sqs-consumer", ("batch", "x1")),
        ("sqs-consumer", ("batch", "x4")),
        ("bare", 1),
        ("bare", 4),
        ("bare-attributes", 4),
        ("holdfast" + ONE_THREAD, 10),
        ("holdfast" + ONE_THREAD, 40),
        ("bare" + ONE_THREAD, 4),
        ("bare-attributes" + ONE_THREAD, 4),
    ]
    if "noop" in wanted:
        print(f"== no-op handler, {a.messages} messages, {runs} run(s) each, interleaved", flush=True)
        results = {}
        interleaved(bench, "no-op", noop, runs, lambda c: bench.drain("noop", c, a.messages), failures, results)
        report["noop"] = results

    if "instructions" in wanted:
        small, large = (a.messages // 4, a.messages)
        print(f"== instructions a message under callgrind: drains of {large} less drains of {small}, "
              f"{runs} run(s) each", flush=True)
        out_dir = a.callgrind_dir or os.path.join(a.bin_dir, "callgrind-peers")
        os.makedirs(out_dir, exist_ok=True)
        counted = [
            ("holdfast", 40),
            ("holdfast" + ONE_THREAD, 40),
            ("bare", 4),
            ("bare" + ONE_THREAD, 4),
            ("bare-attributes" + ONE_THREAD, 4),
        ]

        def per_message(consumer):
            few = bench.instructions("count", consumer, small, out_dir)
            many = bench.instructions("count", consumer, large, out_dir)
            return {
                "instructions_per_message": (many["instructions"] - few["instructions"]) / (large - small),
                "requests_per_message": (many["requests"] - few["requests"]) / (large - small),
            }

        results = {}
        interleaved(bench, "instructions", counted, runs, per_message, failures, results)
        report["instructions"] = results

    if "50ms" in wanted:
        slots = [8] if a.smoke else [1, 8, 64, 512]
        print(f"== 50 ms handler, concurrency {slots}: holdfast and sqs-consumer batch mode", flush=True)
        results = {}
        for c in slots:
            n = 20 * c if a.smoke else 100 * c
            pair = [("holdfast", c), ("sqs-consumer", ("batch", c))]
            interleaved(bench, f"50ms c={c}", pair, runs,
                        lambda consumer, n=n: bench.drain("slow", consumer, n, 50), failures, results)
        report["handler_50ms"] = results

    if not a.smoke and "rss" in wanted:
        print("== peak RSS with messages in flight (handlers of 120 s)", flush=True)
        results = {}
        for n in (1_000, 10_000):
            consumers = [("holdfast", n)] + ([("sqs-consumer", ("batch", n))] if n == 1_000 else [])
            interleaved(bench, f"{n} in flight", consumers, runs,
                        lambda consumer, n=n: bench.in_flight_rss("rss", consumer, n), failures, results)
        report["in_flight"] = results

    if "sigterm" in wanted:
        print("== SIGTERM -> exit (holdfast)", flush=True)
        cases = [
            ("idle, HOLDFAST_SHUTDOWN_RECEIVE=abandon", False, {"HOLDFAST_SHUTDOWN_RECEIVE": "abandon"}),
            ("busy, 100 jobs of 2 s, 0.5 s in", True, {}),
        ]
        if not a.smoke:
            cases.insert(1, ("idle, default (wait for the 20 s receive)", False, {}))
        results = {}
        for run in range(runs):
            for label, busy, env in cases:
                try:
                    figures = bench.sigterm("term", busy, env)
                except (Failure, subprocess.SubprocessError, OSError) as e:
                    failures.append(f"SIGTERM {label} (run {run + 1}): {e}")
                    print(f"   FAILED SIGTERM {label}: {e}", flush=True)
                    continue
                results.setdefault(label, []).append(figures)
                print(f"   SIGTERM {label} (run {run + 1}): exit {figures['exit_s']:.3f} s", flush=True)
        report["sigterm"] = results

    print("\n== medians")
    for section, table in report.items():
        for key, rs in table.items():
            keys = rs[0].keys()
            shown = ", ".join(f"{k} {median(rs, k):.3f}" for k in keys)
            print(f"{section} / {key} ({len(rs)} runs): {shown}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"report": report, "failures": failures}, f, indent=1)
    if failures:
        print(f"\n{len(failures)} failure(s):", *failures, sep="\n  ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

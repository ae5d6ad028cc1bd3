"""OTP latency behind a backlog of SMS notices: how long from publish until a gateway has the OTP.

The issue's claim: 1,000 OTPs published while 5,000 notices are queued, OTP p99 under 2 s from publish to the
gateway simulator's receipt. This prints the figures; ``tests/routes/test_sms_routes.py`` checks the same
run (a tenth of it in ``make test``, all of it in ``make chaos``) with the wall-clock margin of a shared machine.

Everything is real: a **temporary vhost** on the local RabbitMQ (``rabbitmqctl add_vhost``, removed at the
end), a SQLite store in a temporary folder, both SMS gateway simulators (Viettel answering in
``--gateway-latency``), and a worker in this process running the shipped ``sms-otp`` (16 threads) and
``sms-notices`` (2 threads) routes. The notices are published first; once they flow, the OTPs are published
one by one at ``--otp-rate`` a second, each timed from just before its publish to the simulator's clock when
the request arrived.

    .venv/bin/python bench/bench_sms_otp.py                       # 1,000 OTPs behind 5,000 notices
    .venv/bin/python bench/bench_sms_otp.py --otps 100 --notices 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from _common import percentile, rabbitmqctl

#: the tests' helpers (simulators, config, events) are what the bench runs, so the two measure the same thing
TESTS = Path(__file__).resolve().parents[1] / "tests"


def main() -> int:
    """Run once and print p50, p90, p99 and max of OTP latency, and what was sent."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--otps", type=int, default=1000)
    parser.add_argument("--notices", type=int, default=5000)
    parser.add_argument("--otp-rate", type=float, default=50.0, help="OTPs published a second (default 50)")
    parser.add_argument("--gateway-latency", type=float, default=0.02, help="seconds Viettel takes to answer")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import smsenv
    from smsroutes import measure_otp_priority

    os.environ.setdefault("IGATE_BUS_LOG_LEVEL", "warning")
    from bus.logging import configure_logging

    configure_logging("warning")
    smsenv.sms_env()
    vhost = f"igb-bench-sms-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        with tempfile.TemporaryDirectory(prefix="igb-bench-sms-") as tmp:
            store_url = f"sqlite:///{tmp}/store.sqlite3"
            for viettel, esms_sim in smsenv.simulators():
                run = measure_otp_priority(
                    amqp_url,
                    store_url,
                    Path(tmp) / "cfg",
                    viettel,
                    esms_sim,
                    otps=args.otps,
                    notices=args.notices,
                    otp_rate=args.otp_rate,
                    gateway_latency_s=args.gateway_latency,
                )
    finally:
        rabbitmqctl("delete_vhost", vhost)
    lat = run.latencies
    twice = sum(1 for n in run.counts.values() if n > 1)
    lost = sum(1 for n in run.counts.values() if n == 0)
    print(f"otps: {len(lat)}  notices: {args.notices}  notices still queued after the last OTP: {run.backlog}")
    print(
        f"otp publish->gateway  p50 {statistics.median(lat) * 1000:.0f} ms  p90 {percentile(lat, 0.9) * 1000:.0f} ms  "
        f"p99 {percentile(lat, 0.99) * 1000:.0f} ms  max {max(lat) * 1000:.0f} ms"
    )
    print(f"sms sent: {sum(run.counts.values())}  sent twice: {twice}  lost: {lost}")
    return 0 if twice == lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

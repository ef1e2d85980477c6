"""Probes whether an S3 server's conditional writes are atomic.

Each round races WRITERS threads doing a conditional PUT on one key, twice:
first `If-None-Match: *` on a fresh key, then `If-Match: <etag>` on the
object the first race left. A sound store lets exactly one writer of each
race win (200); the others must get 412 (or 409, a concurrent conditional
write). Any round with zero or several winners is counted and reported.

Usage: probe_atomic.py ENDPOINT SERVER_NAME ROUNDS
Exit status 0 when every round had exactly one winner, 1 otherwise, 2 when
the probe itself could not run. Prints one summary line either way.
"""

import sys
import threading
import time
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

WRITERS = 8
STARTUP_ATTEMPTS = 60
ACCESS_KEY_ID = "tidemark-test"
SECRET_ACCESS_KEY = "tidemark-test-secret"


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=WRITERS * 2,
        ),
    )


def race(s3, bucket, key, condition):
    """Runs WRITERS racing PUTs under `condition`; returns (winners, errors)."""
    barrier = threading.Barrier(WRITERS)
    winners = []
    errors = []
    lock = threading.Lock()

    def writer(index):
        body = f"writer {index} {uuid.uuid4()}".encode()
        barrier.wait()
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, **condition)
            with lock:
                winners.append(index)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status not in (409, 412):
                with lock:
                    errors.append(f"writer {index}: status={status} {err}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners, errors


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, server, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s3 = client(endpoint)
    bucket = f"tm-probe-{uuid.uuid4().hex[:16]}"
    # A server that has just opened its port may not serve yet: retry the
    # first request for a bounded while.
    for attempt in range(STARTUP_ATTEMPTS):
        try:
            s3.create_bucket(Bucket=bucket)
            break
        except Exception as err:  # noqa: BLE001 - any failure means not ready yet
            if attempt + 1 == STARTUP_ATTEMPTS:
                print(f"atomicity probe: {server}: cannot create a bucket: {err}")
                return 2
            time.sleep(0.5)
    bad_rounds = {"If-None-Match": 0, "If-Match": 0}
    double_winners = {"If-None-Match": 0, "If-Match": 0}
    failures = []
    for round_number in range(rounds):
        key = f"probe/{round_number}"
        winners, errors = race(s3, bucket, key, {"IfNoneMatch": "*"})
        failures.extend(errors)
        if len(winners) != 1:
            bad_rounds["If-None-Match"] += 1
            double_winners["If-None-Match"] += max(0, len(winners) - 1)
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
        winners, errors = race(s3, bucket, key, {"IfMatch": etag})
        failures.extend(errors)
        if len(winners) != 1:
            bad_rounds["If-Match"] += 1
            double_winners["If-Match"] += max(0, len(winners) - 1)
    sound = not failures and not any(bad_rounds.values())
    verdict = "atomic" if sound else "NOT ATOMIC"
    print(
        f"atomicity probe: {server}: {verdict}: rounds={rounds} writers={WRITERS} "
        f"bad_rounds_if_none_match={bad_rounds['If-None-Match']} "
        f"bad_rounds_if_match={bad_rounds['If-Match']} "
        f"extra_winners_if_none_match={double_winners['If-None-Match']} "
        f"extra_winners_if_match={double_winners['If-Match']} "
        f"unexpected_errors={len(failures)}"
    )
    for failure in failures[:5]:
        print(f"atomicity probe: {server}: {failure}")
    return 0 if sound else 1


if __name__ == "__main__":
    sys.exit(main())

"""A real S3-protocol server on loopback for the tests: moto's server mode in its own process, a bucket in it,
and the standard AWS variables that point pyarrow, boto3 and MLflow at it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port

BUCKET = "fabric-test"


def s3_env(endpoint: str) -> dict[str, str]:
    """What a user sets for an S3-compatible store (MinIO, Ceph, moto): the endpoint by the standard
    `AWS_ENDPOINT_URL` (pyarrow and boto3 both honour it) and dummy credentials in a region."""
    return {"AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_server(bucket: str = BUCKET) -> Iterator[str]:
    """Start `moto_server` on a free loopback port (its own process: Ray workers reach it over HTTP), make
    `bucket`, yield the endpoint URL, stop it by PID."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")  # CreateBucket, us-east-1
        urllib.request.urlopen(request, timeout=10).close()
        yield endpoint
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def keys(endpoint: str, bucket: str = BUCKET, prefix: str = "") -> list[str]:
    """Every object key under `prefix` (not pyarrow's directory markers, which end in '/'), asked of the server
    with boto3 rather than through fabric's own code."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/")]
    return found

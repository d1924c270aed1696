"""Tests of the AWS emulator (moto + extensions) through boto3, against a server started by ./start."""

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1 << 30
BLOCK = 524288


@pytest.fixture(scope="session")
def endpoint(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("aws-emulator")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([os.path.join(HERE, "start"), str(workdir), str(port)], check=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([os.path.join(HERE, "stop"), str(workdir)], check=True)


@pytest.fixture(autouse=True)
def reset(endpoint):
    ctl(endpoint, "POST", "/_emulator/reset")


def ctl(endpoint, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(endpoint + path, method=method, data=data)
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def client(endpoint, service, **creds):
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=creds.get("key", "test"), aws_secret_access_key=creds.get("secret", "test"),
        aws_session_token=creds.get("token"), config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def ec2(endpoint):
    return client(endpoint, "ec2")


@pytest.fixture
def ebs(endpoint):
    return client(endpoint, "ebs")


@pytest.fixture
def c(endpoint):
    return lambda method, path, body=None: ctl(endpoint, method, path, body)


def volume(ec2, size=1):
    return ec2.create_volume(Size=size, AvailabilityZone="us-east-1a")["VolumeId"]


def snap_state(ec2, snap_id):
    return ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]


def error_code(exc_info):
    return exc_info.value.response["Error"]["Code"]


def instance_with_volumes(ec2, n):
    inst = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]
    vols = [volume(ec2) for _ in range(n)]
    for i, v in enumerate(vols):
        ec2.attach_volume(VolumeId=v, InstanceId=inst["InstanceId"], Device=f"/dev/sd{'fghijk'[i]}")
    return inst["InstanceId"], vols


def test_snapshot_pending_with_rising_progress_then_completed(ec2, c):
    c("POST", "/_emulator/config", {"snapshot_pending_seconds": 1.5})
    snap = ec2.create_snapshot(VolumeId=volume(ec2, 10))
    assert snap["State"] == "pending"
    assert "FullSnapshotSizeInBytes" not in snap
    progress = []
    while (s := snap_state(ec2, snap["SnapshotId"]))["State"] == "pending":
        assert "FullSnapshotSizeInBytes" not in s
        progress.append(int(s["Progress"].rstrip("%")))
        time.sleep(0.1)
    assert s["State"] == "completed" and s["Progress"] == "100%"
    assert progress == sorted(progress) and len(progress) >= 5
    assert any(0 < p < 100 for p in progress)
    assert s["FullSnapshotSizeInBytes"] == 10 * GIB
    # the status filter sees the live state
    assert ec2.describe_snapshots(Filters=[{"Name": "status", "Values": ["completed"]}])["Snapshots"]


def test_default_is_stock_completed(ec2):
    snap = ec2.create_snapshot(VolumeId=volume(ec2))
    assert (snap["State"], snap["Progress"]) == ("completed", "100%")


def test_per_volume_error_ending_and_override(ec2, c):
    bad, slow = volume(ec2), volume(ec2)
    c("POST", f"/_emulator/volumes/{bad}", {"end_state": "error", "pending_seconds": 0.3})
    c("POST", f"/_emulator/volumes/{slow}", {"pending_seconds": 60})
    s_bad = ec2.create_snapshot(VolumeId=bad)["SnapshotId"]
    s_slow = ec2.create_snapshot(VolumeId=slow)["SnapshotId"]
    assert snap_state(ec2, s_bad)["State"] == "pending"
    time.sleep(0.4)
    assert snap_state(ec2, s_bad)["State"] == "error"
    assert "FullSnapshotSizeInBytes" not in snap_state(ec2, s_bad)
    assert snap_state(ec2, s_slow)["State"] == "pending"
    c("POST", f"/_emulator/snapshots/{s_slow}", {"state": "completed"})
    assert snap_state(ec2, s_slow)["State"] == "completed"


def test_create_snapshots_exclude_and_state(ec2, c):
    c("POST", "/_emulator/config", {"snapshot_pending_seconds": 30})
    iid, (v1, v2, v3) = instance_with_volumes(ec2, 3)
    out = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": iid, "ExcludeBootVolume": True, "ExcludeDataVolumeIds": [v2]},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "backup", "Value": "b1"}]}],
    )["Snapshots"]
    assert sorted(s["VolumeId"] for s in out) == sorted([v1, v3])
    assert {s["State"] for s in out} == {"pending"}
    assert len({s["StartTime"] for s in out}) == 1
    assert all(s["Tags"] == [{"Key": "backup", "Value": "b1"}] for s in out)
    c("POST", "/_emulator/config", {"snapshot_pending_seconds": 0})
    out = ec2.create_snapshots(InstanceSpecification={"InstanceId": iid, "ExcludeBootVolume": True})["Snapshots"]
    assert len(out) == 3 and {s["State"] for s in out} == {"completed"}


def test_create_snapshots_set_fails_together(ec2, c):
    iid, (v1, v2) = instance_with_volumes(ec2, 2)
    c("POST", f"/_emulator/volumes/{v1}", {"end_state": "error"})
    out = ec2.create_snapshots(InstanceSpecification={"InstanceId": iid, "ExcludeBootVolume": True})["Snapshots"]
    assert {snap_state(ec2, s["SnapshotId"])["State"] for s in out} == {"error"}


def test_full_snapshot_size_from_block_map(ec2, c):
    v = volume(ec2, 4)
    assert c("POST", f"/_emulator/volumes/{v}/blocks", {"count": 300})["block_count"] == 300
    s = ec2.create_snapshot(VolumeId=v)
    assert s["FullSnapshotSizeInBytes"] == 300 * BLOCK
    c("POST", f"/_emulator/volumes/{v}/blocks", {"write": [1000, 1001], "trim": [0]})
    assert snap_state(ec2, s["SnapshotId"])["FullSnapshotSizeInBytes"] == 300 * BLOCK  # captured at creation
    assert ec2.create_snapshot(VolumeId=v)["FullSnapshotSizeInBytes"] == 301 * BLOCK


def test_list_snapshot_blocks_paging(ec2, ebs, c):
    v = volume(ec2, 2)
    c("POST", f"/_emulator/volumes/{v}/blocks", {"count": 250})
    snap = ec2.create_snapshot(VolumeId=v)["SnapshotId"]
    pages, kwargs = [], {"SnapshotId": snap, "MaxResults": 100}
    while True:
        page = ebs.list_snapshot_blocks(**kwargs)
        assert page["BlockSize"] == BLOCK and page["VolumeSize"] == 2
        pages.append([b["BlockIndex"] for b in page["Blocks"]])
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    assert [len(p) for p in pages] == [100, 100, 50]
    assert sum(pages, []) == list(range(250))
    tail = ebs.list_snapshot_blocks(SnapshotId=snap, StartingBlockIndex=200, MaxResults=100)
    assert [b["BlockIndex"] for b in tail["Blocks"]] == list(range(200, 250)) and "NextToken" not in tail
    # a volume without a block map is fully written
    full = ec2.create_snapshot(VolumeId=volume(ec2, 1))["SnapshotId"]
    assert len(ebs.list_snapshot_blocks(SnapshotId=full)["Blocks"]) == GIB // BLOCK
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0")
    assert error_code(e) == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId=snap, NextToken="garbage")
    assert error_code(e) == "ValidationException"


def test_list_changed_blocks(ec2, ebs, c):
    v = volume(ec2, 1)
    c("POST", f"/_emulator/volumes/{v}/blocks", {"count": 10})
    first = ec2.create_snapshot(VolumeId=v)["SnapshotId"]
    c("POST", f"/_emulator/volumes/{v}/blocks", {"write": [3, 20], "trim": [5]})
    second = ec2.create_snapshot(VolumeId=v)["SnapshotId"]
    out = ebs.list_changed_blocks(FirstSnapshotId=first, SecondSnapshotId=second)
    by_idx = {b["BlockIndex"]: b for b in out["ChangedBlocks"]}
    assert sorted(by_idx) == [3, 5, 20]
    assert {"FirstBlockToken", "SecondBlockToken"} <= set(by_idx[3])
    assert "SecondBlockToken" not in by_idx[5] and "FirstBlockToken" in by_idx[5]
    assert "FirstBlockToken" not in by_idx[20] and "SecondBlockToken" in by_idx[20]
    assert out["BlockSize"] == BLOCK and out["VolumeSize"] == 1
    # unchanged volume -> nothing changed; paging over many changes
    third = ec2.create_snapshot(VolumeId=v)["SnapshotId"]
    assert ebs.list_changed_blocks(FirstSnapshotId=second, SecondSnapshotId=third)["ChangedBlocks"] == []
    c("POST", f"/_emulator/volumes/{v}/blocks", {"write_range": [100, 250]})
    fourth = ec2.create_snapshot(VolumeId=v)["SnapshotId"]
    page = ebs.list_changed_blocks(FirstSnapshotId=third, SecondSnapshotId=fourth, MaxResults=100)
    rest = ebs.list_changed_blocks(FirstSnapshotId=third, SecondSnapshotId=fourth, MaxResults=100,
                                   NextToken=page["NextToken"])
    assert len(page["ChangedBlocks"]) == 100 and len(rest["ChangedBlocks"]) == 50 and "NextToken" not in rest
    # without a first snapshot every written block of the second counts
    assert len(ebs.list_changed_blocks(SecondSnapshotId=first)["ChangedBlocks"]) == 10
    other = ec2.create_snapshot(VolumeId=volume(ec2))["SnapshotId"]
    with pytest.raises(ClientError) as e:
        ebs.list_changed_blocks(FirstSnapshotId=other, SecondSnapshotId=second)
    assert error_code(e) == "ValidationException"
    assert e.value.response.get("Reason") == "UNRELATED_SNAPSHOTS"


def test_ebs_on_pending_snapshot_is_rejected(ec2, ebs, c):
    c("POST", "/_emulator/config", {"snapshot_pending_seconds": 30})
    snap = ec2.create_snapshot(VolumeId=volume(ec2))["SnapshotId"]
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId=snap)
    assert error_code(e) == "ValidationException"


def test_fault_injection(endpoint, ec2, ebs, c):
    v = volume(ec2)
    rule = c("POST", "/_emulator/faults",
             {"action": "CreateSnapshot", "status": 503, "code": "RequestLimitExceeded", "times": 1})["rules"][0]
    with pytest.raises(ClientError) as e:
        ec2.create_snapshot(VolumeId=v)
    assert error_code(e) == "RequestLimitExceeded"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    ec2.create_snapshot(VolumeId=v)  # times exhausted
    assert c("GET", "/_emulator/faults")["rules"][0]["hits"] == 1 and rule["id"] >= 1

    for code in ("PendingSnapshotLimitExceeded", "SnapshotCreationPerVolumeRateExceeded",
                 "ConcurrentSnapshotLimitExceeded"):
        c("POST", "/_emulator/faults", {"action": "CreateSnapshots", "status": 400, "code": code, "times": 1})
        with pytest.raises(ClientError) as e:
            ec2.create_snapshots(InstanceSpecification={"InstanceId": "i-0123456789abcdef0"})
        assert error_code(e) == code

    c("POST", "/_emulator/faults", {"service": "ebs", "action": "ListSnapshotBlocks", "status": 500,
                                    "code": "InternalServerException", "path": r"^/snapshots/snap-", "times": 1})
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0")
    assert error_code(e) == "InternalServerException"

    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket="bkt")
    c("POST", "/_emulator/faults", {"action": "PutObject", "status": 500, "code": "InternalError", "times": 1})
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="bkt", Key="a/b", Body=b"x")
    assert error_code(e) == "InternalError"
    s3.put_object(Bucket="bkt", Key="a/b", Body=b"x")
    assert s3.get_object(Bucket="bkt", Key="a/b")["Body"].read() == b"x"

    c("DELETE", "/_emulator/faults")
    assert c("GET", "/_emulator/faults")["rules"] == []


def test_delay_injection(ec2, c):
    c("POST", "/_emulator/faults", {"action": "DescribeVolumes", "delay_ms": 400})
    t0 = time.monotonic()
    ec2.describe_volumes()
    assert time.monotonic() - t0 >= 0.4
    t0 = time.monotonic()
    ec2.describe_snapshots(OwnerIds=["self"])
    assert time.monotonic() - t0 < 0.4


def test_token_bucket(ec2, c):
    vols = [volume(ec2) for _ in range(5)]
    c("POST", "/_emulator/limits",
      {"enabled": True, "buckets": {"CreateSnapshot": {"burst": 3, "refill_per_second": 2}}})
    for v in vols[:3]:
        ec2.create_snapshot(VolumeId=v)
    with pytest.raises(ClientError) as e:
        ec2.create_snapshot(VolumeId=vols[3])
    assert error_code(e) == "RequestLimitExceeded"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    time.sleep(0.6)
    ec2.create_snapshot(VolumeId=vols[3])
    limits = c("GET", "/_emulator/limits")
    assert limits["buckets"]["DeleteSnapshot"] == {"burst": 100, "refill_per_second": 5}


def test_per_volume_snapshot_interval(ec2, c):
    v = volume(ec2)
    c("POST", "/_emulator/limits", {"enabled": True, "snapshot_interval_seconds": 0.5})
    ec2.create_snapshot(VolumeId=v)
    with pytest.raises(ClientError) as e:
        ec2.create_snapshot(VolumeId=v)
    assert error_code(e) == "SnapshotCreationPerVolumeRateExceeded"
    ec2.create_snapshot(VolumeId=volume(ec2))  # other volumes are not affected
    time.sleep(0.6)
    ec2.create_snapshot(VolumeId=v)


def test_pending_limits(ec2, c):
    c("POST", "/_emulator/config", {"snapshot_pending_seconds": 60})
    c("POST", "/_emulator/limits", {"enabled": True, "snapshot_interval_seconds": 0,
                                    "max_pending_per_volume": 2, "max_pending_per_region": 3})
    v1, v2 = volume(ec2), volume(ec2)
    s1 = ec2.create_snapshot(VolumeId=v1)["SnapshotId"]
    ec2.create_snapshot(VolumeId=v1)
    with pytest.raises(ClientError) as e:
        ec2.create_snapshot(VolumeId=v1)
    assert error_code(e) == "ConcurrentSnapshotLimitExceeded"
    ec2.create_snapshot(VolumeId=v2)
    with pytest.raises(ClientError) as e:
        ec2.create_snapshot(VolumeId=v2)
    assert error_code(e) == "PendingSnapshotLimitExceeded"
    # a pending snapshot that is deleted still counts until it would have completed
    ec2.delete_snapshot(SnapshotId=s1)
    with pytest.raises(ClientError):
        ec2.create_snapshot(VolumeId=v2)
    c("POST", "/_emulator/limits", {"max_pending_per_region": 100})
    ec2.create_snapshot(VolumeId=v2)
    # CreateSnapshots is checked for the whole set
    c("POST", "/_emulator/limits", {"max_pending_per_region": 6})
    iid, _ = instance_with_volumes(ec2, 2)
    with pytest.raises(ClientError) as e:
        ec2.create_snapshots(InstanceSpecification={"InstanceId": iid})  # root + 2 data volumes
    assert error_code(e) == "PendingSnapshotLimitExceeded"


def test_request_log(ec2, c):
    v = volume(ec2)
    snap = ec2.create_snapshot(VolumeId=v)["SnapshotId"]
    ec2.describe_snapshots(SnapshotIds=[snap])
    with pytest.raises(ClientError):
        ec2.delete_snapshot(SnapshotId="snap-0123456789abcdef0")
    reqs = c("GET", "/_emulator/requests")["requests"]
    assert [r["action"] for r in reqs] == ["CreateVolume", "CreateSnapshot", "DescribeSnapshots", "DeleteSnapshot"]
    create = c("GET", "/_emulator/requests?action=CreateSnapshot")["requests"]
    assert len(create) == 1
    assert create[0]["service"] == "ec2" and create[0]["status"] == 200
    assert create[0]["volume_ids"] == [v] and create[0]["snapshot_ids"] == [snap]
    failed = reqs[-1]
    assert failed["status"] == 400 and failed["error_code"] == "InvalidSnapshot.NotFound"
    assert c("GET", f"/_emulator/requests?since={reqs[-1]['time']}")["requests"] == [failed]
    c("DELETE", "/_emulator/requests")
    assert c("GET", "/_emulator/requests")["requests"] == []


def test_sts_assume_role_and_web_identity(endpoint, c):
    sts = client(endpoint, "sts")
    role = "arn:aws:iam::123456789012:role/backup"
    creds = sts.assume_role(RoleArn=role, RoleSessionName="s1")["Credentials"]
    assert creds["AccessKeyId"] and creds["SessionToken"]
    web = sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="web-identity-token-1",
                                            WebIdentityToken="eyJhbGciOiJSUzI1NiJ9.e30.sig")["Credentials"]
    assert web["AccessKeyId"] and web["SessionToken"]
    ec2 = client(endpoint, "ec2", key=web["AccessKeyId"], secret=web["SecretAccessKey"], token=web["SessionToken"])
    ec2.describe_volumes()
    log = c("GET", "/_emulator/requests?service=sts")["requests"]
    assert [r["action"] for r in log] == ["AssumeRole", "AssumeRoleWithWebIdentity"]
    assert all(r["status"] == 200 for r in log)
    assert log[1]["role_arn"] == role and log[1]["web_identity_token"] == "eyJhbGciOiJSUzI1NiJ9.e30.sig"
    calls = c("GET", "/_emulator/requests?action=DescribeVolumes")["requests"]
    assert calls[-1]["access_key"] == web["AccessKeyId"], "the log names the key a request was signed with"


def test_reset(ec2, c):
    volume(ec2)
    c("POST", "/_emulator/faults", {"action": "DescribeSnapshots", "status": 500, "code": "InternalError"})
    c("POST", "/_emulator/limits", {"enabled": True})
    c("POST", "/_emulator/config", {"snapshot_pending_seconds": 9})
    c("POST", "/_emulator/latency", {"DescribeVolumes": {"fixed_ms": 500}, "seed": 3})
    c("POST", "/_emulator/reset")
    assert ec2.describe_volumes()["Volumes"] == []
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    assert c("GET", "/_emulator/faults")["rules"] == []
    assert c("GET", "/_emulator/limits")["enabled"] is False
    assert c("GET", "/_emulator/config")["snapshot_pending_seconds"] == 0
    assert c("GET", "/_emulator/latency") == {"seed": None, "calls": {}}
    assert [r["action"] for r in c("GET", "/_emulator/requests")["requests"]] == ["DescribeVolumes",
                                                                                  "DescribeSnapshots"]


def test_control_api_errors(endpoint):
    with pytest.raises(urllib.error.HTTPError) as e:
        ctl(endpoint, "POST", "/_emulator/volumes/vol-0123456789abcdef0/blocks", {"count": 1})
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        ctl(endpoint, "POST", "/_emulator/faults", {"action": "X", "bogus": 1})
    assert e.value.code == 400


# ---- latency model --------------------------------------------------------------------------------


def _instances_for_create_snapshots(endpoint, ec2, n):
    """n instances with 2 data volumes each, and one client per instance with its connection open."""
    inst = ec2.run_instances(ImageId="ami-12345678", MinCount=n, MaxCount=n,
                             Placement={"AvailabilityZone": "us-east-1a"})["Instances"]
    ids = [i["InstanceId"] for i in inst]
    for iid in ids:
        for dev in ("/dev/sdf", "/dev/sdg"):
            ec2.attach_volume(VolumeId=volume(ec2), InstanceId=iid, Device=dev)
    clients = [client(endpoint, "ec2") for _ in ids]
    for k, iid in enumerate(ids):
        clients[k].describe_instances(InstanceIds=[iid])
    return ids, clients


def _create_snapshots_at_once(ids, clients):
    """(wall seconds, per-call seconds) of one CreateSnapshots per instance, all sent together."""
    go = threading.Barrier(len(ids) + 1)

    def call(k):
        go.wait()
        t = time.monotonic()
        out = clients[k].create_snapshots(InstanceSpecification={"InstanceId": ids[k], "ExcludeBootVolume": True})
        assert len(out["Snapshots"]) == 2
        return time.monotonic() - t

    with ThreadPoolExecutor(len(ids)) as pool:
        futures = [pool.submit(call, k) for k in range(len(ids))]
        go.wait()
        t0 = time.monotonic()
        took = [f.result() for f in futures]
        return time.monotonic() - t0, took


def test_latency_lets_concurrent_calls_overlap(endpoint, ec2, c):
    ids, clients = _instances_for_create_snapshots(endpoint, ec2, 30)
    wall0, _ = _create_snapshots_at_once(ids, clients)
    c("POST", "/_emulator/latency", {"CreateSnapshots": {"fixed_ms": 1000}})
    wall1, took = _create_snapshots_at_once(ids, clients)
    print(f"30 concurrent CreateSnapshots (2 volumes each): {wall0 * 1000:.0f} ms without latency, "
          f"{wall1 * 1000:.0f} ms at 1000 ms")
    assert min(took) >= 1.0, "every call waited its latency"
    assert wall1 < 3.0, f"30 calls at 1 s took {wall1:.1f} s: they did not overlap"
    log = c("GET", "/_emulator/requests?action=CreateSnapshots")["requests"]
    assert [r["latency_ms"] for r in log] == [0] * 30 + [1000] * 30
    assert all(r["status"] == 200 and r["duration_ms"] >= 1000 for r in log[30:])
    assert len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]) == 120


def test_latency_is_per_action(ec2, c):
    c("POST", "/_emulator/latency", {"CreateSnapshot": {"fixed_ms": 600}})
    vol = volume(ec2)
    t0 = time.monotonic()
    ec2.describe_volumes(VolumeIds=[vol])
    ec2.describe_snapshots(OwnerIds=["self"])
    assert time.monotonic() - t0 < 0.5, "other actions are not slowed"
    t0 = time.monotonic()
    ec2.create_snapshot(VolumeId=vol)
    assert time.monotonic() - t0 >= 0.6
    # "*" is the default for actions without a model of their own; null removes a model
    c("POST", "/_emulator/latency", {"*": {"fixed_ms": 300}, "CreateSnapshot": None})
    assert c("GET", "/_emulator/latency")["*"] == {"fixed_ms": 300.0, "jitter_ms": 0.0, "apply": "before"}
    assert "CreateSnapshot" not in c("GET", "/_emulator/latency")
    t0 = time.monotonic()
    ec2.describe_volumes(VolumeIds=[vol])
    assert time.monotonic() - t0 >= 0.3
    # control calls and answers made by fault rules are not delayed
    c("POST", "/_emulator/faults", {"action": "DescribeVolumes", "status": 500, "times": 1})
    t0 = time.monotonic()
    with pytest.raises(ClientError):
        ec2.describe_volumes()
    c("GET", "/_emulator/health")
    assert time.monotonic() - t0 < 0.3
    log = c("GET", "/_emulator/requests")["requests"]
    assert [(r["action"], r["latency_ms"]) for r in log] == [
        ("CreateVolume", 0), ("DescribeVolumes", 0), ("DescribeSnapshots", 0), ("CreateSnapshot", 600),
        ("DescribeVolumes", 300), ("DescribeVolumes", 0)]
    c("DELETE", "/_emulator/latency")
    assert c("GET", "/_emulator/latency") == {"seed": None, "calls": {}}


def test_latency_jitter_is_deterministic_with_a_seed(ec2, c):
    def draws():
        c("POST", "/_emulator/latency", {"DescribeVolumes": {"fixed_ms": 20, "jitter_ms": 100}, "seed": 7})
        c("DELETE", "/_emulator/requests")
        with ThreadPoolExecutor(4) as pool:  # interleaving does not change which call gets which draw
            list(pool.map(lambda _: ec2.describe_volumes(), range(8)))
        return sorted(r["latency_ms"] for r in c("GET", "/_emulator/requests")["requests"])

    first = draws()
    assert first == draws()
    assert all(20 <= ms < 120 for ms in first) and len(set(first)) > 4
    assert c("GET", "/_emulator/latency")["calls"] == {"DescribeVolumes": 8}
    c("POST", "/_emulator/latency", {"DescribeVolumes": {"fixed_ms": 20, "jitter_ms": 100}, "seed": 8})
    c("DELETE", "/_emulator/requests")
    for _ in range(8):
        ec2.describe_volumes()
    assert sorted(r["latency_ms"] for r in c("GET", "/_emulator/requests")["requests"]) != first


def test_latency_after_makes_the_change_first(ec2, c):
    vol = volume(ec2)
    c("POST", "/_emulator/latency", {"CreateSnapshot": {"fixed_ms": 1000, "apply": "after"}})
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        answer = pool.submit(ec2.create_snapshot, VolumeId=vol)
        time.sleep(0.4)
        seen = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        assert not answer.done() and len(seen) == 1, "the snapshot exists while its answer is still on the way"
        assert answer.result()["SnapshotId"] == seen[0]["SnapshotId"]
        assert time.monotonic() - t0 >= 1.0


def test_latency_control_errors(endpoint):
    for body in ({"CreateSnapshots": {"fixed_ms": -1}}, {"CreateSnapshots": {"bogus": 1}},
                 {"CreateSnapshots": {"apply": "during"}}, {"CreateSnapshots": 5}, {"seed": "x"}):
        with pytest.raises(urllib.error.HTTPError) as e:
            ctl(endpoint, "POST", "/_emulator/latency", body)
        assert e.value.code == 400, body


def test_tags_read_per_resource(ec2):
    """Each resource's own tags come from a direct look-up (emulator.py); filters with wildcards still scan."""
    vols = [ec2.create_volume(Size=1, AvailabilityZone="us-east-1a", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "n", "Value": str(i)}, {"Key": "k", "Value": "v"}]}])["VolumeId"]
        for i in range(5)]
    seen = {v["VolumeId"]: {t["Key"]: t["Value"] for t in v["Tags"]} for v in ec2.describe_volumes()["Volumes"]}
    assert seen == {v: {"n": str(i), "k": "v"} for i, v in enumerate(vols)}
    snap = ec2.create_snapshot(VolumeId=vols[2], TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": "s", "Value": "1"}]}])
    assert snap["Tags"] == [{"Key": "s", "Value": "1"}]
    one = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [vols[0]]}])["Tags"]
    assert sorted((t["Key"], t["Value"], t["ResourceType"]) for t in one) == [("k", "v", "volume"), ("n", "0", "volume")]
    assert len(ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": ["vol-*"]}])["Tags"]) == 10
    assert len(ec2.describe_tags(Filters=[{"Name": "key", "Values": ["n"]}])["Tags"]) == 5

"""EC2 snapshot extensions on top of moto: pending state with progress, error endings, block maps,
snapshot limits, and the EBS direct List* APIs for snapshots made through EC2.

moto's Snapshot is patched in place (class attributes), so every code path that creates snapshots
(CreateSnapshot, CreateSnapshots, EBS StartSnapshot, CreateImage) gets the same behaviour.
"""

import base64
import bisect
import binascii
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from moto.ebs.models import ebs_backends
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models import elastic_block_store as ebs_models
from moto.ec2.responses.elastic_block_store import ElasticBlockStore

BLOCK_SIZE = 524288
BLOCKS_PER_GIB = (1 << 30) // BLOCK_SIZE

# EC2 request buckets from "Request throttling for the Amazon EC2 API" (burst, refill per second),
# plus the EBS direct List* quotas (50 requests/s).
DEFAULT_BUCKETS = {
    "CreateSnapshot": (100, 5),
    "CreateSnapshots": (100, 5),
    "DeleteSnapshot": (100, 5),
    "CreateTags": (100, 10),
    "DeleteTags": (100, 10),
    "CreateVolume": (100, 5),
    "DeleteVolume": (100, 5),
    "DescribeSnapshots": (100, 20),
    "DescribeVolumes": (100, 20),
    "DescribeInstances": (100, 20),
    "ListSnapshotBlocks": (50, 50),
    "ListChangedBlocks": (50, 50),
}
DEFAULT_LIMITS = {
    "enabled": False,
    "snapshot_interval_seconds": 15.0,
    "max_pending_per_volume": 5,
    "max_pending_per_region": 100,
}


class BlockMap:
    """Written blocks of a volume: indexes [0, base_count) hold base_token, `over` overrides single
    indexes (None = not written). Compact for 'N full blocks plus a few changes'."""

    def __init__(self, base_count: int = 0, base_token: str = "", over: dict | None = None):
        self.base_count = base_count
        self.base_token = base_token
        self.over: dict[int, str | None] = dict(over or {})
        self._keys: list[int] | None = None

    def copy(self) -> "BlockMap":
        return BlockMap(self.base_count, self.base_token, self.over)

    def token(self, idx: int) -> str | None:
        if idx in self.over:
            return self.over[idx]
        return self.base_token if idx < self.base_count else None

    def keys(self) -> list[int]:
        # Only called on frozen (captured) maps, so caching is safe.
        if self._keys is None:
            self._keys = sorted(self.over)
        return self._keys

    def count(self) -> int:
        n = self.base_count
        for idx, tok in self.over.items():
            in_base = idx < self.base_count
            n += (tok is not None) - in_base
        return n

    def _candidates(self, start: int, ranges: list[tuple[int, int]], keys: list[int]) -> Iterator[int]:
        """Ascending union of the index ranges and the sorted keys, from start on."""
        ki = bisect.bisect_left(keys, start)
        for lo, hi in ranges:
            for i in range(max(lo, start), hi):
                while ki < len(keys) and keys[ki] < i:
                    yield keys[ki]
                    ki += 1
                if ki < len(keys) and keys[ki] == i:
                    ki += 1
                yield i
            start = max(start, hi)
        while ki < len(keys):
            yield keys[ki]
            ki += 1

    def blocks(self, start: int) -> Iterator[tuple[int, str]]:
        for i in self._candidates(start, [(0, self.base_count)], self.keys()):
            tok = self.token(i)
            if tok is not None:
                yield i, tok

    def changed(self, other: "BlockMap", start: int) -> Iterator[tuple[int, str | None, str | None]]:
        """Blocks that differ between self (first) and other (second), AWS ListChangedBlocks style."""
        if self.base_token == other.base_token:
            lo, hi = sorted((self.base_count, other.base_count))
            ranges = [(lo, hi)]
        else:
            ranges = [(0, max(self.base_count, other.base_count))]
        keys = sorted(set(self.keys()) | set(other.keys()))
        for i in self._candidates(start, ranges, keys):
            a, b = self.token(i), other.token(i)
            if a != b:
                yield i, a, b


class SnapshotExt:
    """Our extra state for one moto Snapshot."""

    def __init__(self, snap_id: str, volume_id: str, region: str, volume_size: int,
                 pending_s: float, end_state: str, blocks: BlockMap):
        self.snap_id = snap_id
        self.volume_id = volume_id
        self.region = region
        self.volume_size = volume_size
        self.created = time.monotonic()
        self.pending_s = pending_s
        self.end_state = end_state
        self.blocks = blocks

    def state(self) -> str:
        return "pending" if self.elapsed() < self.pending_s else self.end_state

    def elapsed(self) -> float:
        return time.monotonic() - self.created

    def progress(self) -> str:
        state = self.state()
        if state == "completed":
            return "100%"
        if self.pending_s <= 0:
            return "0%"
        return f"{min(99, int(min(self.elapsed(), self.pending_s) / self.pending_s * 100))}%"


class Snapshots:
    """All snapshot-related extension state. Guarded by one lock; moto calls arrive on server threads."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.pending_seconds = 0.0
            self.volume_cfg: dict[str, dict] = {}
            self.volume_blocks: dict[str, BlockMap] = {}
            self.index: dict[str, tuple[Any, SnapshotExt]] = {}  # snap id -> (moto Snapshot, ext)
            self.last_created: dict[str, float] = {}  # volume id -> monotonic time of last snapshot
            self.ghosts: list[tuple[str, str, float]] = []  # deleted while pending: (vol, region, deadline)
            self.limits = dict(DEFAULT_LIMITS)
            self.buckets = {k: {"burst": b, "refill_per_second": r} for k, (b, r) in DEFAULT_BUCKETS.items()}
            self.bucket_state: dict[str, tuple[float, float]] = {}
            self.token_seq = 0

    # ---- fixtures --------------------------------------------------------------------------

    def fresh_token(self) -> str:
        self.token_seq += 1
        return f"d{self.token_seq}"

    def volume_map(self, volume: Any) -> BlockMap:
        """The volume's current block map; by default every block of the volume is written."""
        m = self.volume_blocks.get(volume.id)
        if m is None:
            m = BlockMap(volume.size * BLOCKS_PER_GIB, self.fresh_token())
            self.volume_blocks[volume.id] = m
        return m

    def update_blocks(self, volume: Any, body: dict) -> BlockMap:
        max_blocks = volume.size * BLOCKS_PER_GIB

        def check(idx: Any) -> int:
            if not isinstance(idx, int) or not 0 <= idx < max_blocks:
                raise ValueError(f"block index {idx!r} outside volume of {volume.size} GiB ({max_blocks} blocks)")
            return idx

        with self.lock:
            m = self.volume_map(volume)
            if "count" in body:
                m = BlockMap(check(body["count"] - 1) + 1 if body["count"] else 0, self.fresh_token())
            if "blocks" in body:
                m = BlockMap()
                for item in body["blocks"]:
                    idx, tok = (item, self.fresh_token()) if isinstance(item, int) else (item[0], str(item[1]))
                    m.over[check(idx)] = tok
            m = m.copy()
            for idx in body.get("write", []):
                m.over[check(idx)] = self.fresh_token()
            if "write_range" in body:
                lo, hi = body["write_range"]
                tok = self.fresh_token()
                for idx in range(check(lo), check(hi - 1) + 1):
                    m.over[idx] = tok
            for idx in body.get("trim", []):
                m.over[check(idx)] = None
            self.volume_blocks[volume.id] = m
            return m

    def set_snapshot(self, snap_id: str, body: dict) -> dict:
        with self.lock:
            _, ext = self.index[snap_id]
            if "state" in body:
                if body["state"] not in ("completed", "error"):
                    raise ValueError("state must be completed or error")
                ext.end_state = body["state"]
                ext.pending_s = 0
            if "pending_seconds" in body:
                ext.pending_s = ext.elapsed() + float(body["pending_seconds"])
            return {"snapshot_id": snap_id, "state": ext.state(), "progress": ext.progress()}

    # ---- limits ----------------------------------------------------------------------------

    def take_token(self, action: str) -> bool:
        """False when the action's bucket is empty (limits on and a bucket configured)."""
        with self.lock:
            cfg = self.buckets.get(action)
            if not self.limits["enabled"] or not cfg:
                return True
            now = time.monotonic()
            tokens, last = self.bucket_state.get(action, (float(cfg["burst"]), now))
            tokens = min(float(cfg["burst"]), tokens + (now - last) * float(cfg["refill_per_second"]))
            ok = tokens >= 1
            self.bucket_state[action] = (tokens - 1 if ok else tokens, now)
            return ok

    def _pending(self, pred: Any) -> int:
        now = time.monotonic()
        self.ghosts = [g for g in self.ghosts if g[2] > now]
        live = sum(1 for snap, ext in self._live() if ext.state() == "pending" and pred(ext.volume_id, ext.region))
        return live + sum(1 for vol, region, _ in self.ghosts if pred(vol, region))

    def _live(self) -> Iterator[tuple[Any, SnapshotExt]]:
        for snap, ext in list(self.index.values()):
            if snap.ec2_backend.snapshots.get(ext.snap_id) is snap:
                yield snap, ext

    def check_limits(self, region: str, volume_ids: list[str]) -> None:
        if not self.limits["enabled"]:
            return
        now = time.monotonic()
        interval = float(self.limits["snapshot_interval_seconds"])
        for vol in volume_ids:
            last = self.last_created.get(vol)
            if last is not None and now - last < interval:
                raise EC2ClientError(
                    "SnapshotCreationPerVolumeRateExceeded",
                    "The maximum per volume CreateSnapshot request rate has been exceeded. "
                    "Use an increasing or variable sleep interval between requests.",
                )
        for vol in volume_ids:
            if self._pending(lambda v, r: v == vol) >= int(self.limits["max_pending_per_volume"]):
                raise EC2ClientError(
                    "ConcurrentSnapshotLimitExceeded",
                    f"Maximum number of in-progress snapshots for volume {vol} exceeded.",
                )
        if self._pending(lambda v, r: r == region) + len(volume_ids) > int(self.limits["max_pending_per_region"]):
            raise EC2ClientError(
                "PendingSnapshotLimitExceeded",
                "The maximum number of pending snapshots has been reached for this account and region.",
            )

    # ---- snapshot lifecycle ----------------------------------------------------------------

    def register(self, snap: Any, volume: Any) -> SnapshotExt:
        cfg = self.volume_cfg.get(volume.id, {})
        pending = cfg.get("pending_seconds")
        ext = SnapshotExt(
            snap.id, volume.id, snap.ec2_backend.region_name, volume.size,
            float(self.pending_seconds if pending is None else pending),
            cfg.get("end_state") or "completed",
            self.volume_map(volume).copy(),
        )
        snap._emu = ext
        self.index[snap.id] = (snap, ext)
        self.last_created[volume.id] = time.monotonic()
        return ext

    def forget(self, snap: Any) -> None:
        ext = getattr(snap, "_emu", None)
        if ext and ext.state() == "pending":
            # AWS finishes a deleted pending snapshot in the background; it still counts for limits.
            self.ghosts.append((ext.volume_id, ext.region, ext.created + ext.pending_s))
        self.index.pop(snap.id, None)

    def find_snapshot(self, snap_id: str) -> SnapshotExt | None:
        with self.lock:
            entry = self.index.get(snap_id)
            if entry and entry[0].ec2_backend.snapshots.get(snap_id) is entry[0]:
                return entry[1]
            return None


STATE = Snapshots()


def find_volume(volume_id: str) -> Any | None:
    for account in list(ec2_backends.values()):
        for backend in list(account.values()):
            vol = backend.volumes.get(volume_id)
            if vol is not None:
                return vol
    return None


def ebs_direct_snapshot(snap_id: str) -> bool:
    """True when moto's own EBS backend made this snapshot (StartSnapshot); those pass through to moto."""
    for account in list(ebs_backends.values()):
        for backend in list(account.values()):
            if snap_id in backend.snapshots:
                return True
    return False


# ---- moto patches ------------------------------------------------------------------------------

_orig_create_snapshot = ebs_models.EBSBackend.create_snapshot
_orig_delete_snapshot = ebs_models.EBSBackend.delete_snapshot


def _status_get(self: Any) -> str:
    ext = getattr(self, "_emu", None)
    return ext.state() if ext else self.__dict__.get("_status", "completed")


def _status_set(self: Any, value: str) -> None:
    self.__dict__["_status"] = value


def _full_size(self: Any) -> int | None:
    ext = getattr(self, "_emu", None)
    if ext is None:
        return self.volume.size << 30
    return ext.blocks.count() * BLOCK_SIZE if ext.state() == "completed" else None


def _create_snapshot(self: Any, volume_id: str, description: str, owner_id: str | None = None,
                     from_ami: str | None = None) -> Any:
    volume = self.get_volume(volume_id)
    with STATE.lock:
        STATE.check_limits(self.region_name, [volume_id])
        snap = _orig_create_snapshot(self, volume_id, description, owner_id=owner_id, from_ami=from_ami)
        STATE.register(snap, volume)
    return snap


def _create_snapshots(self: Any, instance_spec: dict, description: str, tags: dict,
                      copy_tags_from_source: str | None = None) -> list:
    instance = self.get_instance(instance_spec["InstanceId"])
    exclude_boot = str(instance_spec.get("ExcludeBootVolume", False)).lower() == "true"
    exclude = set(instance_spec.get("ExcludeDataVolumeIds") or [])
    volume_ids = []
    for device, mapping in instance.get_block_device_mapping:
        is_root = device == instance.root_device_name
        if is_root and mapping.volume_id in exclude:
            raise EC2ClientError(
                "InvalidParameterValue",
                "The root volume cannot be excluded with ExcludeDataVolumeIds; use ExcludeBootVolume.",
            )
        if (is_root and exclude_boot) or mapping.volume_id in exclude:
            continue
        volume_ids.append(mapping.volume_id)
    with STATE.lock:
        STATE.check_limits(self.region_name, volume_ids)
        snaps = []
        for vol_id in volume_ids:
            volume = self.get_volume(vol_id)
            snap = _orig_create_snapshot(self, vol_id, description)
            snap.add_tags(tags)
            if copy_tags_from_source == "volume":
                snap.add_tags({t["key"]: t["value"] for t in volume.get_tags()})
            STATE.register(snap, volume)
            snaps.append(snap)
        # One request = one set: same StartTime, and if one snapshot fails the whole set fails.
        if snaps:
            start = snaps[0].start_time
            failed = any(s._emu.end_state == "error" for s in snaps)
            for s in snaps:
                s.start_time = start
                if failed:
                    s._emu.end_state = "error"
    return snaps


def _create_snapshots_response(self: Any) -> Any:
    from moto.core.responses import ActionResult

    instance_spec = self._get_param("InstanceSpecification", {})
    description = self._get_param("Description", "")
    tags = self._parse_tag_specification().get("snapshot", {})
    self.error_on_dryrun()
    snaps = self.ec2_backend.create_snapshots(
        instance_spec, description, tags, copy_tags_from_source=self._get_param("CopyTagsFromSource")
    )
    return ActionResult({"Snapshots": snaps})


def _delete_snapshot(self: Any, snapshot_id: str) -> Any:
    with STATE.lock:
        snap = _orig_delete_snapshot(self, snapshot_id)
        STATE.forget(snap)
    return snap


def install() -> None:
    cls = ebs_models.Snapshot
    cls.status = property(_status_get, _status_set)
    # CreateSnapshots' SnapshotInfo serialises `State` from `state`; stock moto has none.
    cls.state = property(lambda self: self.status)
    cls.progress = property(lambda self: self._emu.progress() if getattr(self, "_emu", None) else "100%")
    cls.full_snapshot_size_in_bytes = property(_full_size)
    ebs_models.EBSBackend.create_snapshot = _create_snapshot
    ebs_models.EBSBackend.create_snapshots = _create_snapshots
    ebs_models.EBSBackend.delete_snapshot = _delete_snapshot
    ElasticBlockStore.create_snapshots = _create_snapshots_response


# ---- EBS direct APIs ---------------------------------------------------------------------------


class EbsError(Exception):
    def __init__(self, status: int, code: str, message: str, reason: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.reason = status, code, message, reason


def _snapshot_for_read(snap_id: str) -> SnapshotExt:
    ext = STATE.find_snapshot(snap_id)
    if ext is None:
        raise EbsError(404, "ResourceNotFoundException", f"The snapshot '{snap_id}' does not exist.",
                       "SNAPSHOT_NOT_FOUND")
    if ext.state() != "completed":
        raise EbsError(400, "ValidationException",
                       f"The snapshot '{snap_id}' is in state {ext.state()}; only completed snapshots can be read.",
                       "INVALID_SNAPSHOT_ID")
    return ext


def _page_args(query: dict, key: str) -> tuple[int, int]:
    """(start index, max results) from maxResults/pageToken/startingBlockIndex."""
    try:
        max_results = int(query.get("maxResults", 10000))
        start = int(query.get("startingBlockIndex", 0))
    except ValueError:
        raise EbsError(400, "ValidationException", "maxResults and startingBlockIndex must be integers",
                       "INVALID_PARAMETER_VALUE")
    if max_results > 10000 or start < 0:
        raise EbsError(400, "ValidationException", "maxResults must be 100-10000, startingBlockIndex >= 0",
                       "INVALID_PARAMETER_VALUE")
    max_results = max(max_results, 100)  # AWS returns at least 100 when asked for fewer
    token = query.get("pageToken")
    if token:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            if data["k"] != key:
                raise ValueError(token)
            start = int(data["i"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise EbsError(400, "ValidationException", "The pagination token is invalid.", "INVALID_PAGE_TOKEN")
    return start, max_results


def _next_token(key: str, index: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": key, "i": index}).encode()).decode()


def _block_token(snap_id: str, idx: int, tok: str | None) -> str | None:
    return None if tok is None else f"{snap_id}.{idx}.{tok}"


def _expiry() -> float:
    return (datetime.now(timezone.utc) + timedelta(days=7)).timestamp()


def list_snapshot_blocks(snap_id: str, query: dict) -> dict:
    ext = _snapshot_for_read(snap_id)
    start, max_results = _page_args(query, snap_id)
    blocks, next_token = [], None
    for idx, tok in ext.blocks.blocks(start):
        if len(blocks) == max_results:
            next_token = _next_token(snap_id, idx)
            break
        blocks.append({"BlockIndex": idx, "BlockToken": _block_token(snap_id, idx, tok)})
    out = {"Blocks": blocks, "ExpiryTime": _expiry(), "VolumeSize": ext.volume_size, "BlockSize": BLOCK_SIZE}
    if next_token:
        out["NextToken"] = next_token
    return out


def list_changed_blocks(second_id: str, query: dict) -> dict:
    first_id = query.get("firstSnapshotId")
    second = _snapshot_for_read(second_id)
    if first_id:
        first = _snapshot_for_read(first_id)
        if first.volume_id != second.volume_id:
            raise EbsError(400, "ValidationException",
                           f"The snapshots {first_id} and {second_id} are not from the same volume.",
                           "UNRELATED_SNAPSHOTS")
        first_map = first.blocks
    else:
        first_map = BlockMap()  # no base snapshot: every written block of the second one counts
    key = f"{first_id}/{second_id}"
    start, max_results = _page_args(query, key)
    changed, next_token = [], None
    for idx, a, b in first_map.changed(second.blocks, start):
        if len(changed) == max_results:
            next_token = _next_token(key, idx)
            break
        item = {"BlockIndex": idx}
        if a is not None:
            item["FirstBlockToken"] = _block_token(first_id, idx, a)
        if b is not None:
            item["SecondBlockToken"] = _block_token(second_id, idx, b)
        changed.append(item)
    out = {"ChangedBlocks": changed, "ExpiryTime": _expiry(), "VolumeSize": second.volume_size,
           "BlockSize": BLOCK_SIZE}
    if next_token:
        out["NextToken"] = next_token
    return out

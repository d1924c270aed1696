package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
)

// Regions: a sorted list covering the whole keyspace ("" to ""), one peer each (max-replicas = 1), as the
// real harness ends up after PD's balancing. The placeholder store leads the first region at bootstrap and
// always keeps the last one (the one ending at ""); every store registered through POST /clusters gets one
// region carved from the left of that last region.

type peer struct {
	ID      uint64 `json:"id"`
	StoreID uint64 `json:"store_id"`
}

// region is one region as PD knows it. Keys are the encoded keys PD stores (shown upper-case hex over HTTP).
type region struct {
	ID       uint64 `json:"id"`
	StartKey []byte `json:"start_key"`
	EndKey   []byte `json:"end_key"`
	ConfVer  uint64 `json:"conf_ver"`
	Version  uint64 `json:"version"`
	Peers    []peer `json:"peers"`
	Leader   peer   `json:"leader"`
}

func (r *region) meta() *metapb.Region {
	m := &metapb.Region{Id: r.ID, StartKey: r.StartKey, EndKey: r.EndKey,
		RegionEpoch: &metapb.RegionEpoch{ConfVer: r.ConfVer, Version: r.Version}}
	for _, p := range r.Peers {
		m.Peers = append(m.Peers, &metapb.Peer{Id: p.ID, StoreId: p.StoreID})
	}
	return m
}

func (e *emulator) regionByID(id uint64) *region {
	for _, r := range e.Regions {
		if r.ID == id {
			return r
		}
	}
	return nil
}

func (e *emulator) sortRegions() {
	sort.Slice(e.Regions, func(i, j int) bool { return bytes.Compare(e.Regions[i].StartKey, e.Regions[j].StartKey) < 0 })
}

// leaderCount and regionCount are what PD's /stores reports as leader_count and region_count.
func (e *emulator) leaderCount(storeID uint64) int {
	n := 0
	for _, r := range e.Regions {
		if r.Leader.StoreID == storeID {
			n++
		}
	}
	return n
}

func (e *emulator) regionCount(storeID uint64) int {
	n := 0
	for _, r := range e.Regions {
		for _, p := range r.Peers {
			if p.StoreID == storeID {
				n++
				break
			}
		}
	}
	return n
}

// firstRegion is the bootstrap region: the whole keyspace on the placeholder store.
func (e *emulator) firstRegion(regionID, peerID uint64) {
	p := peer{ID: peerID, StoreID: e.PlaceholderID}
	e.Regions = []*region{{ID: regionID, ConfVer: 1, Version: 1, Peers: []peer{p}, Leader: p}}
}

// giveRegions carves a region for every registered store that leads none, from the left of the last region.
// It does nothing while the placeholder (the last region's leader) is prepared for a snapshot backup: TiKV
// would refuse the split, as PD's balancing would be refused in a real cluster; the next call after the
// lease ends hands the regions out. Callers hold e.mu.
func (e *emulator) giveRegions(now time.Time) bool {
	e.lapseLeases(now)
	if len(e.Regions) == 0 || e.isPrepared(e.PlaceholderID) {
		return false
	}
	changed := false
	for _, s := range e.Stores {
		if s.ID == e.PlaceholderID || e.leaderCount(s.ID) > 0 {
			continue
		}
		last := e.Regions[len(e.Regions)-1]
		key := tableKey(s.ID)
		if bytes.Compare(key, last.StartKey) <= 0 {
			key = midKey(last.StartKey, nil)
		}
		left := e.splitRegion(last, key)
		left.Peers[0].StoreID = s.ID // the placeholder's new peer, moved: PD's balancing, done at once
		left.Leader = left.Peers[0]
		changed = true
		logf("store %d leads region %d [%X, %X)", s.ID, left.ID, left.StartKey, left.EndKey)
	}
	return changed
}

// splitRegion splits r at key the way TiKV does by default (right-derive): r keeps [key, end) and a new
// region [start, key) with new peers on the same stores is returned; both versions go up by one.
// Callers hold e.mu and have checked start < key < end.
func (e *emulator) splitRegion(r *region, key []byte) *region {
	left := &region{ID: e.allocID(), StartKey: r.StartKey, EndKey: bytes.Clone(key), ConfVer: r.ConfVer, Version: r.Version + 1}
	for _, p := range r.Peers {
		np := peer{ID: e.allocID(), StoreID: p.StoreID}
		left.Peers = append(left.Peers, np)
		if p == r.Leader {
			left.Leader = np
		}
	}
	r.StartKey = bytes.Clone(key)
	r.Version++
	e.Regions = append(e.Regions, left)
	e.sortRegions()
	return left
}

// inside reports whether start < key < end, with an empty end meaning the end of the keyspace.
func inside(key, start, end []byte) bool {
	return bytes.Compare(key, start) > 0 && (len(end) == 0 || bytes.Compare(key, end) < 0)
}

// tableKey is the encoded key of TiDB table prefix t<id> (memcomparable bytes encoding of "t" + the
// sign-flipped big-endian id), so region boundaries look like a TiDB cluster's: 7480000000000000FF04...F8.
func tableKey(id uint64) []byte {
	raw := make([]byte, 9)
	raw[0] = 't'
	binary.BigEndian.PutUint64(raw[1:], id^(1<<63))
	return encodeBytes(raw)
}

// encodeBytes is TiKV's memcomparable encoding: groups of 8 bytes, zero padded, each followed by 0xFF minus
// the pad length.
func encodeBytes(raw []byte) []byte {
	var out []byte
	for i := 0; i <= len(raw); i += 8 {
		group := make([]byte, 8)
		n := copy(group, raw[i:])
		out = append(out, group...)
		out = append(out, byte(0xFF-(8-n)))
	}
	return out
}

// midKey returns a key strictly between start and end (an empty end is the end of the keyspace).
func midKey(start, end []byte) []byte {
	if len(end) == 0 {
		if len(start) == 0 {
			return []byte("t")
		}
		return append(bytes.Clone(start), 0x80)
	}
	n := max(len(start), len(end)) + 1
	pad := func(b []byte) *big.Int {
		return new(big.Int).SetBytes(append(bytes.Clone(b), make([]byte, n-len(b))...))
	}
	m := new(big.Int).Add(pad(start), pad(end))
	m.Rsh(m, 1)
	return m.FillBytes(make([]byte, n))
}

func hexKey(k []byte) string { return strings.ToUpper(hex.EncodeToString(k)) }

// regionJSON renders one region the way PD v8.5.5 does (response.RegionInfo, written by easyjson in field
// order, role_name first in peers). fake-tikv reports approximate size and keys 1 and no traffic.
func regionJSON(r *region) any {
	type metaPeer struct {
		RoleName string `json:"role_name"`
		ID       uint64 `json:"id"`
		StoreID  uint64 `json:"store_id"`
	}
	type epoch struct {
		ConfVer uint64 `json:"conf_ver,omitempty"`
		Version uint64 `json:"version,omitempty"`
	}
	peers := make([]metaPeer, 0, len(r.Peers))
	for _, p := range r.Peers {
		peers = append(peers, metaPeer{"Voter", p.ID, p.StoreID})
	}
	return struct {
		ID                uint64     `json:"id"`
		StartKey          string     `json:"start_key"`
		EndKey            string     `json:"end_key"`
		Epoch             epoch      `json:"epoch"`
		Peers             []metaPeer `json:"peers,omitempty"`
		Leader            metaPeer   `json:"leader"`
		CPUUsage          uint64     `json:"cpu_usage"`
		WrittenBytes      uint64     `json:"written_bytes"`
		ReadBytes         uint64     `json:"read_bytes"`
		WrittenKeys       uint64     `json:"written_keys"`
		ReadKeys          uint64     `json:"read_keys"`
		ApproximateSize   int64      `json:"approximate_size"`
		ApproximateKeys   int64      `json:"approximate_keys"`
		ApproximateKvSize int64      `json:"approximate_kv_size"`
	}{ID: r.ID, StartKey: hexKey(r.StartKey), EndKey: hexKey(r.EndKey), Epoch: epoch{r.ConfVer, r.Version},
		Peers: peers, Leader: metaPeer{"Voter", r.Leader.ID, r.Leader.StoreID}, ApproximateSize: 1, ApproximateKeys: 1}
}

// regionsBody is GET /pd/api/v1/regions: compact JSON without a trailing newline (PD writes it with
// easyjson and sends it as application/octet-stream).
func (e *emulator) regionsBody() ([]byte, error) {
	list := make([]any, 0, len(e.Regions))
	for _, r := range e.Regions {
		list = append(list, regionJSON(r))
	}
	return json.Marshal(struct {
		Count   int   `json:"count"`
		Regions []any `json:"regions"`
	}{len(list), list})
}

// checkRegions verifies the invariants the rest of the emulator relies on: sorted, contiguous, covering
// "" to "". Used by tests and after loading persisted state.
func (e *emulator) checkRegions() error {
	var prev []byte
	for i, r := range e.Regions {
		if !bytes.Equal(r.StartKey, prev) {
			return fmt.Errorf("region %d starts at %X, want %X", r.ID, r.StartKey, prev)
		}
		if i < len(e.Regions)-1 && len(r.EndKey) == 0 {
			return fmt.Errorf("region %d ends at \"\" but is not the last", r.ID)
		}
		prev = r.EndKey
	}
	if len(e.Regions) > 0 && len(prev) != 0 {
		return fmt.Errorf("last region ends at %X, want \"\"", prev)
	}
	return nil
}

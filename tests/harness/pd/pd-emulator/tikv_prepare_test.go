package main

// Tests of the regions model and the TiKV side of snapshot-backup preparation, through a real gRPC client
// (kvproto's brpb) dialling the emulator with a store address as :authority, and the control API.

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

type tikvEnv struct {
	*testEnv
	ctl    string
	stores []storeJSON // basic-tikv-0..2 in namespace t
}

func newTiKVEnv(t *testing.T) *tikvEnv {
	te := newTestEnv(t)
	ctl := httptest.NewServer(te.e.controlHandler())
	t.Cleanup(ctl.Close)
	env := &tikvEnv{testEnv: te, ctl: ctl.URL}
	var c clusterJSON
	env.control("POST", "/clusters", `{"name":"basic","namespace":"t","stores":3}`, 200, &c)
	env.stores = c.Stores
	return env
}

func (env *tikvEnv) control(method, path, body string, wantStatus int, v any) string {
	env.t.Helper()
	req, _ := http.NewRequest(method, env.ctl+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		env.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		env.t.Fatalf("%s %s %s: %d %s, want %d", method, path, body, resp.StatusCode, b, wantStatus)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			env.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return string(b)
}

// backupClient dials the emulator's gRPC address with the store address as :authority, as the operator does.
func (env *tikvEnv) backupClient(storeAddr string) brpb.BackupClient {
	env.t.Helper()
	conn, err := grpc.Dial(strings.TrimPrefix(env.url, "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(storeAddr))
	if err != nil {
		env.t.Fatal(err)
	}
	env.t.Cleanup(func() { conn.Close() })
	return brpb.NewBackupClient(conn)
}

type prepStream struct {
	t      *testing.T
	s      brpb.Backup_PrepareSnapshotBackupClient
	cancel context.CancelFunc
	recvs  chan recvResult
}

type recvResult struct {
	resp *brpb.PrepareSnapshotBackupResponse
	err  error
}

func (env *tikvEnv) open(storeAddr string) *prepStream {
	env.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	env.t.Cleanup(cancel)
	s, err := env.backupClient(storeAddr).PrepareSnapshotBackup(ctx)
	if err != nil {
		env.t.Fatal(err)
	}
	ps := &prepStream{t: env.t, s: s, cancel: cancel, recvs: make(chan recvResult, 100)}
	go func() {
		for {
			r, err := s.Recv()
			ps.recvs <- recvResult{r, err}
			if err != nil {
				return
			}
		}
	}()
	return ps
}

func (ps *prepStream) send(req *brpb.PrepareSnapshotBackupRequest) {
	ps.t.Helper()
	if err := ps.s.Send(req); err != nil {
		ps.t.Fatalf("send %v: %v", req.GetTy(), err)
	}
}

func (ps *prepStream) lease(seconds uint64) {
	ps.send(&brpb.PrepareSnapshotBackupRequest{Ty: brpb.PrepareSnapshotBackupRequestType_UpdateLease, LeaseInSeconds: seconds})
}

func (ps *prepStream) waitApply(regions ...*metapb.Region) {
	ps.send(&brpb.PrepareSnapshotBackupRequest{Ty: brpb.PrepareSnapshotBackupRequestType_WaitApply, Regions: regions})
}

func (ps *prepStream) finish() {
	ps.send(&brpb.PrepareSnapshotBackupRequest{Ty: brpb.PrepareSnapshotBackupRequestType_Finish})
}

// next returns the next response or stream error, failing the test after d.
func (ps *prepStream) next(d time.Duration) (*brpb.PrepareSnapshotBackupResponse, error) {
	ps.t.Helper()
	select {
	case r := <-ps.recvs:
		return r.resp, r.err
	case <-time.After(d):
		ps.t.Fatalf("nothing received within %v", d)
		return nil, nil
	}
}

func (ps *prepStream) expectLeaseResult(valid bool) {
	ps.t.Helper()
	r, err := ps.next(2 * time.Second)
	if err != nil || r.GetTy() != brpb.PrepareSnapshotBackupEventType_UpdateLeaseResult || r.GetLastLeaseIsValid() != valid {
		ps.t.Fatalf("got %v %v, want UpdateLeaseResult{last_lease_is_valid: %v}", r, err, valid)
	}
}

// expectNothing checks that no response arrives within d.
func (ps *prepStream) expectNothing(d time.Duration) {
	ps.t.Helper()
	select {
	case r := <-ps.recvs:
		ps.t.Fatalf("got %v %v, want nothing within %v", r.resp, r.err, d)
	case <-time.After(d):
	}
}

func (ps *prepStream) expectEOF() {
	ps.t.Helper()
	if r, err := ps.next(2 * time.Second); !errors.Is(err, io.EOF) {
		ps.t.Fatalf("got %v %v, want the server to end the stream (EOF)", r, err)
	}
}

func (ps *prepStream) expectCode(c codes.Code) {
	ps.t.Helper()
	if r, err := ps.next(2 * time.Second); status.Code(err) != c {
		ps.t.Fatalf("got %v %v, want status %v", r, err, c)
	}
}

// ledBy returns the regions led by a store, with their epochs, from the emulator (as PD reports them).
func (env *tikvEnv) ledBy(storeID uint64) []*metapb.Region {
	env.e.mu.Lock()
	defer env.e.mu.Unlock()
	var out []*metapb.Region
	for _, r := range env.e.Regions {
		if r.Leader.StoreID == storeID {
			out = append(out, r.meta())
		}
	}
	return out
}

type prepareStatus struct {
	Prepared     bool   `json:"prepared"`
	LeaseUntilMS int64  `json:"lease_until_ms"`
	Mode         string `json:"mode"`
	Version      string `json:"version"`
}

func (env *tikvEnv) prepareStatus(id uint64) prepareStatus {
	env.t.Helper()
	var st prepareStatus
	env.control("GET", fmt.Sprintf("/tikv/stores/%d/prepare", id), "", 200, &st)
	return st
}

func (env *tikvEnv) events() []prepareEvent {
	env.t.Helper()
	var ev []prepareEvent
	env.control("GET", "/tikv/prepare-events", "", 200, &ev)
	return ev
}

// eventNames lists "event" or "event:region" of one store's events, in order.
func eventNames(evs []prepareEvent, store uint64) []string {
	var out []string
	for _, ev := range evs {
		if ev.Store != store {
			continue
		}
		if ev.Region != 0 {
			out = append(out, fmt.Sprintf("%s:%d", ev.Event, ev.Region))
		} else {
			out = append(out, ev.Event)
		}
	}
	return out
}

// poll retries f every 20 ms until it returns nil or d passes.
func poll(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPrepareLeaseWaitApplyFinish(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[0]
	regions := env.ledBy(s.ID)
	if len(regions) != 1 {
		t.Fatalf("store %d leads %d regions, want 1", s.ID, len(regions))
	}
	ps := env.open(s.Address)
	ps.lease(30)
	ps.expectLeaseResult(false) // no earlier lease
	if st := env.prepareStatus(s.ID); !st.Prepared || st.Mode != "normal" ||
		st.LeaseUntilMS < time.Now().Add(29*time.Second).UnixMilli() {
		t.Fatalf("after UpdateLease: %+v", st)
	}
	ps.lease(30)
	ps.expectLeaseResult(true) // renewal of a live lease
	ps.waitApply(regions...)
	r, err := ps.next(2 * time.Second)
	if err != nil || r.GetTy() != brpb.PrepareSnapshotBackupEventType_WaitApplyDone || r.GetError() != nil ||
		r.GetRegion().GetId() != regions[0].GetId() {
		t.Fatalf("WaitApply: %v %v", r, err)
	}
	ps.finish()
	ps.expectLeaseResult(true)
	ps.expectEOF()
	if st := env.prepareStatus(s.ID); st.Prepared {
		t.Fatalf("still prepared after Finish: %+v", st)
	}
	id := regions[0].GetId()
	want := []string{"lease", "lease", fmt.Sprintf("wait-apply:%d", id), fmt.Sprintf("wait-apply-done:%d", id), "finish"}
	evs := env.events()
	if got := eventNames(evs, s.ID); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events %v, want %v", got, want)
	}
	last := evs[len(evs)-1]
	if last.Valid == nil || !*last.Valid || last.AtMS < evs[0].AtMS {
		t.Fatalf("finish event %+v", last)
	}
	env.control("DELETE", "/tikv/prepare-events", "", 200, nil)
	if evs := env.events(); len(evs) != 0 {
		t.Fatalf("events not cleared: %v", evs)
	}
	// Without a lease, WaitApply is a client error.
	ps = env.open(s.Address)
	ps.waitApply(regions...)
	ps.expectCode(codes.FailedPrecondition)
}

func TestPrepareLaggingRegion(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[1]
	reg := env.ledBy(s.ID)[0]
	env.control("POST", fmt.Sprintf("/tikv/regions/%d/lag", reg.GetId()), `{"millis":400}`, 200, nil)
	ps := env.open(s.Address)
	ps.lease(30)
	ps.expectLeaseResult(false)
	start := time.Now()
	ps.waitApply(reg)
	ps.expectNothing(250 * time.Millisecond)
	r, err := ps.next(2 * time.Second)
	if err != nil || r.GetRegion().GetId() != reg.GetId() || r.GetError() != nil {
		t.Fatalf("lagged WaitApply: %v %v", r, err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("answered after %v, before its 400 ms lag", took)
	}
	// The lag applied to that WaitApply only.
	start = time.Now()
	ps.waitApply(reg)
	if _, err := ps.next(time.Second); err != nil || time.Since(start) > 200*time.Millisecond {
		t.Fatalf("second WaitApply: %v after %v", err, time.Since(start))
	}
}

func TestPrepareRegionErrors(t *testing.T) {
	env := newTiKVEnv(t)
	s0, s1 := env.stores[0], env.stores[1]
	own, other := env.ledBy(s0.ID)[0], env.ledBy(s1.ID)[0]
	stale := *own
	stale.RegionEpoch = &metapb.RegionEpoch{ConfVer: own.GetRegionEpoch().GetConfVer(), Version: own.GetRegionEpoch().GetVersion() - 1}
	ps := env.open(s0.Address)
	ps.lease(30)
	ps.expectLeaseResult(false)
	ps.waitApply(&stale, other, &metapb.Region{Id: 999999, RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1}})

	r, _ := ps.next(2 * time.Second)
	enm := r.GetError().GetEpochNotMatch()
	if enm == nil || r.GetError().GetMessage() == "" || r.GetRegion().GetId() != own.GetId() ||
		len(enm.GetCurrentRegions()) != 1 || enm.GetCurrentRegions()[0].GetRegionEpoch().GetVersion() != own.GetRegionEpoch().GetVersion() {
		t.Fatalf("stale epoch: %v", r)
	}
	r, _ = ps.next(2 * time.Second)
	nl := r.GetError().GetNotLeader()
	if nl == nil || nl.GetRegionId() != other.GetId() || nl.GetLeader().GetStoreId() != s1.ID {
		t.Fatalf("not leader: %v", r)
	}
	r, _ = ps.next(2 * time.Second)
	if r.GetError().GetRegionNotFound().GetRegionId() != 999999 {
		t.Fatalf("unknown region: %v", r)
	}
	evs := env.events()
	if n := len(evs); n != 7 || evs[n-1].Event != "wait-apply-done" || evs[n-1].Error == "" {
		t.Fatalf("events %+v", evs)
	}
}

func TestPrepareLeaseLapses(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[0]
	ps := env.open(s.Address)
	ps.lease(1)
	ps.expectLeaseResult(false)
	st := env.prepareStatus(s.ID)
	if !st.Prepared {
		t.Fatalf("not prepared: %+v", st)
	}
	poll(t, 3*time.Second, "lease lapses", func() error {
		if env.prepareStatus(s.ID).Prepared {
			return errors.New("still prepared")
		}
		return nil
	})
	if time.Now().UnixMilli() < st.LeaseUntilMS {
		t.Fatal("unprepared before the deadline")
	}
	evs := env.events()
	if got := eventNames(evs, s.ID); strings.Join(got, " ") != "lease lapsed" || evs[1].AtMS != st.LeaseUntilMS {
		t.Fatalf("events %+v, want lease then lapsed at %d", evs, st.LeaseUntilMS)
	}
	ps.lease(1)
	ps.expectLeaseResult(false) // the last lease had lapsed
	ps.finish()
	ps.expectLeaseResult(true) // this one had not
	ps.expectEOF()
}

func TestPrepareStreamClosedWithoutFinish(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[2]
	ps := env.open(s.Address)
	ps.lease(1)
	ps.expectLeaseResult(false)
	ps.cancel() // the client goes away without Finish
	poll(t, time.Second, "stream-closed recorded", func() error {
		if got := eventNames(env.events(), s.ID); strings.Join(got, " ") != "lease stream-closed" {
			return fmt.Errorf("events %v", got)
		}
		return nil
	})
	if !env.prepareStatus(s.ID).Prepared {
		t.Fatal("closing the stream ended the preparation; TiKV keeps it until the lease lapses")
	}
	poll(t, 3*time.Second, "lease lapses", func() error {
		if env.prepareStatus(s.ID).Prepared {
			return errors.New("still prepared")
		}
		return nil
	})
	if got := eventNames(env.events(), s.ID); strings.Join(got, " ") != "lease stream-closed lapsed" {
		t.Fatalf("events %v", got)
	}
	// A new stream sees the lapse.
	ps = env.open(s.Address)
	ps.lease(10)
	ps.expectLeaseResult(false)
	ps.finish()
	ps.expectLeaseResult(true)
	ps.expectEOF()
}

func TestSplitRefusedWhilePrepared(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[0]
	reg := env.ledBy(s.ID)[0]
	ps := env.open(s.Address)
	ps.lease(30)
	ps.expectLeaseResult(false)
	splitPath := fmt.Sprintf("/tikv/regions/%d/split", reg.GetId())
	if b := env.control("POST", splitPath, "", 409, nil); !strings.Contains(b, fmt.Sprintf("store %d is prepared for snapshot backup", s.ID)) {
		t.Fatal(b)
	}
	if got := eventNames(env.events(), s.ID); got[len(got)-1] != fmt.Sprintf("refused-split:%d", reg.GetId()) {
		t.Fatalf("events %v", got)
	}
	ps.finish()
	ps.expectLeaseResult(true)
	ps.expectEOF()

	var split struct {
		Regions []struct {
			ID       uint64 `json:"id"`
			StartKey string `json:"start_key"`
			EndKey   string `json:"end_key"`
			Epoch    struct {
				ConfVer uint64 `json:"conf_ver"`
				Version uint64 `json:"version"`
			} `json:"epoch"`
			Leader struct {
				StoreID uint64 `json:"store_id"`
			} `json:"leader"`
		} `json:"regions"`
	}
	env.control("POST", splitPath, "", 200, &split)
	left, right := split.Regions[0], split.Regions[1]
	v := reg.GetRegionEpoch().GetVersion()
	if right.ID != reg.GetId() || left.ID == reg.GetId() || left.Epoch.Version != v+1 || right.Epoch.Version != v+1 ||
		left.Leader.StoreID != s.ID || right.Leader.StoreID != s.ID || left.EndKey != right.StartKey ||
		left.StartKey != hexKey(reg.GetStartKey()) || right.EndKey != hexKey(reg.GetEndKey()) {
		t.Fatalf("split %+v of %v", split, reg)
	}
	if n := len(env.ledBy(s.ID)); n != 2 {
		t.Fatalf("store leads %d regions after the split, want 2", n)
	}
	checkRegionsAPI(t, env)
	// A split key outside the region, or not hex, is a 400.
	env.control("POST", splitPath, `{"key":"00"}`, 400, nil)
	env.control("POST", splitPath, `{"key":"zz"}`, 400, nil)
}

func TestPrepareUnimplementedAndUnknownStore(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[0]
	env.control("POST", fmt.Sprintf("/tikv/stores/%d/prepare", s.ID), `{"mode":"unimplemented","version":"7.1.0"}`, 200, nil)
	ps := env.open(s.Address)
	ps.expectCode(codes.Unimplemented)
	var st struct {
		Stores []struct {
			Store struct {
				ID      uint64 `json:"id"`
				Version string `json:"version"`
			} `json:"store"`
		} `json:"stores"`
	}
	env.call("GET", "stores", "", 200, &st)
	versions := map[uint64]string{}
	for _, x := range st.Stores {
		versions[x.Store.ID] = x.Store.Version
	}
	if versions[s.ID] != "7.1.0" || versions[env.stores[1].ID] != "8.5.5" {
		t.Fatalf("store versions %v", versions)
	}
	for _, authority := range []string{"nowhere.svc:20160", strings.TrimSuffix(s.Address, ":20160")} {
		ps = env.open(authority)
		ps.expectCode(codes.Unavailable)
	}
	// The placeholder store is a store like any other, picked by its address.
	ps = env.open(placeholderAddress)
	ps.lease(5)
	ps.expectLeaseResult(false)
}

func TestPrepareDropMode(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[1]
	env.control("POST", fmt.Sprintf("/tikv/stores/%d/prepare", s.ID), `{"mode":"drop"}`, 200, nil)
	ps := env.open(s.Address)
	ps.lease(30)
	ps.expectLeaseResult(false)
	ps.expectCode(codes.Unavailable)
	if st := env.prepareStatus(s.ID); !st.Prepared || st.Mode != "drop" {
		t.Fatalf("after drop: %+v", st)
	}
	if got := eventNames(env.events(), s.ID); strings.Join(got, " ") != "lease stream-closed" {
		t.Fatalf("events %v", got)
	}
	// Back to normal: a new stream renews the lease the dropped one left behind.
	env.control("POST", fmt.Sprintf("/tikv/stores/%d/prepare", s.ID), `{"mode":"normal"}`, 200, nil)
	ps = env.open(s.Address)
	ps.lease(30)
	ps.expectLeaseResult(true)
}

func TestPrepareNeverApply(t *testing.T) {
	env := newTiKVEnv(t)
	s := env.stores[0]
	reg := env.ledBy(s.ID)[0]
	env.control("POST", fmt.Sprintf("/tikv/stores/%d/prepare", s.ID), `{"mode":"never-apply"}`, 200, nil)
	ps := env.open(s.Address)
	ps.lease(30)
	ps.expectLeaseResult(false)
	ps.waitApply(reg, &metapb.Region{Id: 999999})
	r, err := ps.next(time.Second) // errors are still answered at once
	if err != nil || r.GetError().GetRegionNotFound() == nil {
		t.Fatalf("%v %v", r, err)
	}
	ps.expectNothing(300 * time.Millisecond)
}

// checkRegionsAPI checks /pd/api/v1/regions: PD's shape and content type, sorted regions covering the
// keyspace with upper-case hex keys, and counts that agree with /stores.
func checkRegionsAPI(t *testing.T, env *tikvEnv) {
	t.Helper()
	resp, err := http.Get(env.url + "/pd/api/v1/regions")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" || bytes.HasSuffix(body, []byte("\n")) {
		t.Fatalf("regions: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if !bytes.HasPrefix(body, []byte(`{"count":`)) || !bytes.Contains(body, []byte(`"peers":[{"role_name":"Voter","id":`)) ||
		!bytes.Contains(body, []byte(`"approximate_size":1,"approximate_keys":1`)) {
		t.Fatalf("regions shape: %s", body)
	}
	var regs struct {
		Count   int `json:"count"`
		Regions []struct {
			ID       uint64 `json:"id"`
			StartKey string `json:"start_key"`
			EndKey   string `json:"end_key"`
			Epoch    struct {
				ConfVer uint64 `json:"conf_ver"`
				Version uint64 `json:"version"`
			} `json:"epoch"`
			Peers []struct {
				RoleName string `json:"role_name"`
				ID       uint64 `json:"id"`
				StoreID  uint64 `json:"store_id"`
			} `json:"peers"`
			Leader struct {
				RoleName string `json:"role_name"`
				ID       uint64 `json:"id"`
				StoreID  uint64 `json:"store_id"`
			} `json:"leader"`
		} `json:"regions"`
	}
	if err := json.Unmarshal(body, &regs); err != nil {
		t.Fatal(err)
	}
	if regs.Count != len(regs.Regions) || regs.Count == 0 {
		t.Fatalf("count %d with %d regions", regs.Count, len(regs.Regions))
	}
	prev := ""
	leaders, peers := map[uint64]int{}, map[uint64]int{}
	for i, r := range regs.Regions {
		if r.StartKey != prev {
			t.Fatalf("region %d starts at %q, want %q (gap or overlap)", r.ID, r.StartKey, prev)
		}
		for _, k := range []string{r.StartKey, r.EndKey} {
			if _, err := hex.DecodeString(k); err != nil || k != strings.ToUpper(k) {
				t.Fatalf("key %q is not upper-case hex", k)
			}
		}
		if i > 0 && r.StartKey <= regs.Regions[i-1].StartKey {
			t.Fatalf("regions not sorted at %d", r.ID)
		}
		if r.EndKey == "" && i != len(regs.Regions)-1 {
			t.Fatalf("region %d ends the keyspace but is not last", r.ID)
		}
		if r.Epoch.ConfVer == 0 || r.Epoch.Version == 0 || len(r.Peers) != 1 || r.Peers[0].ID != r.Leader.ID ||
			r.Leader.StoreID != r.Peers[0].StoreID || r.Leader.RoleName != "Voter" {
			t.Fatalf("region %+v", r)
		}
		leaders[r.Leader.StoreID]++
		peers[r.Peers[0].StoreID]++
		prev = r.EndKey
	}
	if prev != "" {
		t.Fatalf("keyspace not covered: last region ends at %q", prev)
	}
	var st struct {
		Count  int `json:"count"`
		Stores []struct {
			Store struct {
				ID uint64 `json:"id"`
			} `json:"store"`
			Status struct {
				LeaderCount int `json:"leader_count"`
				RegionCount int `json:"region_count"`
			} `json:"status"`
		} `json:"stores"`
	}
	env.call("GET", "stores", "", 200, &st)
	for _, s := range st.Stores {
		if s.Status.LeaderCount != leaders[s.Store.ID] || s.Status.RegionCount != peers[s.Store.ID] {
			t.Fatalf("store %d: /stores says %d leaders %d regions, /regions %d and %d", s.Store.ID,
				s.Status.LeaderCount, s.Status.RegionCount, leaders[s.Store.ID], peers[s.Store.ID])
		}
	}
}

func TestRegionsCoverKeyspace(t *testing.T) {
	env := newTiKVEnv(t)
	checkRegionsAPI(t, env)
	for _, s := range append([]storeJSON{{ID: env.e.PlaceholderID}}, env.stores...) {
		if n := len(env.ledBy(s.ID)); n != 1 {
			t.Fatalf("store %d leads %d regions, want 1", s.ID, n)
		}
	}
	if first := env.ledBy(env.stores[0].ID)[0]; hexKey(first.GetEndKey()) != "7480000000000000FF0400000000000000F8" {
		t.Fatalf("first store's region ends at %X, want table key t4", first.GetEndKey())
	}
	// While the placeholder (which keeps the last region) is prepared, a new store gets its region only once
	// the placeholder is no longer prepared: the split would be refused.
	ps := env.open(placeholderAddress)
	ps.lease(30)
	ps.expectLeaseResult(false)
	var c clusterJSON
	env.control("POST", "/clusters", `{"name":"other","namespace":"t","stores":1}`, 200, &c)
	if n := len(env.ledBy(c.Stores[0].ID)); n != 0 {
		t.Fatalf("new store got %d regions while the placeholder is prepared", n)
	}
	checkRegionsAPI(t, env)
	ps.finish()
	ps.expectLeaseResult(true)
	ps.expectEOF()
	if n := len(env.ledBy(c.Stores[0].ID)); n != 1 {
		t.Fatalf("new store leads %d regions after Finish, want 1", n)
	}
	checkRegionsAPI(t, env)
}

func TestRegionsPersisted(t *testing.T) {
	dir := t.TempDir()
	newEmu := func() *emulator {
		e := &emulator{storeVersion: "8.5.5", pauses: map[string]pause{}, statePath: dataPath(dir, "emulator-state.json")}
		if err := e.initConfig("", dir, "", "", "", "", "http://127.0.0.1:1", "http://127.0.0.1:2"); err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := newEmu()
	e.bootstrap()
	e.register("basic", "t", 2)
	want, _ := json.Marshal(e.Regions)
	e2 := newEmu()
	if got, _ := json.Marshal(e2.Regions); string(got) != string(want) || len(e2.Regions) != 3 {
		t.Fatalf("regions after restart %s, want %s", got, want)
	}
	if err := e2.checkRegions(); err != nil {
		t.Fatal(err)
	}
	// State written before regions were modelled gets them on load: the placeholder's, then one per store.
	e2.Regions = nil
	e2.save()
	e3 := newEmu()
	if err := e3.checkRegions(); err != nil || len(e3.Regions) != 3 {
		t.Fatalf("migrated regions %v: %v", e3.Regions, err)
	}
	for _, s := range e3.Stores {
		if e3.leaderCount(s.ID) != 1 {
			t.Fatalf("store %d leads %d regions after migration", s.ID, e3.leaderCount(s.ID))
		}
	}
}

func TestTiKVControlValidation(t *testing.T) {
	env := newTiKVEnv(t)
	id := env.stores[0].ID
	reg := env.ledBy(id)[0].GetId()
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", fmt.Sprintf("/tikv/stores/%d/prepare", id), `{"mode":"sometimes"}`, 400},
		{"POST", fmt.Sprintf("/tikv/stores/%d/prepare", id), `{"mode":"normal","extra":1}`, 400},
		{"POST", fmt.Sprintf("/tikv/stores/%d/prepare", id), `{}`, 400},
		{"POST", fmt.Sprintf("/tikv/stores/%d/prepare", id), ``, 400},
		{"POST", fmt.Sprintf("/tikv/stores/%d/prepare", id), `{"version":"seven"}`, 400},
		{"POST", fmt.Sprintf("/tikv/stores/%d/prepare", id), `{"mode":"normal"} {}`, 400},
		{"POST", "/tikv/stores/x/prepare", `{"mode":"normal"}`, 400},
		{"POST", "/tikv/stores/999999/prepare", `{"mode":"normal"}`, 404},
		{"GET", "/tikv/stores/999999/prepare", ``, 404},
		{"POST", fmt.Sprintf("/tikv/regions/%d/lag", reg), `{"millis":-1}`, 400},
		{"POST", fmt.Sprintf("/tikv/regions/%d/lag", reg), `{"millis":"5"}`, 400},
		{"POST", fmt.Sprintf("/tikv/regions/%d/lag", reg), `{}`, 400},
		{"POST", fmt.Sprintf("/tikv/regions/%d/lag", reg), `{"millis":600001}`, 400},
		{"POST", "/tikv/regions/999999/lag", `{"millis":5}`, 404},
		{"POST", "/tikv/regions/999999/split", ``, 404},
		{"POST", fmt.Sprintf("/tikv/regions/%d/split", reg), `{"key":1}`, 400},
		{"POST", fmt.Sprintf("/tikv/regions/%d/lag", reg), `{"millis":0}`, 200},
		{"POST", fmt.Sprintf("/tikv/stores/%d/prepare", id), `{"mode":"never-apply","version":"v6.5.0"}`, 200},
	} {
		env.control(c.method, c.path, c.body, c.want, nil)
	}
	if st := env.prepareStatus(id); st.Mode != "never-apply" || st.Version != "6.5.0" || st.Prepared || st.LeaseUntilMS != 0 {
		t.Fatalf("%+v", st)
	}
}

package main

// Unit tests of the emulator's PD semantics. The end-to-end check against the same smoke test as the real PD
// is ../smoke (PD_IMPL=emulator ./smoke).

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

type testEnv struct {
	t   *testing.T
	e   *emulator
	url string
	pd  pdpb.PDClient
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	e := &emulator{memberID: 42, name: "pd", clientURLs: []string{url}, peerURLs: []string{"http://127.0.0.1:1"},
		startTime: time.Now(), storeVersion: "8.5.5", pauses: map[string]pause{}}
	if err := e.initConfig("", "", "", "", "", "", url, "http://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	e.PDServer.set("min-resolved-ts-persistence-interval", json.RawMessage(`"100ms"`))
	e.bootstrap()
	srv := e.newServer()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	conn, err := grpc.Dial(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &testEnv{t: t, e: e, url: url, pd: pdpb.NewPDClient(conn)}
}

func (te *testEnv) call(method, path, body string, wantStatus int, v any) string {
	te.t.Helper()
	req, _ := http.NewRequest(method, te.url+"/pd/api/v1/"+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		te.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		te.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, wantStatus)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			te.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return string(b)
}

func (te *testEnv) header() *pdpb.RequestHeader {
	return &pdpb.RequestHeader{ClusterId: te.e.ClusterID}
}

func TestGRPCOnSamePortAsHTTP(t *testing.T) {
	te := newTestEnv(t)
	ctx := context.Background()
	m, err := te.pd.GetMembers(ctx, &pdpb.GetMembersRequest{Header: &pdpb.RequestHeader{}})
	if err != nil {
		t.Fatal(err)
	}
	if m.GetHeader().GetClusterId() != te.e.ClusterID || m.GetLeader().GetClientUrls()[0] != te.url || len(m.GetMembers()) != 1 {
		t.Fatalf("GetMembers: %v", m)
	}
	_, err = te.pd.AllocID(ctx, &pdpb.AllocIDRequest{Header: te.header()})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("AllocID: %v, want Unimplemented", err)
	}
	_, err = te.pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: &pdpb.RequestHeader{ClusterId: te.e.ClusterID + 1}, ServiceId: []byte("x"), TTL: 1})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "mismatch cluster id, need") {
		t.Fatalf("wrong cluster id: %v", err)
	}
	stream, err := te.pd.Tso(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	for i := 0; i < 3; i++ {
		if err := stream.Send(&pdpb.TsoRequest{Header: te.header(), Count: 2}); err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ts := r.GetTimestamp().GetPhysical()<<18 | r.GetTimestamp().GetLogical()
		if ts <= last || r.GetCount() != 2 {
			t.Fatalf("tso not increasing: %d then %v", last, r)
		}
		last = ts
	}
	var v struct{ Version string }
	te.call("GET", "version", "", 200, &v)
	if v.Version != "v8.5.5" {
		t.Fatal(v)
	}
}

func TestServiceGCSafePointSemantics(t *testing.T) {
	te := newTestEnv(t)
	e := te.e
	ctx := context.Background()
	update := func(id string, ttl int64, sp uint64) *pdpb.UpdateServiceGCSafePointResponse {
		t.Helper()
		r, err := te.pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
			Header: te.header(), ServiceId: []byte(id), TTL: ttl, SafePoint: sp})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// First update: gc_worker is created at 0 and is the minimum; ours is saved (100 >= 0).
	r := update("br", 300, 100)
	if string(r.ServiceId) != gcWorkerID || r.MinSafePoint != 0 || r.TTL < math.MaxInt64-time.Now().Unix()-2 {
		t.Fatalf("first update: %v", r)
	}
	if e.SafePoints["br"] == nil || e.SafePoints[gcWorkerID].ExpiredAt != math.MaxInt64 {
		t.Fatalf("stored: %+v", e.SafePoints)
	}
	// Without gc_worker, the minimum is the caller's own entry; re-saving it reloads the minimum.
	e.mu.Lock()
	delete(e.SafePoints, gcWorkerID)
	e.mu.Unlock()
	r = update("br", 300, 200)
	// LoadMin found no gc_worker -> created at br's 100, which is the minimum returned (br's update to 200 saved).
	if string(r.ServiceId) != gcWorkerID || r.MinSafePoint != 100 || e.SafePoints["br"].SafePoint != 200 {
		t.Fatalf("gc_worker re-created: %v %+v", r, e.SafePoints)
	}
	// Lower than the minimum: not saved, no error.
	r = update("low", 300, 50)
	if r.MinSafePoint != 100 || e.SafePoints["low"] != nil {
		t.Fatalf("lower: %v", r)
	}
	// TTL <= 0 removes; gc_worker cannot be removed.
	update("br", 0, 0)
	if e.SafePoints["br"] != nil {
		t.Fatal("br not removed")
	}
	if _, err := te.pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{Header: te.header(),
		ServiceId: []byte(gcWorkerID), TTL: 0}); err == nil || !strings.Contains(err.Error(), "cannot remove service safe point of gc_worker") {
		t.Fatalf("removing gc_worker: %v", err)
	}
	if _, err := te.pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{Header: te.header(),
		ServiceId: nil, TTL: 10, SafePoint: 1000}); err == nil || !strings.Contains(err.Error(), "cannot be empty") {
		t.Fatalf("empty service id: %v", err)
	}
	// Expired entries stay listed until the next update deletes them.
	e.mu.Lock()
	e.SafePoints["old"] = &serviceSafePoint{ServiceID: "old", ExpiredAt: time.Now().Unix() - 10, SafePoint: 150}
	e.mu.Unlock()
	var list struct {
		Points []serviceSafePoint `json:"service_gc_safe_points"`
		Min    *uint64            `json:"min_service_gc_safe_point"`
	}
	te.call("GET", "gc/safepoint", "", 200, &list)
	if len(list.Points) != 2 || list.Points[1].ServiceID != "old" || list.Min == nil || *list.Min != 100 {
		t.Fatalf("list with expired entry: %+v", list)
	}
	update("other", 300, 100)
	if e.SafePoints["old"] != nil {
		t.Fatal("expired entry not deleted by the update")
	}
	te.call("DELETE", "gc/safepoint/other", "", 200, nil)
	te.call("DELETE", "gc/safepoint/gc_worker", "", 500, nil)
	// UpdateGCSafePoint only moves forward.
	g, _ := te.pd.UpdateGCSafePoint(ctx, &pdpb.UpdateGCSafePointRequest{Header: te.header(), SafePoint: 10})
	g2, _ := te.pd.UpdateGCSafePoint(ctx, &pdpb.UpdateGCSafePointRequest{Header: te.header(), SafePoint: 5})
	gs, _ := te.pd.GetGCSafePoint(ctx, &pdpb.GetGCSafePointRequest{Header: te.header()})
	if g.NewSafePoint != 10 || g2.NewSafePoint != 10 || gs.SafePoint != 10 {
		t.Fatalf("gc safe point: %v %v %v", g, g2, gs)
	}
}

func TestSchedulerPauseExpires(t *testing.T) {
	te := newTestEnv(t)
	te.call("POST", "schedulers/balance-region-scheduler", `{"delay":1}`, 200, nil)
	var paused []string
	te.call("GET", "schedulers?status=paused", "", 200, &paused)
	if len(paused) != 1 {
		t.Fatalf("paused %v", paused)
	}
	time.Sleep(2100 * time.Millisecond)
	te.call("GET", "schedulers?status=paused", "", 200, &paused)
	if len(paused) != 0 {
		t.Fatalf("still paused %v", paused)
	}
	te.call("POST", "schedulers/nope", `{"delay":1}`, 500, nil)
	te.call("POST", "schedulers/balance-region-scheduler", `{}`, 400, nil)
	if b := te.call("POST", "schedulers/balance-region-scheduler", `{"delay":"1"}`, 400, nil); !strings.Contains(b, `"code": "input"`) {
		t.Fatal(b)
	}
}

func TestTTLConfig(t *testing.T) {
	te := newTestEnv(t)
	body := `{"schedule.leader-schedule-limit":0,"schedule.enable-location-replacement":"false","schedule.max-merge-region-size":1.5}`
	te.call("POST", "config?ttlSecond=1", body, 200, nil)
	var ttl []struct {
		Key, Value string
	}
	te.call("GET", "_emulator/ttl-config", "", 200, &ttl)
	if len(ttl) != 3 || ttl[0].Key != "schedule.enable-location-replacement" || ttl[0].Value != "false" ||
		ttl[1].Value != "0" || ttl[2].Value != "1.5" {
		t.Fatalf("ttl overrides %+v", ttl)
	}
	var sched map[string]any
	te.call("GET", "config/schedule", "", 200, &sched)
	if sched["leader-schedule-limit"] != 4.0 || sched["enable-location-replacement"] != "true" {
		t.Fatalf("persisted config changed: %v", sched)
	}
	te.call("POST", "config/schedule", `{"leader-schedule-limit":5}`, 400, nil)
	te.call("POST", "config", `{"schedule.leader-schedule-limit":5}`, 400, nil)
	if b := te.call("POST", "config?ttlSecond=30", `{"schedule.max-store-down-time":"1h"}`, 400, nil); !strings.Contains(b, "unsupported ttl config schedule.max-store-down-time") {
		t.Fatal(b)
	}
	time.Sleep(1100 * time.Millisecond)
	te.call("GET", "_emulator/ttl-config", "", 200, &ttl)
	if len(ttl) != 0 {
		t.Fatalf("not expired: %+v", ttl)
	}
	te.call("POST", "config?ttlSecond=30", body, 200, nil)
	te.call("POST", "config?ttlSecond=0", body, 200, nil)
	te.call("GET", "_emulator/ttl-config", "", 200, &ttl)
	if len(ttl) != 0 {
		t.Fatalf("not deleted: %+v", ttl)
	}
	te.call("POST", "config/schedule", `{"leader-schedule-limit":5,"max-store-down-time":"1h"}`, 200, nil)
	te.call("GET", "config/schedule", "", 200, &sched)
	if sched["leader-schedule-limit"] != 5.0 || sched["max-store-down-time"] != "1h0m0s" {
		t.Fatalf("persisted write: %v", sched)
	}
}

func TestPausedStoreDisconnectsAndFreezesMinResolvedTS(t *testing.T) {
	te := newTestEnv(t)
	e := te.e
	e.mu.Lock()
	list := e.register("basic", "tidb1", 2)
	e.setPaused(list[0], true)
	frozen := list[0].frozenTS
	list[0].lastBeat = time.Now().Add(-21 * time.Second)
	e.mu.Unlock()
	var st struct {
		Stores []struct {
			Store struct {
				ID        uint64 `json:"id"`
				StateName string `json:"state_name"`
			} `json:"store"`
		} `json:"stores"`
	}
	te.call("GET", "stores", "", 200, &st)
	states := map[uint64]string{}
	for _, s := range st.Stores {
		states[s.Store.ID] = s.Store.StateName
	}
	if states[list[0].ID] != "Disconnected" || states[list[1].ID] != "Up" || states[e.PlaceholderID] != "Up" {
		t.Fatalf("states %v", states)
	}
	time.Sleep(300 * time.Millisecond)
	var m minResolvedTS
	te.call("GET", "min-resolved-ts", "", 200, &m)
	if m.MinResolvedTS != frozen || !m.IsRealTime || m.PersistInterval != "100ms" {
		t.Fatalf("min-resolved-ts %+v, want frozen %d", m, frozen)
	}
	e.mu.Lock()
	e.setPaused(list[0], false)
	e.mu.Unlock()
	te.call("GET", "min-resolved-ts", "", 200, &m)
	if m.MinResolvedTS <= frozen {
		t.Fatalf("min-resolved-ts did not advance after resume: %d", m.MinResolvedTS)
	}
	if lag := time.Since(time.UnixMilli(int64(m.MinResolvedTS >> 18))); lag < 50*time.Millisecond || lag > time.Second {
		t.Fatalf("lag %v", lag)
	}
}

func TestNotBootstrapped(t *testing.T) {
	te := newTestEnv(t)
	te.e.mu.Lock()
	te.e.BootstrapTime, te.e.Stores, te.e.ClusterVersion = time.Time{}, nil, ""
	te.e.mu.Unlock()
	var cv string
	te.call("GET", "config/cluster-version", "", 200, &cv)
	if cv != "0.0.0" {
		t.Fatal(cv)
	}
	for _, p := range []string{"stores", "min-resolved-ts", "schedulers", "operators"} {
		if b := te.call("GET", p, "", 500, nil); !strings.Contains(b, "ErrNotBootstrapped") {
			t.Fatal(p, b)
		}
	}
	te.call("GET", "gc/safepoint", "", 200, nil)
	r, err := te.pd.UpdateServiceGCSafePoint(context.Background(), &pdpb.UpdateServiceGCSafePointRequest{
		Header: te.header(), ServiceId: []byte("x"), TTL: 10, SafePoint: 1})
	if err != nil || r.GetHeader().GetError().GetType() != pdpb.ErrorType_NOT_BOOTSTRAPPED {
		t.Fatalf("%v %v", r, err)
	}
}

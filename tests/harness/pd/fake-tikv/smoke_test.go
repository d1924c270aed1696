package main

// Integration smoke test against a running real pd-server + fake-tikv (see ../smoke).
// Skipped unless PD_URL and FAKE_TIKV_URL are set. With OBSERVED_DIR set, every HTTP exchange is appended
// to $OBSERVED_DIR/exchanges.md (raw bodies as PD sent them).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
)

type smokeEnv struct {
	t        *testing.T
	pd       string // http(s)://host:port
	control  string
	client   *http.Client
	observed *os.File
}

func newSmokeEnv(t *testing.T) *smokeEnv {
	pd, control := os.Getenv("PD_URL"), os.Getenv("FAKE_TIKV_URL")
	if pd == "" || control == "" {
		t.Skip("PD_URL and FAKE_TIKV_URL not set (run tests/harness/pd/smoke)")
	}
	files := tlsFiles{CA: os.Getenv("PD_CACERT"), Cert: os.Getenv("PD_CERT"), Key: os.Getenv("PD_KEY")}
	transport := &http.Transport{}
	if files.enabled() {
		_, _, host, err := parsePDURL(pd)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := files.clientTLS(host)
		if err != nil {
			t.Fatal(err)
		}
		transport.TLSClientConfig = cfg
	}
	e := &smokeEnv{t: t, pd: strings.TrimRight(pd, "/"), control: strings.TrimRight(control, "/"),
		client: &http.Client{Transport: transport, Timeout: 10 * time.Second}}
	if dir := os.Getenv("OBSERVED_DIR"); dir != "" {
		f, err := os.OpenFile(filepath.Join(dir, "exchanges.md"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		e.observed = f
		t.Cleanup(func() { f.Close() })
	}
	return e
}

// do performs an HTTP call; path starting with "/pd" goes to PD (with TLS if configured), else to fake-tikv.
func (e *smokeEnv) do(method, path, body string) (int, []byte) {
	e.t.Helper()
	base, client := e.control, http.DefaultClient
	if strings.HasPrefix(path, "/pd") {
		base, client = e.pd, e.client
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if e.observed != nil && strings.HasPrefix(path, "/pd") {
		fmt.Fprintf(e.observed, "### %s %s\n", method, path)
		if body != "" {
			fmt.Fprintf(e.observed, "request body: `%s`\n\n", body)
		}
		fmt.Fprintf(e.observed, "status %d, Content-Type %q\n```\n%s\n```\n\n", resp.StatusCode, resp.Header.Get("Content-Type"), bytes.TrimRight(b, "\n"))
	}
	return resp.StatusCode, b
}

func (e *smokeEnv) mustJSON(method, path, body string, wantStatus int, v any) []byte {
	e.t.Helper()
	code, b := e.do(method, path, body)
	if code != wantStatus {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, wantStatus, b)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			e.t.Fatalf("%s %s: bad JSON %v: %s", method, path, err, b)
		}
	}
	return b
}

// eventually retries fn until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type pdStores struct {
	Count  int `json:"count"`
	Stores []struct {
		Store struct {
			ID        uint64 `json:"id"`
			Address   string `json:"address"`
			Version   string `json:"version"`
			StateName string `json:"state_name"`
			NodeState int    `json:"node_state"`
		} `json:"store"`
		Status struct {
			Capacity    string `json:"capacity"`
			Available   string `json:"available"`
			LeaderCount int    `json:"leader_count"`
		} `json:"status"`
	} `json:"stores"`
}

func TestSmoke(t *testing.T) {
	e := newSmokeEnv(t)

	var version struct {
		Version string `json:"version"`
	}
	e.mustJSON("GET", "/pd/api/v1/version", "", 200, &version)
	t.Logf("PD version %q", version.Version)

	// Register a 3-store TidbCluster basic/tidb1.
	var reg clusterJSON
	b := e.mustJSON("POST", "/clusters", `{"name":"basic","namespace":"tidb1","stores":3}`, 200, &reg)
	if len(reg.Stores) != 3 {
		t.Fatalf("POST /clusters: %s", b)
	}
	want := map[string]uint64{}
	for i, s := range reg.Stores {
		addr := fmt.Sprintf("basic-tikv-%d.basic-tikv-peer.tidb1.svc:20160", i)
		if s.Address != addr || s.Pod != fmt.Sprintf("basic-tikv-%d", i) || s.ID == 0 {
			t.Fatalf("store %d: %+v", i, s)
		}
		want[addr] = s.ID
	}
	// Idempotent: same ids again.
	var again clusterJSON
	e.mustJSON("POST", "/clusters", `{"name":"basic","namespace":"tidb1","stores":3}`, 200, &again)
	for i := range again.Stores {
		if again.Stores[i].ID != reg.Stores[i].ID {
			t.Fatalf("re-register changed ids: %+v vs %+v", again.Stores, reg.Stores)
		}
	}

	eventually(t, 10*time.Second, "stores Up in /stores", func() error {
		var st pdStores
		e.mustJSON("GET", "/pd/api/v1/stores", "", 200, &st)
		found := 0
		for _, s := range st.Stores {
			if id, ok := want[s.Store.Address]; ok {
				if s.Store.ID != id || s.Store.StateName != "Up" || s.Status.Capacity != "100GiB" {
					return fmt.Errorf("store %+v", s)
				}
				found++
			}
		}
		if found != 3 {
			return fmt.Errorf("found %d of 3", found)
		}
		return nil
	})
	// fake-tikv carries out PD's operators (keyspace splits, balancing onto the new stores): PD goes quiet.
	eventually(t, 60*time.Second, "regions balanced onto the new stores, no running operators", func() error {
		var st pdStores
		e.mustJSON("GET", "/pd/api/v1/stores", "", 200, &st)
		for _, s := range st.Stores {
			if _, ok := want[s.Store.Address]; ok && s.Status.LeaderCount == 0 {
				return fmt.Errorf("store %d has no leader yet", s.Store.ID)
			}
		}
		var ops []string
		e.mustJSON("GET", "/pd/api/v1/operators", "", 200, &ops)
		if len(ops) != 0 {
			return fmt.Errorf("%d operators: %v", len(ops), ops)
		}
		return nil
	})
	e.do("GET", fmt.Sprintf("/pd/api/v1/store/%d", reg.Stores[0].ID), "")
	e.do("GET", "/pd/api/v1/store/999999", "")

	var cv string
	e.mustJSON("GET", "/pd/api/v1/config/cluster-version", "", 200, &cv)
	if cv != "8.5.5" {
		t.Errorf("cluster-version %q, want 8.5.5", cv)
	}

	// Schedulers: the five defaults appear once the region has heartbeated (prepare check every 3 s).
	defaults := []string{"balance-region-scheduler", "balance-leader-scheduler", "balance-hot-region-scheduler",
		"evict-slow-store-scheduler", "evict-stopping-store-scheduler"}
	eventually(t, 20*time.Second, "default schedulers", func() error {
		var names []string
		e.mustJSON("GET", "/pd/api/v1/schedulers", "", 200, &names)
		for _, d := range defaults {
			if !slices.Contains(names, d) {
				return fmt.Errorf("%v lacks %s", names, d)
			}
		}
		return nil
	})
	e.mustJSON("POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{"delay":60}`, 200, nil)
	var paused []string
	e.mustJSON("GET", "/pd/api/v1/schedulers?status=paused", "", 200, &paused)
	if !slices.Contains(paused, "balance-leader-scheduler") {
		t.Errorf("paused list %v lacks balance-leader-scheduler", paused)
	}
	e.do("GET", "/pd/api/v1/schedulers?status=paused&timestamp=true", "")
	e.do("GET", "/pd/api/v1/schedulers?status=disabled", "")
	if code, body := e.do("POST", "/pd/api/v1/schedulers/no-such-scheduler", `{"delay":60}`); code < 400 {
		t.Errorf("pausing an unknown scheduler: %d %s", code, body)
	}
	if code, body := e.do("POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{"delay":"60"}`); code != 400 {
		t.Errorf("string delay: %d %s", code, body)
	}
	if code, body := e.do("POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{}`); code != 400 {
		t.Errorf("missing delay: %d %s", code, body)
	}
	e.mustJSON("POST", "/pd/api/v1/schedulers/balance-leader-scheduler", `{"delay":0}`, 200, nil)
	e.mustJSON("GET", "/pd/api/v1/schedulers?status=paused", "", 200, &paused)
	if slices.Contains(paused, "balance-leader-scheduler") {
		t.Errorf("still paused after delay 0: %v", paused)
	}
	e.do("GET", "/pd/api/v1/schedulers/diagnostic/balance-leader-scheduler", "")

	// Config with TTL.
	var before map[string]any
	e.mustJSON("GET", "/pd/api/v1/config/schedule", "", 200, &before)
	ttlBody := `{"schedule.leader-schedule-limit":0,"schedule.region-schedule-limit":0,"schedule.merge-schedule-limit":0,"schedule.enable-location-replacement":"false"}`
	e.mustJSON("POST", "/pd/api/v1/config?ttlSecond=30", ttlBody, 200, nil)
	var after map[string]any
	e.mustJSON("GET", "/pd/api/v1/config/schedule", "", 200, &after)
	t.Logf("config/schedule leader-schedule-limit before %v, during TTL override %v", before["leader-schedule-limit"], after["leader-schedule-limit"])
	if code, body := e.do("POST", "/pd/api/v1/config?ttlSecond=30", `{"schedule.max-store-down-time":"1h"}`); code != 400 {
		t.Errorf("unsupported TTL key: %d %s", code, body)
	}
	if code, body := e.do("POST", "/pd/api/v1/config/schedule", `{"leader-schedule-limit":5}`); code != 400 {
		t.Errorf("non-TTL write during TTL override: %d %s", code, body)
	}
	e.mustJSON("POST", "/pd/api/v1/config?ttlSecond=0", ttlBody, 200, nil)
	e.do("GET", "/pd/api/v1/config", "")

	// Min resolved ts: real time and fresh.
	eventually(t, 10*time.Second, "fresh min-resolved-ts", func() error {
		var m struct {
			IsRealTime    bool   `json:"is_real_time"`
			MinResolvedTS uint64 `json:"min_resolved_ts"`
		}
		e.mustJSON("GET", "/pd/api/v1/min-resolved-ts", "", 200, &m)
		lag := time.Since(time.UnixMilli(int64(m.MinResolvedTS >> 18)))
		if !m.IsRealTime || lag < -time.Second || lag > 5*time.Second {
			return fmt.Errorf("is_real_time %v, min_resolved_ts %d (lag %v)", m.IsRealTime, m.MinResolvedTS, lag)
		}
		return nil
	})
	e.do("GET", "/pd/api/v1/min-resolved-ts?scope=cluster", "")
	e.do("GET", fmt.Sprintf("/pd/api/v1/min-resolved-ts?scope=%d,%d", reg.Stores[0].ID, reg.Stores[1].ID), "")

	// Service GC safepoint over gRPC.
	conn, err := dialPD(e.pd, tlsFiles{CA: os.Getenv("PD_CACERT"), Cert: os.Getenv("PD_CERT"), Key: os.Getenv("PD_KEY")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pd := pdpb.NewPDClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	clusterID, err := waitForLeader(ctx, pd)
	if err != nil {
		t.Fatal(err)
	}
	sp := uint64(time.Now().Add(-time.Minute).UnixMilli()) << 18
	resp, err := pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: &pdpb.RequestHeader{ClusterId: clusterID}, ServiceId: []byte("smoke-test"), TTL: 300, SafePoint: sp})
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		t.Fatalf("UpdateServiceGCSafePoint: %v", err)
	}
	t.Logf("UpdateServiceGCSafePoint -> service_id %q TTL %d min_safe_point %d", resp.GetServiceId(), resp.GetTTL(), resp.GetMinSafePoint())
	e.record("gRPC UpdateServiceGCSafePoint{service_id: smoke-test, TTL: 300, safe_point: %d}\n-> service_id %q, TTL %d, min_safe_point %d", sp, resp.GetServiceId(), resp.GetTTL(), resp.GetMinSafePoint())
	// Second call: now the minimum is ours.
	resp, err = pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: &pdpb.RequestHeader{ClusterId: clusterID}, ServiceId: []byte("smoke-test"), TTL: 300, SafePoint: sp})
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		t.Fatalf("UpdateServiceGCSafePoint (2): %v", err)
	}
	e.record("gRPC UpdateServiceGCSafePoint again (same args)\n-> service_id %q, TTL %d, min_safe_point %d", resp.GetServiceId(), resp.GetTTL(), resp.GetMinSafePoint())
	var gc struct {
		Points []struct {
			ServiceID string `json:"service_id"`
			ExpiredAt int64  `json:"expired_at"`
			SafePoint uint64 `json:"safe_point"`
		} `json:"service_gc_safe_points"`
	}
	e.mustJSON("GET", "/pd/api/v1/gc/safepoint", "", 200, &gc)
	found := false
	for _, p := range gc.Points {
		if p.ServiceID == "smoke-test" && p.SafePoint == sp {
			found = true
		}
	}
	if !found {
		t.Errorf("smoke-test safepoint not listed: %+v", gc.Points)
	}
	// A lower safe point than the minimum is silently not applied.
	resp, err = pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: &pdpb.RequestHeader{ClusterId: clusterID}, ServiceId: []byte("smoke-lower"), TTL: 300, SafePoint: sp - 1})
	if err == nil {
		e.record("gRPC UpdateServiceGCSafePoint{service_id: smoke-lower, safe_point: min-1}\n-> header error %v, service_id %q, TTL %d, min_safe_point %d", resp.GetHeader().GetError(), resp.GetServiceId(), resp.GetTTL(), resp.GetMinSafePoint())
	}
	// Wrong cluster id.
	_, err = pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: &pdpb.RequestHeader{ClusterId: clusterID + 1}, ServiceId: []byte("smoke-test"), TTL: 300, SafePoint: sp})
	e.record("gRPC UpdateServiceGCSafePoint with a wrong cluster id -> %v", err)
	// TTL <= 0 removes it.
	resp, err = pd.UpdateServiceGCSafePoint(ctx, &pdpb.UpdateServiceGCSafePointRequest{
		Header: &pdpb.RequestHeader{ClusterId: clusterID}, ServiceId: []byte("smoke-test"), TTL: 0, SafePoint: sp})
	if err == nil {
		e.record("gRPC UpdateServiceGCSafePoint{TTL: 0} (removal)\n-> header error %v, service_id %q, TTL %d, min_safe_point %d", resp.GetHeader().GetError(), resp.GetServiceId(), resp.GetTTL(), resp.GetMinSafePoint())
	}
	e.do("GET", "/pd/api/v1/gc/safepoint", "")
	e.do("DELETE", "/pd/api/v1/gc/safepoint/smoke-test", "")
	e.do("DELETE", "/pd/api/v1/gc/safepoint/gc_worker", "")

	// Misc shapes the operator may read.
	e.do("GET", "/pd/api/v1/cluster", "")
	e.do("GET", "/pd/api/v1/cluster/status", "")
	e.do("GET", "/pd/api/v1/operators", "")
	e.do("GET", "/pd/api/v1/health", "")
	e.do("GET", "/pd/api/v1/leader", "")
	e.do("GET", "/pd/api/v1/regions", "")
}

func (e *smokeEnv) record(format string, args ...any) {
	if e.observed != nil {
		fmt.Fprintf(e.observed, "### gRPC\n```\n"+format+"\n```\n\n", args...)
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

const errNotBootstrapped = "[PD:cluster:ErrNotBootstrapped]TiKV cluster not bootstrapped, please start TiKV first"

// render writes v the way PD's unrolled/render does: indented JSON, a trailing newline, PD's content type.
func render(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(strconv.Quote(err.Error()))
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// renderInputError is PD's errcode answer for a request body that does not decode (apiutil.ErrorResp with an
// "input" errcode): the decoder's error value itself is the "data".
func renderInputError(w http.ResponseWriter, err error) {
	w.Header().Set("Tidb-Error-Code", "input")
	render(w, http.StatusBadRequest, struct {
		Code string `json:"code"`
		Msg  string `json:"msg"`
		Data any    `json:"data"`
	}{"input", err.Error(), err})
}

func withCORS(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Headers", "accept, content-type, authorization")
		w.Header().Set("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		h.ServeHTTP(w, r)
	})
}

type member struct {
	Name          string   `json:"name"`
	MemberID      uint64   `json:"member_id"`
	PeerURLs      []string `json:"peer_urls"`
	ClientURLs    []string `json:"client_urls"`
	DeployPath    string   `json:"deploy_path,omitempty"`
	BinaryVersion string   `json:"binary_version,omitempty"`
	GitHash       string   `json:"git_hash,omitempty"`
}

func (e *emulator) member() member {
	return member{Name: e.name, MemberID: e.memberID, PeerURLs: e.peerURLs, ClientURLs: e.clientURLs,
		DeployPath: e.deployPath, BinaryVersion: pdVersion, GitHash: pdGitHash}
}

// storeInfo renders one /stores entry with PD's field order and omitempty rules.
func (e *emulator) storeInfo(s *store, now time.Time) any {
	type meta struct {
		ID             uint64       `json:"id"`
		Address        string       `json:"address"`
		Labels         []storeLabel `json:"labels,omitempty"`
		Version        string       `json:"version,omitempty"`
		PeerAddress    string       `json:"peer_address,omitempty"`
		StatusAddress  string       `json:"status_address,omitempty"`
		GitHash        string       `json:"git_hash,omitempty"`
		StartTimestamp int64        `json:"start_timestamp,omitempty"`
		DeployPath     string       `json:"deploy_path,omitempty"`
		LastHeartbeat  int64        `json:"last_heartbeat,omitempty"`
		NodeState      int          `json:"node_state,omitempty"`
		StateName      string       `json:"state_name"`
	}
	type status struct {
		Capacity        string    `json:"capacity"`
		Available       string    `json:"available"`
		UsedSize        string    `json:"used_size"`
		LeaderCount     int       `json:"leader_count"`
		LeaderWeight    float64   `json:"leader_weight"`
		LeaderScore     float64   `json:"leader_score"`
		LeaderSize      int64     `json:"leader_size"`
		RegionCount     int       `json:"region_count"`
		RegionWeight    float64   `json:"region_weight"`
		RegionScore     float64   `json:"region_score"`
		RegionSize      int64     `json:"region_size"`
		StartTS         time.Time `json:"start_ts"`
		LastHeartbeatTS time.Time `json:"last_heartbeat_ts"`
		Uptime          string    `json:"uptime"`
	}
	start := time.Unix(s.StartTimestamp, 0)
	leaders, regions := e.leaderCount(s.ID), e.regionCount(s.ID)
	version := s.Version
	if version == "" {
		version = e.storeVersion
	}
	score := 0.0
	switch regions {
	case 0:
	case 1:
		score = oneRegionScore
	case 2:
		score = twoRegionScore
	default:
		score = oneRegionScore * float64(regions)
	}
	return struct {
		Store  meta   `json:"store"`
		Status status `json:"status"`
	}{
		meta{ID: s.ID, Address: s.Address, Labels: s.Labels, Version: version, PeerAddress: s.Address,
			StatusAddress: s.StatusAddress, GitHash: fakeGitHash, StartTimestamp: s.StartTimestamp,
			DeployPath: "/fake-tikv", LastHeartbeat: s.lastBeat.UnixNano(), NodeState: 1,
			StateName: e.stateName(s, now)},
		status{Capacity: "100GiB", Available: "90GiB", UsedSize: "10GiB",
			LeaderCount: leaders, LeaderWeight: 1, LeaderScore: float64(leaders), LeaderSize: int64(leaders),
			RegionCount: regions, RegionWeight: 1, RegionScore: score, RegionSize: int64(regions),
			StartTS: start, LastHeartbeatTS: s.lastBeat, Uptime: s.lastBeat.Sub(start).String()},
	}
}

type minResolvedTS struct {
	IsRealTime          bool              `json:"is_real_time,omitempty"`
	MinResolvedTS       uint64            `json:"min_resolved_ts"`
	PersistInterval     string            `json:"persist_interval"`
	StoresMinResolvedTS map[uint64]uint64 `json:"stores_min_resolved_ts"`
}

func (e *emulator) apiHandler() http.Handler {
	mux := http.NewServeMux()
	const p = "/pd/api/v1/"
	// handle registers a handler that runs with e.mu held.
	handle := func(pattern string, f func(w http.ResponseWriter, r *http.Request, now time.Time)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			e.mu.Lock()
			defer e.mu.Unlock()
			now := time.Now()
			e.settle(now) // lapsed leases and regions handed out since, so /stores and /regions agree
			f(w, r, now)
		})
	}
	needBootstrap := func(f func(w http.ResponseWriter, r *http.Request, now time.Time)) func(w http.ResponseWriter, r *http.Request, now time.Time) {
		return func(w http.ResponseWriter, r *http.Request, now time.Time) {
			if !e.bootstrapped() {
				render(w, http.StatusInternalServerError, errNotBootstrapped)
				return
			}
			f(w, r, now)
		}
	}

	handle("GET "+p+"version", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, struct {
			Version   string `json:"version"`
			BuildTime string `json:"build_time"`
			Hash      string `json:"hash"`
			Branch    string `json:"branch"`
		}{pdVersion, "", "", ""})
	})
	handle("GET "+p+"status", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, struct {
			BuildTS        string `json:"build_ts"`
			Version        string `json:"version"`
			GitHash        string `json:"git_hash"`
			StartTimestamp int64  `json:"start_timestamp"`
		}{"None", pdVersion, pdGitHash, e.startTime.Unix()})
	})
	handle("GET "+p+"cluster", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		var maxReplicas json.RawMessage = json.RawMessage("3")
		if v, ok := e.Replication.get("max-replicas"); ok {
			maxReplicas = v
		}
		render(w, 200, struct {
			ID           uint64          `json:"id"`
			MaxPeerCount json.RawMessage `json:"max_peer_count"`
		}{e.ClusterID, maxReplicas})
	})
	handle("GET "+p+"cluster/status", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, struct {
			RaftBootstrapTime time.Time `json:"raft_bootstrap_time"`
			IsInitialized     bool      `json:"is_initialized"`
			ReplicationStatus string    `json:"replication_status"`
		}{e.BootstrapTime, e.bootstrapped(), ""})
	})
	handle("GET "+p+"health", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, []any{struct {
			Name       string   `json:"name"`
			MemberID   uint64   `json:"member_id"`
			ClientURLs []string `json:"client_urls"`
			Health     bool     `json:"health"`
		}{e.name, e.memberID, e.clientURLs, true}})
	})
	handle("GET "+p+"members", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		m := e.member()
		render(w, 200, struct {
			Header     map[string]uint64 `json:"header"`
			Members    []member          `json:"members"`
			Leader     member            `json:"leader"`
			EtcdLeader member            `json:"etcd_leader"`
		}{map[string]uint64{"cluster_id": e.ClusterID}, []member{m}, m, m})
	})
	handle("GET "+p+"leader", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		m := e.member()
		m.DeployPath, m.BinaryVersion, m.GitHash = "", "", ""
		render(w, 200, m)
	})

	// Stores.
	handle("GET "+p+"stores", needBootstrap(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		list := []any{}
		for _, s := range e.Stores {
			list = append(list, e.storeInfo(s, now))
		}
		render(w, 200, struct {
			Count  int   `json:"count"`
			Stores []any `json:"stores"`
		}{len(list), list})
	}))
	handle("GET "+p+"store/{id}", needBootstrap(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			render(w, http.StatusBadRequest, err.Error())
			return
		}
		s := e.storeByID(id)
		if s == nil {
			render(w, http.StatusNotFound, fmt.Sprintf("[PD:core:ErrStoreNotFound]store %d not found", id))
			return
		}
		render(w, 200, e.storeInfo(s, now))
	}))
	handle("GET "+p+"config/cluster-version", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		cv := e.ClusterVersion
		if cv == "" {
			cv = "0.0.0"
		}
		render(w, 200, cv)
	})

	// Schedulers.
	handle("GET "+p+"schedulers", needBootstrap(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		names := e.schedulerNames()
		_, needTS := r.URL.Query()["timestamp"]
		switch r.URL.Query().Get("status") {
		case "paused":
			type period struct {
				Name     string    `json:"name"`
				PausedAt time.Time `json:"paused_at"`
				ResumeAt time.Time `json:"resume_at"`
			}
			plain, periods := []string{}, []period{}
			for _, n := range names {
				if pz, ok := e.pauses[n]; ok && now.Unix() < pz.until {
					plain = append(plain, n)
					periods = append(periods, period{n, time.Unix(pz.at, 0), time.Unix(pz.until, 0)})
				}
			}
			if needTS {
				render(w, 200, periods)
			} else {
				render(w, 200, plain)
			}
		case "disabled":
			render(w, 200, []string{})
		default:
			render(w, 200, names)
		}
	}))
	handle("POST "+p+"schedulers/{name}", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		body, _ := io.ReadAll(r.Body)
		var input map[string]int64
		if err := json.Unmarshal(body, &input); err != nil {
			renderInputError(w, err)
			return
		}
		t, ok := input["delay"]
		if !ok {
			render(w, http.StatusBadRequest, "missing pause time")
			return
		}
		if !e.bootstrapped() {
			render(w, http.StatusInternalServerError, errNotBootstrapped)
			return
		}
		name := r.PathValue("name")
		targets := []string{name}
		if name == "all" {
			targets = defaultSchedulers
		} else if !contains(defaultSchedulers, name) {
			render(w, http.StatusInternalServerError, "[PD:scheduler:ErrSchedulerNotFound]scheduler not found")
			return
		}
		e.closeLapsedPauseWindow(now)
		before, _ := e.anyPauseAt(now)
		for _, n := range targets {
			if t <= 0 {
				delete(e.pauses, n)
			} else {
				e.pauses[n] = pause{at: now.Unix(), until: now.Unix() + t}
			}
		}
		e.notePauses(before, now)
		logf("scheduler %s delay %d", name, t)
		render(w, 200, "Pause or resume the scheduler successfully.")
	})
	handle("GET "+p+"schedulers/diagnostic/{name}", needBootstrap(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		name := r.PathValue("name")
		if name != "balance-leader-scheduler" && name != "balance-region-scheduler" {
			render(w, http.StatusInternalServerError, fmt.Sprintf("[PD:diagnostic:ErrSchedulerUndiagnosable]%s hasn't supported diagnostic", name))
			return
		}
		st := "normal"
		if pz, ok := e.pauses[name]; ok && now.Unix() < pz.until {
			st = "paused"
		}
		render(w, 200, map[string]any{"name": name, "status": st, "summary": "", "timestamp": now.Unix()})
	}))
	handle("GET "+p+"regions", needBootstrap(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		b, err := e.regionsBody()
		if err != nil {
			render(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b)
	}))
	handle("GET "+p+"operators", needBootstrap(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, []string{})
	}))

	// Config.
	handle("GET "+p+"config", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, e.fullConfig())
	})
	handle("GET "+p+"config/schedule", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, e.scheduleJSON())
	})
	handle("GET "+p+"config/replicate", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		render(w, 200, e.Replication)
	})
	handle("POST "+p+"config", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		body, _ := io.ReadAll(r.Body)
		conf := map[string]any{}
		if err := json.Unmarshal(body, &conf); err != nil {
			render(w, http.StatusBadRequest, err.Error())
			return
		}
		if ttlString := r.URL.Query().Get("ttlSecond"); ttlString != "" {
			ttlSec, err := strconv.Atoi(ttlString)
			if err != nil {
				render(w, http.StatusBadRequest, err.Error())
				return
			}
			for k := range conf {
				if !isSupportedTTLConfig(k) {
					render(w, http.StatusBadRequest, fmt.Sprintf("unsupported ttl config %s", k))
					return
				}
			}
			for k, v := range conf {
				if ttlSec == 0 {
					delete(e.TTL, k)
				} else {
					e.TTL[k] = ttlEntry{Value: ttlValueString(v), ExpireAt: now.Add(time.Duration(ttlSec) * time.Second)}
				}
			}
			e.save()
			logf("ttl config %s ttlSecond=%d", body, ttlSec)
			if ttlSec == 0 {
				render(w, 200, "The ttl config is deleted.")
			} else {
				render(w, 200, "The ttl config is updated.")
			}
			return
		}
		keys := make([]string, 0, len(conf))
		for k := range conf {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			full := k
			if !strings.Contains(k, ".") {
				if full = e.findConfigKey(k); full == "" {
					render(w, http.StatusBadRequest, fmt.Sprintf("config item %s not found", k))
					return
				}
			}
			if err := e.updateConfigItem(full, conf[k], now); err != nil {
				e.save()
				render(w, http.StatusBadRequest, err.Error())
				return
			}
		}
		e.save()
		render(w, 200, "The config is updated.")
	})
	handle("POST "+p+"config/schedule", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		body, _ := io.ReadAll(r.Body)
		conf := map[string]any{}
		if err := json.Unmarshal(body, &conf); err != nil {
			render(w, http.StatusBadRequest, err.Error())
			return
		}
		for k := range conf {
			key := "schedule." + k
			if isSupportedTTLConfig(key) {
				if _, ok := e.activeTTL(key, now); ok {
					render(w, http.StatusBadRequest, fmt.Sprintf("need to clean up TTL first for %s", key))
					return
				}
			}
		}
		updated := e.Schedule.clone()
		for k, v := range conf {
			cur, ok := updated.get(k)
			if !ok || k == "store-limit" || k == "schedulers-v2" {
				continue // PD's json.Unmarshal into the config struct ignores unknown keys
			}
			raw, err := coerce(cur, v)
			if err != nil {
				renderInputError(w, err)
				return
			}
			updated.set(k, raw)
		}
		e.Schedule = updated
		e.save()
		render(w, 200, "The config is updated.")
	})

	// Emulator only: the TTL overrides PD keeps in etcd under /config/ttl/<key> (no PD endpoint shows them).
	handle("GET "+p+"_emulator/ttl-config", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		type entry struct {
			Key              string    `json:"key"`
			Value            string    `json:"value"`
			ExpireAt         time.Time `json:"expire_at"`
			RemainingSeconds float64   `json:"remaining_seconds"`
		}
		keys := make([]string, 0, len(e.TTL))
		for k := range e.TTL {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := []entry{}
		for _, k := range keys {
			if t, ok := e.activeTTL(k, now); ok {
				out = append(out, entry{k, t.Value, t.ExpireAt.UTC(), t.ExpireAt.Sub(now).Seconds()})
			}
		}
		render(w, 200, out)
	})

	// Min resolved ts.
	mrt := func(w http.ResponseWriter, r *http.Request, now time.Time) {
		interval := e.persistInterval()
		resp := minResolvedTS{MinResolvedTS: e.clusterMinResolvedTS(now), PersistInterval: interval.String(),
			IsRealTime: interval != 0}
		if id := r.PathValue("id"); id != "" {
			sid, err := strconv.ParseUint(id, 10, 64)
			if err != nil {
				render(w, http.StatusBadRequest, err.Error())
				return
			}
			resp.MinResolvedTS = e.storeMRT(sid, now)
			render(w, 200, resp)
			return
		}
		if scope := r.URL.Query().Get("scope"); scope != "" {
			var ids []uint64
			if scope == "cluster" {
				for _, s := range e.Stores {
					ids = append(ids, s.ID)
				}
			} else {
				for _, part := range strings.Split(scope, ",") {
					id, err := strconv.ParseUint(part, 10, 64)
					if err != nil {
						render(w, http.StatusBadRequest, err.Error())
						return
					}
					ids = append(ids, id)
				}
			}
			resp.StoresMinResolvedTS = map[uint64]uint64{}
			scopeMin := uint64(math.MaxUint64)
			for _, id := range ids {
				v := e.storeMRT(id, now)
				resp.StoresMinResolvedTS[id] = v
				scopeMin = min(scopeMin, v)
			}
			if scope != "cluster" {
				resp.MinResolvedTS = scopeMin
			}
		}
		render(w, 200, resp)
	}
	handle("GET "+p+"min-resolved-ts", needBootstrap(mrt))
	handle("GET "+p+"min-resolved-ts/{id}", needBootstrap(mrt))

	// Service GC safe points (work without bootstrap).
	handle("GET "+p+"gc/safepoint", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		list := e.sortedSafePoints()
		var minSSP *serviceSafePoint
		for _, ssp := range list {
			if (minSSP == nil || minSSP.SafePoint > ssp.SafePoint) && ssp.ExpiredAt > now.Unix() {
				minSSP = ssp
			}
		}
		minV := uint64(0)
		if minSSP != nil {
			minV = minSSP.SafePoint
		}
		render(w, 200, struct {
			ServiceGCSafePoints   []*serviceSafePoint `json:"service_gc_safe_points"`
			MinServiceGCSafePoint uint64              `json:"min_service_gc_safe_point,omitempty"`
			GCSafePoint           uint64              `json:"gc_safe_point"`
		}{list, minV, e.GCSafePoint})
	})
	handle("DELETE "+p+"gc/safepoint/{id}", func(w http.ResponseWriter, r *http.Request, now time.Time) {
		if err := e.removeSafePoint(r.PathValue("id")); err != nil {
			render(w, http.StatusInternalServerError, err.Error())
			return
		}
		e.save()
		render(w, 200, "Delete service GC safepoint successfully.")
	})

	// Anything else is not emulated: say so instead of pretending.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		render(w, http.StatusNotImplemented, fmt.Sprintf("pd-emulator does not emulate %s %s (see tests/harness/pd/README.md)", r.Method, r.URL.Path))
	})
	return withCORS(mux)
}

// storeMRT is one store's min-resolved-ts as PD reports it per store: u64::MAX for unknown stores and for
// stores holding no leader.
func (e *emulator) storeMRT(id uint64, now time.Time) uint64 {
	s := e.storeByID(id)
	if s == nil || e.leaderCount(id) == 0 {
		return math.MaxUint64
	}
	return e.storeMinResolvedTS(s, now)
}

// schedulerNames lists the enabled schedulers in random order, as PD does (it iterates a map).
func (e *emulator) schedulerNames() []string {
	set := map[string]struct{}{}
	for _, n := range defaultSchedulers {
		set[n] = struct{}{}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

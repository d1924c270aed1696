package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Constants of the PD v8.5.5 being emulated and of the fake cluster the real harness builds.
const (
	pdVersion          = "v8.5.5"
	pdGitHash          = "9c9a8c8a2568"
	gcWorkerID         = "gc_worker"
	placeholderAddress = "placeholder.fake-tikv.invalid:20160"
	tikvPort           = 20160
	tikvStatusPort     = 20180
	fakeGitHash        = "0000000000000000000000000000000000000000"
	disconnectAfter    = 20 * time.Second // PD's hard-coded store-disconnected time
	heartbeatInterval  = time.Second      // fake-tikv's --interval
	mrtLag             = 100 * time.Millisecond
	oneRegionScore     = 4.868629127739808 // region_score PD reports for a store holding one 1 MiB region
	twoRegionScore     = 9.737258255479617
)

var defaultSchedulers = []string{
	"balance-region-scheduler", "balance-leader-scheduler", "balance-hot-region-scheduler",
	"evict-slow-store-scheduler", "evict-stopping-store-scheduler",
}

// The keys POST /config?ttlSecond accepts (PD v8.5.5 supportedTTLConfigs, plus the add-peer-/remove-peer- prefixes).
var supportedTTLConfigs = []string{
	"schedule.max-snapshot-count", "schedule.max-merge-region-size", "schedule.max-pending-peer-count",
	"schedule.max-merge-region-keys", "schedule.leader-schedule-limit", "schedule.region-schedule-limit",
	"schedule.replica-schedule-limit", "schedule.merge-schedule-limit", "schedule.hot-region-schedule-limit",
	"schedule.scheduler-max-waiting-operator", "schedule.enable-location-replacement",
	"schedule.enable-tikv-split-region", "default-add-peer", "default-remove-peer",
}

func isSupportedTTLConfig(key string) bool {
	for _, k := range supportedTTLConfigs {
		if k == key {
			return true
		}
	}
	return strings.HasPrefix(key, "add-peer-") || strings.HasPrefix(key, "remove-peer-")
}

type storeLabel struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// store is one fake TiKV store. Exported fields are persisted in the data dir.
type store struct {
	ID             uint64       `json:"id"`
	Address        string       `json:"address"`
	StatusAddress  string       `json:"status_address,omitempty"`
	Labels         []storeLabel `json:"labels,omitempty"`
	Pod            string       `json:"pod,omitempty"`
	Name           string       `json:"name,omitempty"`
	Namespace      string       `json:"namespace,omitempty"`
	Index          int          `json:"index"`
	StartTimestamp int64        `json:"start_timestamp"`
	Version        string       `json:"version,omitempty"` // TiKV version reported in /stores (default --store-version)

	lastBeat time.Time // last (simulated) store heartbeat
	paused   bool      // heartbeats stopped through the control API
	frozenTS uint64    // min-resolved-ts reported last before the pause
}

type serviceSafePoint struct {
	ServiceID string `json:"service_id"`
	ExpiredAt int64  `json:"expired_at"`
	SafePoint uint64 `json:"safe_point"`
}

type ttlEntry struct {
	Value    string    `json:"value"`
	ExpireAt time.Time `json:"expire_at"`
}

// persisted is what survives an emulator restart on the same data dir (PD persists the same things in etcd).
type persisted struct {
	ClusterID      uint64                       `json:"cluster_id"`
	BootstrapTime  time.Time                    `json:"bootstrap_time"`
	NextID         uint64                       `json:"next_id"`
	PlaceholderID  uint64                       `json:"placeholder_id"`
	Stores         []*store                     `json:"stores"`
	SafePoints     map[string]*serviceSafePoint `json:"service_safe_points"`
	GCSafePoint    uint64                       `json:"gc_safe_point"`
	TTL            map[string]ttlEntry          `json:"ttl_config"`
	Schedule       *object                      `json:"schedule"`
	Replication    *object                      `json:"replication"`
	PDServer       *object                      `json:"pd-server"`
	ClusterVersion string                       `json:"cluster_version"`
	MinResolvedTS  uint64                       `json:"min_resolved_ts"`
	Regions        []*region                    `json:"regions"`
}

type pause struct{ at, until int64 }

type emulator struct {
	mu sync.Mutex
	persisted

	memberID     uint64
	name         string
	clientURLs   []string
	peerURLs     []string
	deployPath   string
	startTime    time.Time
	storeVersion string
	statePath    string
	config       *object // full /config template (non-persisted parts)
	pauses       map[string]pause
	pauseWindows []pauseWindow
	lastTSO      struct{ physical, logical int64 }

	// The TiKV side of snapshot-backup preparation (tikv_prepare.go); in memory only, as in TiKV.
	prepares      map[uint64]*tikvPrepare // by store id
	prepareEvents []prepareEvent
	applyLag      map[uint64]time.Duration // by region id: delay of its next WaitApplyDone
}

func (e *emulator) bootstrapped() bool { return !e.BootstrapTime.IsZero() }

func (e *emulator) allocID() uint64 {
	id := e.NextID
	e.NextID++
	return id
}

// save writes the persisted state atomically. Callers hold e.mu.
func (e *emulator) save() {
	if e.statePath == "" {
		return
	}
	b, err := json.MarshalIndent(&e.persisted, "", "  ")
	if err != nil {
		logf("save state: %v", err)
		return
	}
	tmp := e.statePath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		err = os.Rename(tmp, e.statePath)
		if err != nil {
			logf("save state: %v", err)
		}
	} else {
		logf("save state: %v", err)
	}
}

func (e *emulator) load() (bool, error) {
	if e.statePath == "" {
		return false, nil
	}
	b, err := os.ReadFile(e.statePath)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, &e.persisted); err != nil {
		return false, fmt.Errorf("%s: %w", e.statePath, err)
	}
	return true, nil
}

// newClusterID mimics PD: unix seconds in the high 32 bits, random low bits.
func newClusterID() uint64 {
	return uint64(time.Now().Unix())<<32 | uint64(rand.Uint32())
}

// bootstrap plays fake-tikv's start-up: one placeholder store (id 1, label fake-tikv=placeholder) holding the
// first region (id 2, peer 3), which sets cluster-version to the store version.
func (e *emulator) bootstrap() {
	if e.bootstrapped() {
		return
	}
	now := time.Now()
	e.BootstrapTime = now
	id := e.allocID() // 1: store; 2 and 3: region and peer
	e.allocID()
	e.allocID()
	e.PlaceholderID = id
	e.Stores = append(e.Stores, &store{
		ID: id, Address: placeholderAddress, Labels: []storeLabel{{"fake-tikv", "placeholder"}},
		StartTimestamp: now.Unix(), lastBeat: now,
	})
	e.firstRegion(id+1, id+2)
	e.ClusterVersion = e.storeVersion
	logf("bootstrapped cluster %d with placeholder store %d", e.ClusterID, id)
	e.save()
}

// register adds the stores of pods <name>-tikv-0..n-1 that do not exist yet and returns all n, in pod order.
// All new store ids are allocated before their regions' ids, so a first cluster gets consecutive store ids.
func (e *emulator) register(name, namespace string, n int) []*store {
	e.bootstrap()
	out := make([]*store, n)
	for _, s := range e.Stores {
		if s.Name == name && s.Namespace == namespace && s.Index < n {
			out[s.Index] = s
		}
	}
	changed := false
	for i := range out {
		if out[i] != nil {
			continue
		}
		now := time.Now()
		pod := fmt.Sprintf("%s-tikv-%d", name, i)
		host := fmt.Sprintf("%s.%s-tikv-peer.%s.svc", pod, name, namespace)
		s := &store{
			ID: e.allocID(), Address: fmt.Sprintf("%s:%d", host, tikvPort),
			StatusAddress: fmt.Sprintf("%s:%d", host, tikvStatusPort),
			Pod:           pod, Name: name, Namespace: namespace, Index: i,
			StartTimestamp: now.Unix(), lastBeat: now,
		}
		e.Stores = append(e.Stores, s)
		out[i] = s
		changed = true
		logf("registered store %d %s", s.ID, s.Address)
	}
	if e.giveRegions(time.Now()) || changed {
		e.save()
	}
	return out
}

func (e *emulator) storeByAddress(addr string) *store {
	for _, s := range e.Stores {
		if s.Address == addr {
			return s
		}
	}
	return nil
}

func (e *emulator) storeByID(id uint64) *store {
	for _, s := range e.Stores {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// heartbeat is the simulated fake-tikv tick: every store that is not paused heartbeats.
func (e *emulator) heartbeat(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.Stores {
		if !s.paused {
			s.lastBeat = now
		}
	}
}

func (e *emulator) setPaused(s *store, paused bool) {
	if paused && !s.paused {
		s.frozenTS = e.storeMinResolvedTS(s, time.Now())
	}
	if !paused && s.paused {
		s.lastBeat = time.Now()
	}
	s.paused = paused
}

func composeTS(physical time.Time, logical int64) uint64 {
	return uint64(physical.UnixMilli())<<18 | uint64(logical&0x3FFFF)
}

// storeMinResolvedTS is the value the store last reported: a live store reports a TSO ~100 ms old; a paused
// store keeps the value it had when it was paused.
func (e *emulator) storeMinResolvedTS(s *store, now time.Time) uint64 {
	if s.paused {
		return s.frozenTS
	}
	return composeTS(now.Add(-mrtLag), 1)
}

func (e *emulator) persistInterval() time.Duration {
	if e.PDServer == nil {
		return 0
	}
	raw, _ := e.PDServer.get("min-resolved-ts-persistence-interval")
	var s string
	_ = json.Unmarshal(raw, &s)
	d, _ := time.ParseDuration(s)
	return d
}

// clusterMinResolvedTS is PD's persisted cluster value: the minimum over stores holding a leader, never
// moving backwards. It does not move while the persistence interval is 0.
func (e *emulator) clusterMinResolvedTS(now time.Time) uint64 {
	if !e.bootstrapped() {
		return math.MaxUint64
	}
	if e.persistInterval() == 0 {
		return e.MinResolvedTS
	}
	cur := uint64(math.MaxUint64)
	for _, s := range e.Stores {
		if e.leaderCount(s.ID) > 0 {
			cur = min(cur, e.storeMinResolvedTS(s, now))
		}
	}
	if cur != math.MaxUint64 && cur > e.MinResolvedTS {
		e.MinResolvedTS = cur
	}
	return e.MinResolvedTS
}

func (e *emulator) maxStoreDownTime() time.Duration {
	raw, _ := e.Schedule.get("max-store-down-time")
	var s string
	_ = json.Unmarshal(raw, &s)
	d, err := time.ParseDuration(s)
	if err != nil {
		return 30 * time.Minute
	}
	return d
}

func (e *emulator) stateName(s *store, now time.Time) string {
	since := now.Sub(s.lastBeat)
	switch {
	case since > e.maxStoreDownTime():
		return "Down"
	case since > disconnectAfter:
		return "Disconnected"
	}
	return "Up"
}

// ---- service GC safe points (PD pkg/gc + storage/endpoint semantics) ----

func (e *emulator) sortedSafePoints() []*serviceSafePoint {
	keys := make([]string, 0, len(e.SafePoints))
	for k := range e.SafePoints {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*serviceSafePoint, 0, len(keys))
	for _, k := range keys {
		out = append(out, e.SafePoints[k])
	}
	return out
}

func (e *emulator) saveSafePoint(ssp *serviceSafePoint) error {
	if ssp.ServiceID == "" {
		return errors.New("service id of service safepoint cannot be empty")
	}
	if ssp.ServiceID == gcWorkerID && ssp.ExpiredAt != math.MaxInt64 {
		return errors.New("TTL of gc_worker's service safe point must be infinity")
	}
	c := *ssp
	e.SafePoints[ssp.ServiceID] = &c
	return nil
}

func (e *emulator) removeSafePoint(id string) error {
	if id == gcWorkerID {
		return errors.New("cannot remove service safe point of gc_worker")
	}
	delete(e.SafePoints, id)
	return nil
}

func (e *emulator) initGCWorker(v uint64) *serviceSafePoint {
	ssp := &serviceSafePoint{ServiceID: gcWorkerID, SafePoint: v, ExpiredAt: math.MaxInt64}
	_ = e.saveSafePoint(ssp)
	return ssp
}

// loadMinServiceGCSafePoint mirrors PD's LoadMinServiceGCSafePoint: expired entries are deleted here (and only
// here), gc_worker is created when missing.
func (e *emulator) loadMinServiceGCSafePoint(now time.Time) *serviceSafePoint {
	all := e.sortedSafePoints()
	if len(all) == 0 {
		return e.initGCWorker(0)
	}
	hasGCWorker := false
	minSSP := &serviceSafePoint{SafePoint: math.MaxUint64}
	for _, ssp := range all {
		if ssp.ServiceID == gcWorkerID {
			hasGCWorker = true
			if ssp.ExpiredAt != math.MaxInt64 {
				ssp.ExpiredAt = math.MaxInt64
			}
		}
		if ssp.ExpiredAt < now.Unix() {
			delete(e.SafePoints, ssp.ServiceID)
			continue
		}
		if ssp.SafePoint < minSSP.SafePoint {
			minSSP = ssp
		}
	}
	if minSSP.SafePoint == math.MaxUint64 {
		return e.initGCWorker(0)
	}
	if !hasGCWorker {
		return e.initGCWorker(minSSP.SafePoint)
	}
	c := *minSSP
	return &c
}

// updateServiceGCSafePoint mirrors PD's gRPC UpdateServiceGCSafePoint after the header checks.
func (e *emulator) updateServiceGCSafePoint(serviceID string, ttl int64, safePoint uint64, now time.Time) (*serviceSafePoint, error) {
	defer e.save()
	if ttl <= 0 {
		if err := e.removeSafePoint(serviceID); err != nil {
			return nil, err
		}
	}
	minSSP := e.loadMinServiceGCSafePoint(now)
	if ttl <= 0 || safePoint < minSSP.SafePoint {
		return minSSP, nil
	}
	ssp := &serviceSafePoint{ServiceID: serviceID, ExpiredAt: now.Unix() + ttl, SafePoint: safePoint}
	if math.MaxInt64-now.Unix() <= ttl {
		ssp.ExpiredAt = math.MaxInt64
	}
	if err := e.saveSafePoint(ssp); err != nil {
		return nil, err
	}
	if serviceID == minSSP.ServiceID {
		minSSP = e.loadMinServiceGCSafePoint(now)
	}
	return minSSP, nil
}

// ---- TTL config ----

// activeTTL returns the override of key if it has not expired. Callers hold e.mu.
func (e *emulator) activeTTL(key string, now time.Time) (ttlEntry, bool) {
	t, ok := e.TTL[key]
	if !ok {
		return t, false
	}
	if !now.Before(t.ExpireAt) {
		delete(e.TTL, key)
		return t, false
	}
	return t, true
}

func ttlValueString(v any) string {
	switch val := v.(type) {
	case float64:
		if val == math.Trunc(val) {
			return strconv.FormatInt(int64(val), 10)
		}
		return strconv.FormatFloat(val, 'f', -1, 64)
	default:
		return fmt.Sprint(v)
	}
}

// ---- TSO ----

func (e *emulator) tso(count uint32) (physical, logical int64) {
	now := time.Now().UnixMilli()
	if now > e.lastTSO.physical {
		e.lastTSO.physical, e.lastTSO.logical = now, 0
	}
	e.lastTSO.logical += int64(count)
	if e.lastTSO.logical >= 1<<18 {
		e.lastTSO.physical++
		e.lastTSO.logical = int64(count)
	}
	return e.lastTSO.physical, e.lastTSO.logical
}

// ---- config ----

// coerce converts a JSON-decoded value to the typing PD uses for the config item whose current value is cur:
// booleans as "true"/"false" strings, durations normalised ("30m" -> "30m0s"), numbers as numbers.
func coerce(cur json.RawMessage, v any) (json.RawMessage, error) {
	var curAny any
	_ = json.Unmarshal(cur, &curAny)
	switch c := curAny.(type) {
	case string:
		switch nv := v.(type) {
		case bool:
			return json.Marshal(strconv.FormatBool(nv))
		case string:
			if c == "true" || c == "false" {
				if _, err := strconv.ParseBool(nv); err != nil {
					return nil, fmt.Errorf("strconv.ParseBool: parsing %q: invalid syntax", nv)
				}
				return json.Marshal(nv)
			}
			if _, err := time.ParseDuration(c); err == nil {
				d, err := time.ParseDuration(nv)
				if err != nil {
					return nil, err
				}
				return json.Marshal(d.String())
			}
			return json.Marshal(nv)
		}
		return nil, fmt.Errorf("cannot use %v for a string config item", v)
	case float64:
		f, ok := v.(float64)
		if !ok {
			if s, isStr := v.(string); isStr {
				var err error
				if f, err = strconv.ParseFloat(s, 64); err != nil {
					return nil, err
				}
			} else {
				return nil, fmt.Errorf("cannot use %v for a numeric config item", v)
			}
		}
		if f == math.Trunc(f) && math.Abs(f) < 1e18 {
			return json.RawMessage(strconv.FormatInt(int64(f), 10)), nil
		}
		return json.Marshal(f)
	case bool:
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("cannot use %v for a boolean config item", v)
		}
		return json.Marshal(b)
	}
	return json.Marshal(v)
}

// configSection returns the persisted section object for a config prefix.
func (e *emulator) configSection(prefix string) *object {
	switch prefix {
	case "schedule":
		return e.Schedule
	case "replication":
		return e.Replication
	case "pd-server":
		return e.PDServer
	}
	return nil
}

// updateConfigItem applies a non-TTL write of one dotted key (POST /config). Callers hold e.mu.
func (e *emulator) updateConfigItem(key string, v any, now time.Time) error {
	kp := strings.Split(key, ".")
	switch kp[0] {
	case "schedule", "replication", "pd-server":
		if kp[0] == "schedule" && isSupportedTTLConfig(key) {
			if _, ok := e.activeTTL(key, now); ok {
				return fmt.Errorf("need to clean up TTL first for %s", key)
			}
		}
		sec := e.configSection(kp[0])
		item := kp[len(kp)-1]
		cur, ok := sec.get(item)
		if !ok || item == "store-limit" || item == "schedulers-v2" {
			return fmt.Errorf("config item %s not found", item)
		}
		raw, err := coerce(cur, v)
		if err != nil {
			return err
		}
		sec.set(item, raw)
		return nil
	case "cluster-version":
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("input value %v is illegal", v)
		}
		e.ClusterVersion = strings.TrimPrefix(s, "v")
		return nil
	case "log", "replication-mode", "label-property", "keyspace", "micro-service":
		return fmt.Errorf("pd-emulator does not emulate writes to config prefix %s", kp[0])
	}
	return fmt.Errorf("config prefix %s not found", kp[0])
}

// findConfigKey maps a short key (as POST /config accepts) to its full dotted key.
func (e *emulator) findConfigKey(k string) string {
	for _, p := range []string{"schedule", "replication", "pd-server"} {
		if _, ok := e.configSection(p).get(k); ok {
			return p + "." + k
		}
	}
	return ""
}

func (e *emulator) storeLimit() map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for _, s := range e.Stores {
		out[strconv.FormatUint(s.ID, 10)] = map[string]float64{"add-peer": 15, "remove-peer": 15}
	}
	return out
}

func (e *emulator) scheduleJSON() *object {
	o := e.Schedule.clone()
	o.setValue("store-limit", e.storeLimit())
	return o
}

func (e *emulator) fullConfig() *object {
	o := e.config.clone()
	o.setValue("schedule", e.scheduleJSON())
	o.setValue("replication", e.Replication)
	o.setValue("pd-server", e.PDServer)
	cv := e.ClusterVersion
	if cv == "" {
		cv = "0.0.0"
	}
	o.setValue("cluster-version", cv)
	return o
}

func dataPath(dir, name string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name)
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/eraftpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/pingcap/kvproto/pkg/pdpb"
)

const (
	// placeholderAddress is the address of the store that bootstraps the cluster and holds its only region.
	// It can never equal a TiKV pod address (".invalid" is a reserved TLD).
	placeholderAddress = "placeholder.fake-tikv.invalid:20160"
	tikvPort           = 20160
	tikvStatusPort     = 20180
	gib                = uint64(1) << 30
)

// podAddress matches the addresses this program gives cluster stores:
// <name>-tikv-<i>.<name>-tikv-peer.<namespace>.svc:20160
var podAddress = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?)-tikv-([0-9]+)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)-tikv-peer\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc:20160$`)

type fakeStore struct {
	ID        uint64 `json:"id"`
	Address   string `json:"address"`
	Pod       string `json:"pod,omitempty"`
	name      string
	namespace string
	index     int
	started   time.Time
	lastBeat  time.Time
	paused    atomic.Bool // when set, the store stops heartbeating (to simulate a Disconnected/Down TiKV)
}

type clusterKey struct{ namespace, name string }

type fakeRegion struct {
	meta   *metapb.Region
	leader *metapb.Peer
}

type fakeTiKV struct {
	pd        pdpb.PDClient
	version   string
	interval  time.Duration
	clusterID uint64

	mu          sync.Mutex
	stores      map[uint64]*fakeStore
	clusters    map[clusterKey][]*fakeStore // index i holds store of pod <name>-tikv-<i>
	placeholder uint64
	regions     map[uint64]*fakeRegion             // regions led by our stores, by region id
	orders      chan *pdpb.RegionHeartbeatResponse // operator steps PD sent on the heartbeat stream

	regMu sync.Mutex // serializes registrations

	ready     atomic.Bool
	lastTS    atomic.Uint64
	lastError atomic.Value // string
}

func newFakeTiKV(pd pdpb.PDClient, version string, interval time.Duration) *fakeTiKV {
	return &fakeTiKV{
		pd:       pd,
		version:  version,
		interval: interval,
		stores:   map[uint64]*fakeStore{},
		clusters: map[clusterKey][]*fakeStore{},
		regions:  map[uint64]*fakeRegion{},
		orders:   make(chan *pdpb.RegionHeartbeatResponse, 256),
	}
}

func (f *fakeTiKV) header() *pdpb.RequestHeader { return &pdpb.RequestHeader{ClusterId: f.clusterID} }

func rpcCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 5*time.Second)
}

func (f *fakeTiKV) allocID(ctx context.Context) (uint64, error) {
	cctx, cancel := rpcCtx(ctx)
	defer cancel()
	resp, err := f.pd.AllocID(cctx, &pdpb.AllocIDRequest{Header: f.header()})
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		return 0, fmt.Errorf("AllocID: %w", err)
	}
	return resp.GetId(), nil
}

func (f *fakeTiKV) storeMeta(id uint64, address, statusAddress string, labels []*metapb.StoreLabel) *metapb.Store {
	now := time.Now()
	return &metapb.Store{
		Id:             id,
		Address:        address,
		PeerAddress:    address,
		StatusAddress:  statusAddress,
		Labels:         labels,
		Version:        f.version,
		GitHash:        "0000000000000000000000000000000000000000",
		StartTimestamp: now.Unix(),
		DeployPath:     "/fake-tikv",
		LastHeartbeat:  now.UnixNano(),
		NodeState:      metapb.NodeState_Serving,
	}
}

func (f *fakeTiKV) putStore(ctx context.Context, s *metapb.Store) error {
	cctx, cancel := rpcCtx(ctx)
	defer cancel()
	resp, err := f.pd.PutStore(cctx, &pdpb.PutStoreRequest{Header: f.header(), Store: s})
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		return fmt.Errorf("PutStore %d (%s): %w", s.Id, s.Address, err)
	}
	return nil
}

// start connects to PD, bootstraps the cluster if needed (or adopts the stores of an earlier run), and
// starts the heartbeat loop. It returns once the first round of heartbeats has been sent.
// ctx lives as long as the process; timeout bounds the start-up phase.
func (f *fakeTiKV) start(ctx context.Context, timeout time.Duration) error {
	runCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	id, err := waitForLeader(ctx, f.pd)
	if err != nil {
		return err
	}
	f.clusterID = id
	logf("PD cluster id %d", id)

	bootstrapped, err := f.isBootstrapped(ctx)
	if err != nil {
		return err
	}
	if !bootstrapped {
		if err := f.bootstrap(ctx); err != nil {
			if !isHeaderError(err, pdpb.ErrorType_ALREADY_BOOTSTRAPPED) {
				return err
			}
			bootstrapped = true
		}
	}
	if bootstrapped {
		if err := f.adopt(ctx); err != nil {
			return err
		}
	}

	// First round synchronously (retrying TSO start-up), so /healthz means "stores are Up".
	for {
		err := f.tick(runCtx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("first heartbeat round: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.ready.Store(true)
	go f.loop(runCtx)
	go f.orderWorker(runCtx)
	return nil
}

func (f *fakeTiKV) isBootstrapped(ctx context.Context) (bool, error) {
	for attempt := 0; ; attempt++ {
		cctx, cancel := rpcCtx(ctx)
		resp, err := f.pd.IsBootstrapped(cctx, &pdpb.IsBootstrappedRequest{Header: f.header()})
		cancel()
		if err == nil {
			err = pdError(resp.GetHeader())
		}
		if err == nil {
			return resp.GetBootstrapped(), nil
		}
		if attempt > 50 || ctx.Err() != nil {
			return false, fmt.Errorf("IsBootstrapped: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// bootstrap mirrors TiKV: AllocID for store, region and peer; Bootstrap; then PutStore of the same store
// (which sets cluster-version, pd-facts §2.2/§2.5).
func (f *fakeTiKV) bootstrap(ctx context.Context) error {
	storeID, err := f.allocID(ctx)
	if err != nil {
		return err
	}
	regionID, err := f.allocID(ctx)
	if err != nil {
		return err
	}
	peerID, err := f.allocID(ctx)
	if err != nil {
		return err
	}
	store := f.storeMeta(storeID, placeholderAddress, "", []*metapb.StoreLabel{{Key: "fake-tikv", Value: "placeholder"}})
	peer := &metapb.Peer{Id: peerID, StoreId: storeID, Role: metapb.PeerRole_Voter}
	region := &metapb.Region{
		Id:          regionID,
		StartKey:    []byte{},
		EndKey:      []byte{},
		RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
		Peers:       []*metapb.Peer{peer},
	}
	cctx, cancel := rpcCtx(ctx)
	resp, err := f.pd.Bootstrap(cctx, &pdpb.BootstrapRequest{Header: f.header(), Store: store, Region: region})
	cancel()
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		return fmt.Errorf("Bootstrap: %w", err)
	}
	if err := f.putStore(ctx, store); err != nil {
		return err
	}
	f.mu.Lock()
	f.placeholder = storeID
	f.stores[storeID] = &fakeStore{ID: storeID, Address: placeholderAddress, started: time.Now()}
	f.regions[regionID] = &fakeRegion{meta: region, leader: peer}
	f.mu.Unlock()
	logf("bootstrapped cluster: placeholder store %d, region %d, peer %d", storeID, regionID, peerID)
	return nil
}

// adopt takes over the stores of an earlier fake-tikv run against the same PD data dir.
func (f *fakeTiKV) adopt(ctx context.Context) error {
	cctx, cancel := rpcCtx(ctx)
	resp, err := f.pd.GetAllStores(cctx, &pdpb.GetAllStoresRequest{Header: f.header(), ExcludeTombstoneStores: true})
	cancel()
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		return fmt.Errorf("GetAllStores: %w", err)
	}
	f.mu.Lock()
	for _, s := range resp.GetStores() {
		if s.GetState() == metapb.StoreState_Tombstone {
			continue
		}
		if s.GetAddress() == placeholderAddress {
			f.placeholder = s.GetId()
			f.stores[s.GetId()] = &fakeStore{ID: s.GetId(), Address: s.GetAddress(), started: time.Now()}
			continue
		}
		m := podAddress.FindStringSubmatch(s.GetAddress())
		if m == nil || m[1] != m[4] {
			logf("ignoring store %d with foreign address %s", s.GetId(), s.GetAddress())
			continue
		}
		idx, _ := strconv.Atoi(m[3])
		fs := &fakeStore{ID: s.GetId(), Address: s.GetAddress(), Pod: fmt.Sprintf("%s-tikv-%d", m[1], idx),
			name: m[1], namespace: m[6], index: idx, started: time.Now()}
		f.stores[fs.ID] = fs
		k := clusterKey{m[6], m[1]}
		list := f.clusters[k]
		for len(list) <= idx {
			list = append(list, nil)
		}
		list[idx] = fs
		f.clusters[k] = list
	}
	f.mu.Unlock()

	cctx, cancel = rpcCtx(ctx)
	rresp, err := f.pd.ScanRegions(cctx, &pdpb.ScanRegionsRequest{Header: f.header(), StartKey: []byte{}, EndKey: []byte{}})
	cancel()
	if err == nil {
		err = pdError(rresp.GetHeader())
	}
	if err != nil {
		return fmt.Errorf("ScanRegions: %w", err)
	}
	var found []*fakeRegion
	for _, r := range rresp.GetRegions() {
		found = append(found, &fakeRegion{meta: r.GetRegion(), leader: r.GetLeader()})
	}
	if len(found) == 0 {
		for i, r := range rresp.GetRegionMetas() {
			fr := &fakeRegion{meta: r}
			if i < len(rresp.GetLeaders()) {
				fr.leader = rresp.GetLeaders()[i]
			}
			found = append(found, fr)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range found {
		if r.leader == nil || r.leader.GetId() == 0 {
			r.leader = nil
			for _, p := range r.meta.GetPeers() {
				if _, ok := f.stores[p.GetStoreId()]; ok {
					r.leader = p
					break
				}
			}
		}
		if r.leader == nil || f.stores[r.leader.GetStoreId()] == nil {
			logf("region %d is not led by one of our stores; not heartbeating it", r.meta.GetId())
			continue
		}
		f.regions[r.meta.GetId()] = r
	}
	logf("adopted %d stores (placeholder %d) and %d regions from an already bootstrapped cluster", len(f.stores), f.placeholder, len(f.regions))
	return nil
}

// register creates (or returns the existing) stores for TiKV pods <name>-tikv-0..n-1 of a TidbCluster.
func (f *fakeTiKV) register(ctx context.Context, name, namespace string, n int) ([]*fakeStore, error) {
	f.regMu.Lock()
	defer f.regMu.Unlock()
	k := clusterKey{namespace, name}
	f.mu.Lock()
	existing := append([]*fakeStore(nil), f.clusters[k]...)
	f.mu.Unlock()
	out := make([]*fakeStore, n)
	for i := 0; i < n; i++ {
		if i < len(existing) && existing[i] != nil {
			out[i] = existing[i]
			continue
		}
		id, err := f.allocID(ctx)
		if err != nil {
			return nil, err
		}
		pod := fmt.Sprintf("%s-tikv-%d", name, i)
		host := fmt.Sprintf("%s.%s-tikv-peer.%s.svc", pod, name, namespace)
		addr := fmt.Sprintf("%s:%d", host, tikvPort)
		meta := f.storeMeta(id, addr, fmt.Sprintf("%s:%d", host, tikvStatusPort), nil)
		if err := f.putStore(ctx, meta); err != nil {
			return nil, err
		}
		fs := &fakeStore{ID: id, Address: addr, Pod: pod, name: name, namespace: namespace, index: i, started: time.Now()}
		if err := f.storeHeartbeat(ctx, fs, 0); err != nil {
			logf("first heartbeat of store %d: %v", id, err)
		}
		f.mu.Lock()
		f.stores[id] = fs
		list := f.clusters[k]
		for len(list) <= i {
			list = append(list, nil)
		}
		list[i] = fs
		f.clusters[k] = list
		f.mu.Unlock()
		out[i] = fs
		logf("registered store %d %s", id, addr)
	}
	return out, nil
}

func (f *fakeTiKV) storeHeartbeat(ctx context.Context, s *fakeStore, regions uint32) error {
	now := time.Now()
	last := s.lastBeat
	if last.IsZero() {
		last = now.Add(-f.interval)
	}
	used := 10 * gib
	stats := &pdpb.StoreStats{
		StoreId:     s.ID,
		Capacity:    100 * gib,
		Available:   100*gib - used,
		UsedSize:    used,
		RegionCount: regions,
		StartTime:   uint32(s.started.Unix()),
		Interval:    &pdpb.TimeInterval{StartTimestamp: uint64(last.Unix()), EndTimestamp: uint64(now.Unix())},
	}
	cctx, cancel := rpcCtx(ctx)
	defer cancel()
	resp, err := f.pd.StoreHeartbeat(cctx, &pdpb.StoreHeartbeatRequest{Header: f.header(), Stats: stats})
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		return fmt.Errorf("StoreHeartbeat %d: %w", s.ID, err)
	}
	s.lastBeat = now
	return nil
}

func (f *fakeTiKV) loop(ctx context.Context) {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := f.tick(ctx)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != lastErr {
			if err != nil {
				logf("heartbeat round failed: %v", err)
			} else {
				logf("heartbeat rounds succeed again")
			}
			lastErr = msg
		}
		f.lastError.Store(msg)
	}
}

// tick: one round of store heartbeats, the region heartbeat, and min-resolved-ts reports.
func (f *fakeTiKV) tick(ctx context.Context) error {
	f.mu.Lock()
	stores := make([]*fakeStore, 0, len(f.stores))
	for _, s := range f.stores {
		stores = append(stores, s)
	}
	regions := make([]*fakeRegion, 0, len(f.regions))
	leaders := map[uint64]uint32{}
	for _, r := range f.regions {
		regions = append(regions, r)
		leaders[r.leader.GetStoreId()]++
	}
	f.mu.Unlock()
	sort.Slice(regions, func(i, j int) bool { return regions[i].meta.GetId() < regions[j].meta.GetId() })
	sort.Slice(stores, func(i, j int) bool { return stores[i].ID < stores[j].ID })

	var errs []error
	for _, s := range stores {
		if s.paused.Load() {
			continue
		}
		if err := f.storeHeartbeat(ctx, s, leaders[s.ID]); err != nil {
			if isHeaderError(err, pdpb.ErrorType_STORE_TOMBSTONE) {
				f.forget(s.ID)
				logf("store %d is tombstone; no longer heartbeating it", s.ID)
				continue
			}
			errs = append(errs, err)
		}
	}
	for _, r := range regions {
		if st := f.storeByID(r.leader.GetStoreId()); st != nil && st.paused.Load() {
			continue
		}
		if err := f.regionHeartbeat(ctx, r.meta, r.leader); err != nil {
			errs = append(errs, err)
			break
		}
	}
	ts, err := f.tso(ctx)
	if err != nil {
		errs = append(errs, err)
	} else {
		f.lastTS.Store(ts)
		for _, s := range stores {
			if s.paused.Load() {
				continue
			}
			cctx, cancel := rpcCtx(ctx)
			resp, err := f.pd.ReportMinResolvedTS(cctx, &pdpb.ReportMinResolvedTsRequest{Header: f.header(), StoreId: s.ID, MinResolvedTs: ts})
			cancel()
			if err == nil {
				err = pdError(resp.GetHeader())
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("ReportMinResolvedTS %d: %w", s.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (f *fakeTiKV) forget(id uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stores[id]
	delete(f.stores, id)
	if s != nil && s.Pod != "" {
		k := clusterKey{s.namespace, s.name}
		if list := f.clusters[k]; s.index < len(list) && list[s.index] == s {
			list[s.index] = nil
		}
	}
}

// --- streams -------------------------------------------------------------------------------------------

// Like TiKV, every store has its own RegionHeartbeat stream: PD binds a stream to the store of the first
// leader it sees on it (and re-binds at most once a minute), and sends a region's operator steps to the
// stream bound to the region leader's store.
type hbStream struct {
	st     pdpb.PD_RegionHeartbeatClient
	cancel context.CancelFunc
}

var (
	streamMu  sync.Mutex
	hbStreams = map[uint64]*hbStream{}
	tsoStream pdpb.PD_TsoClient
	tsoCancel context.CancelFunc
)

func (f *fakeTiKV) regionHeartbeat(ctx context.Context, region *metapb.Region, leader *metapb.Peer) error {
	streamMu.Lock()
	defer streamMu.Unlock()
	store := leader.GetStoreId()
	hs := hbStreams[store]
	if hs == nil {
		sctx, cancel := context.WithCancel(ctx)
		st, err := f.pd.RegionHeartbeat(sctx)
		if err != nil {
			cancel()
			return fmt.Errorf("RegionHeartbeat stream: %w", err)
		}
		hs = &hbStream{st: st, cancel: cancel}
		hbStreams[store] = hs
		go f.drainHeartbeatResponses(store, hs)
	}
	now := time.Now()
	err := hs.st.Send(&pdpb.RegionHeartbeatRequest{
		Header:          f.header(),
		Region:          region,
		Leader:          leader,
		ApproximateSize: 1,
		ApproximateKeys: 1,
		Term:            6,
		Interval:        &pdpb.TimeInterval{StartTimestamp: uint64(now.Add(-f.interval).Unix()), EndTimestamp: uint64(now.Unix())},
	})
	if err != nil {
		hs.cancel()
		delete(hbStreams, store)
		return fmt.Errorf("RegionHeartbeat send: %w", err)
	}
	return nil
}

// drainHeartbeatResponses reads what PD sends on a heartbeat stream: operator steps (queued for
// orderWorker) or errors.
func (f *fakeTiKV) drainHeartbeatResponses(store uint64, hs *hbStream) {
	for {
		resp, err := hs.st.Recv()
		if err != nil {
			streamMu.Lock()
			if hbStreams[store] == hs {
				hs.cancel()
				delete(hbStreams, store)
			}
			streamMu.Unlock()
			return
		}
		if e := pdError(resp.GetHeader()); e != nil {
			logf("region heartbeat response error: %v", e)
			continue
		}
		if resp.GetRegionId() != 0 {
			select {
			case f.orders <- resp:
			default: // PD re-sends a step on the region's next heartbeat
			}
		}
	}
}

func (f *fakeTiKV) tso(ctx context.Context) (uint64, error) {
	streamMu.Lock()
	defer streamMu.Unlock()
	if tsoStream == nil {
		sctx, cancel := context.WithCancel(ctx)
		st, err := f.pd.Tso(sctx)
		if err != nil {
			cancel()
			return 0, fmt.Errorf("Tso stream: %w", err)
		}
		tsoStream, tsoCancel = st, cancel
	}
	fail := func(err error) (uint64, error) {
		tsoCancel()
		tsoStream = nil
		return 0, fmt.Errorf("Tso: %w", err)
	}
	if err := tsoStream.Send(&pdpb.TsoRequest{Header: f.header(), Count: 1}); err != nil {
		return fail(err)
	}
	resp, err := tsoStream.Recv()
	if err != nil {
		return fail(err)
	}
	if err := pdError(resp.GetHeader()); err != nil {
		return fail(err)
	}
	ts := resp.GetTimestamp()
	return uint64(ts.GetPhysical())<<18 | uint64(ts.GetLogical())&0x3FFFF, nil
}

func (f *fakeTiKV) storeByID(id uint64) *fakeStore {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stores[id]
}

// split carries out a split order the way TiKV does: AskBatchSplit for new region and peer ids, split with
// right-derive (the old id keeps the rightmost part), all parts at epoch version+n, ReportBatchSplit.
func (f *fakeTiKV) split(ctx context.Context, r *fakeRegion, splitKeys [][]byte) error {
	old := r.meta
	var keys [][]byte
	for _, k := range splitKeys {
		if len(k) == 0 || bytes.Compare(k, old.GetStartKey()) <= 0 || (len(old.GetEndKey()) > 0 && bytes.Compare(k, old.GetEndKey()) >= 0) {
			continue
		}
		if len(keys) > 0 && bytes.Equal(keys[len(keys)-1], k) {
			continue
		}
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 })
	if len(keys) == 0 {
		return nil
	}
	cctx, cancel := rpcCtx(ctx)
	resp, err := f.pd.AskBatchSplit(cctx, &pdpb.AskBatchSplitRequest{Header: f.header(), Region: old, SplitCount: uint32(len(keys))})
	cancel()
	if err == nil {
		err = pdError(resp.GetHeader())
	}
	if err != nil {
		return fmt.Errorf("AskBatchSplit: %w", err)
	}
	if len(resp.GetIds()) != len(keys) {
		return fmt.Errorf("AskBatchSplit returned %d ids for %d keys", len(resp.GetIds()), len(keys))
	}
	epoch := &metapb.RegionEpoch{ConfVer: old.GetRegionEpoch().GetConfVer(), Version: old.GetRegionEpoch().GetVersion() + uint64(len(keys))}
	bounds := append(append([][]byte{old.GetStartKey()}, keys...), old.GetEndKey())
	var parts []*fakeRegion
	for i := 0; i <= len(keys); i++ {
		meta := &metapb.Region{StartKey: bounds[i], EndKey: bounds[i+1], RegionEpoch: epoch}
		var leader *metapb.Peer
		if i == len(keys) { // right derive: the old region keeps the last range
			meta.Id = old.GetId()
			meta.Peers = old.GetPeers()
			leader = r.leader
		} else {
			id := resp.GetIds()[i]
			meta.Id = id.GetNewRegionId()
			for j, p := range old.GetPeers() {
				if j < len(id.GetNewPeerIds()) {
					np := &metapb.Peer{Id: id.GetNewPeerIds()[j], StoreId: p.GetStoreId(), Role: p.GetRole()}
					meta.Peers = append(meta.Peers, np)
					if p.GetStoreId() == r.leader.GetStoreId() {
						leader = np
					}
				}
			}
		}
		if leader == nil {
			return fmt.Errorf("no leader peer for split part %d", i)
		}
		parts = append(parts, &fakeRegion{meta: meta, leader: leader})
	}
	f.mu.Lock()
	metas := make([]*metapb.Region, 0, len(parts))
	for _, p := range parts {
		f.regions[p.meta.GetId()] = p
		metas = append(metas, p.meta)
	}
	f.mu.Unlock()
	cctx, cancel = rpcCtx(ctx)
	rresp, err := f.pd.ReportBatchSplit(cctx, &pdpb.ReportBatchSplitRequest{Header: f.header(), Regions: metas})
	cancel()
	if err == nil {
		err = pdError(rresp.GetHeader())
	}
	if err != nil {
		logf("ReportBatchSplit: %v", err)
	}
	logf("split region %d into %d regions at %d keys", old.GetId(), len(parts), len(keys))
	for _, p := range parts {
		if err := f.regionHeartbeat(ctx, p.meta, p.leader); err != nil {
			return err
		}
	}
	return nil
}

// orderWorker carries out the operator steps PD sends, like TiKV would, so operators finish and
// /operators stays quiet: splits with explicit keys (PD's region labeler asks for keyspace boundaries right
// after bootstrap), peer changes (plain and joint consensus) and leader transfers. Merges and
// size-based splits are ignored. After each step the region is heartbeated at once, from its leader.
func (f *fakeTiKV) orderWorker(ctx context.Context) {
	for {
		var resp *pdpb.RegionHeartbeatResponse
		select {
		case <-ctx.Done():
			return
		case resp = <-f.orders:
		}
		if verbose {
			logf("order for region %d: %s", resp.GetRegionId(), resp.String())
		}
		if err := f.applyOrder(ctx, resp); err != nil {
			logf("operator step for region %d: %v", resp.GetRegionId(), err)
		}
	}
}

func (f *fakeTiKV) applyOrder(ctx context.Context, resp *pdpb.RegionHeartbeatResponse) error {
	f.mu.Lock()
	r := f.regions[resp.GetRegionId()]
	f.mu.Unlock()
	if r == nil {
		return errors.New("not one of our regions")
	}
	cur := r.meta.GetRegionEpoch()
	if e := resp.GetRegionEpoch(); e != nil && (e.GetVersion() != cur.GetVersion() || e.GetConfVer() != cur.GetConfVer()) {
		return nil // stale step; PD re-sends the current one on the next heartbeat
	}
	if sp := resp.GetSplitRegion(); sp != nil {
		if sp.GetPolicy() == pdpb.CheckPolicy_USEKEY && len(sp.GetKeys()) > 0 {
			return f.split(ctx, r, sp.GetKeys())
		}
		return nil
	}
	meta := cloneRegion(r.meta)
	leader := r.leader
	switch {
	case resp.GetChangePeer() != nil:
		applyChange(meta, resp.GetChangePeer(), false)
		meta.RegionEpoch.ConfVer++
	case resp.GetChangePeerV2() != nil:
		changes := resp.GetChangePeerV2().GetChanges()
		if len(changes) == 0 { // leave joint state
			n := uint64(0)
			for _, p := range meta.Peers {
				switch p.Role {
				case metapb.PeerRole_IncomingVoter:
					p.Role, n = metapb.PeerRole_Voter, n+1
				case metapb.PeerRole_DemotingVoter:
					p.Role, n = metapb.PeerRole_Learner, n+1
				}
			}
			meta.RegionEpoch.ConfVer += max(n, 1)
		} else {
			for _, c := range changes {
				applyChange(meta, c, true)
			}
			meta.RegionEpoch.ConfVer += uint64(len(changes))
		}
	case resp.GetTransferLeader() != nil:
		tl := resp.GetTransferLeader()
		targets := append([]*metapb.Peer{tl.GetPeer()}, tl.GetPeers()...)
		for _, t := range targets {
			if t == nil {
				continue
			}
			if p := findPeer(meta, t.GetStoreId()); p != nil && p.Role != metapb.PeerRole_Learner {
				if f.storeByID(p.GetStoreId()) != nil {
					leader = p
					break
				}
			}
		}
	default:
		return nil // merge and other steps are not carried out
	}
	if l := findPeer(meta, leader.GetStoreId()); l != nil {
		leader = l
	} else {
		return errors.New("step would remove the leader")
	}
	f.mu.Lock()
	f.regions[meta.GetId()] = &fakeRegion{meta: meta, leader: leader}
	f.mu.Unlock()
	return f.regionHeartbeat(ctx, meta, leader)
}

func applyChange(meta *metapb.Region, c *pdpb.ChangePeer, joint bool) {
	target := c.GetPeer()
	if target == nil {
		return
	}
	p := findPeer(meta, target.GetStoreId())
	switch c.GetChangeType() {
	case eraftpb.ConfChangeType_AddNode:
		role := metapb.PeerRole_Voter
		if joint {
			role = metapb.PeerRole_IncomingVoter
		}
		if p == nil {
			meta.Peers = append(meta.Peers, &metapb.Peer{Id: target.GetId(), StoreId: target.GetStoreId(), Role: role})
		} else if p.Role == metapb.PeerRole_Learner {
			p.Role = role
		}
	case eraftpb.ConfChangeType_AddLearnerNode:
		if p == nil {
			meta.Peers = append(meta.Peers, &metapb.Peer{Id: target.GetId(), StoreId: target.GetStoreId(), Role: metapb.PeerRole_Learner})
		} else if p.Role == metapb.PeerRole_Voter && joint {
			p.Role = metapb.PeerRole_DemotingVoter
		} else {
			p.Role = metapb.PeerRole_Learner
		}
	case eraftpb.ConfChangeType_RemoveNode:
		for i, q := range meta.Peers {
			if q.GetStoreId() == target.GetStoreId() {
				meta.Peers = append(meta.Peers[:i:i], meta.Peers[i+1:]...)
				break
			}
		}
	}
}

func findPeer(meta *metapb.Region, storeID uint64) *metapb.Peer {
	for _, p := range meta.GetPeers() {
		if p.GetStoreId() == storeID {
			return p
		}
	}
	return nil
}

func cloneRegion(r *metapb.Region) *metapb.Region {
	c := &metapb.Region{Id: r.GetId(), StartKey: r.GetStartKey(), EndKey: r.GetEndKey(),
		RegionEpoch: &metapb.RegionEpoch{ConfVer: r.GetRegionEpoch().GetConfVer(), Version: r.GetRegionEpoch().GetVersion()}}
	for _, p := range r.GetPeers() {
		c.Peers = append(c.Peers, &metapb.Peer{Id: p.GetId(), StoreId: p.GetStoreId(), Role: p.GetRole(), IsWitness: p.GetIsWitness()})
	}
	return c
}

package main

// The TiKV side of BR's "prepare snapshot backup" protocol (kvproto brpb.Backup/PrepareSnapshotBackup, TiKV
// tikv#15946), played for every fake store. The store is the one whose address is the request's :authority:
// the operator dials the emulator's gRPC address and keeps the store address as authority.
//
// Per store, as in TiKV: UpdateLease prepares the store until now+lease (admin commands such as splits on
// the regions it leads are refused meanwhile); WaitApply answers one WaitApplyDone per region; Finish ends
// the preparation, answers UpdateLeaseResult{last_lease_is_valid} and closes the stream. A stream that ends
// without Finish leaves the store prepared until its lease lapses.

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// How a store plays the protocol, set through POST /tikv/stores/{id}/prepare.
const (
	modeNormal        = "normal"
	modeUnimplemented = "unimplemented" // a TiKV older than the feature: the RPC fails with Unimplemented
	modeDrop          = "drop"          // the stream is aborted (Unavailable) right after the first UpdateLease
	modeNeverApply    = "never-apply"   // regions that pass the checks never get their WaitApplyDone
)

const maxApplyLag = 10 * time.Minute

type tikvPrepare struct {
	mode       string
	prepared   bool
	leaseUntil time.Time // deadline of the current or the last lease; zero when the store was never leased
}

type prepareEvent struct {
	Store        uint64 `json:"store"`
	Event        string `json:"event"`
	Region       uint64 `json:"region,omitempty"`
	LeaseSeconds uint64 `json:"lease_seconds,omitempty"`
	Valid        *bool  `json:"valid,omitempty"`
	Error        string `json:"error,omitempty"`
	AtMS         int64  `json:"at_ms"`
}

func (e *emulator) prepareOf(storeID uint64) *tikvPrepare {
	p := e.prepares[storeID]
	if p == nil {
		p = &tikvPrepare{mode: modeNormal}
		e.prepares[storeID] = p
	}
	return p
}

// isPrepared is valid after lapseLeases (every caller runs giveRegions or settle first). Callers hold e.mu.
func (e *emulator) isPrepared(storeID uint64) bool {
	p := e.prepares[storeID]
	return p != nil && p.prepared
}

func (e *emulator) record(ev prepareEvent, at time.Time) {
	ev.AtMS = at.UnixMilli()
	e.prepareEvents = append(e.prepareEvents, ev)
}

// lapseLeases ends every lease whose deadline has passed, recording the lapse at the deadline. It runs
// before anything reads or changes the prepare state, so events stay in order and nothing shows a stale
// "prepared". Callers hold e.mu.
func (e *emulator) lapseLeases(now time.Time) {
	for id, p := range e.prepares {
		if p.prepared && !now.Before(p.leaseUntil) {
			p.prepared = false
			e.record(prepareEvent{Store: id, Event: "lapsed"}, p.leaseUntil)
			logf("store %d: snapshot-backup lease lapsed", id)
		}
	}
}

// settle brings lapsed leases and the regions waiting for them up to date. Callers hold e.mu.
func (e *emulator) settle(now time.Time) {
	if e.giveRegions(now) {
		e.save()
	}
}

func boolPtr(b bool) *bool { return &b }

// ---- gRPC ----

type backupServer struct {
	brpb.UnimplementedBackupServer
	e *emulator
}

// storeOf resolves the :authority to a store: it must be exactly the store's address as PD lists it
// (host:port), so a client that loses the port or dials the wrong name fails loudly here.
func (e *emulator) storeOf(authority string) *store { return e.storeByAddress(authority) }

func authorityOf(md metadata.MD) string {
	if v := md.Get(":authority"); len(v) > 0 {
		return v[0]
	}
	return ""
}

// prepareStream serialises the sends of one stream: WaitApplyDone events with a lag are sent from timers.
// After close nothing is sent any more (the handler has returned or is about to).
type prepareStream struct {
	mu     sync.Mutex
	stream brpb.Backup_PrepareSnapshotBackupServer
	closed bool
	timers []*time.Timer
}

func (ps *prepareStream) send(resp *brpb.PrepareSnapshotBackupResponse, before func()) error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed {
		return nil
	}
	if before != nil {
		before()
	}
	return ps.stream.Send(resp)
}

func (ps *prepareStream) close() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.closed = true
	for _, t := range ps.timers {
		t.Stop()
	}
}

func (ps *prepareStream) later(d time.Duration, f func()) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.timers = append(ps.timers, time.AfterFunc(d, f))
}

func leaseResult(valid bool) *brpb.PrepareSnapshotBackupResponse {
	return &brpb.PrepareSnapshotBackupResponse{Ty: brpb.PrepareSnapshotBackupEventType_UpdateLeaseResult, LastLeaseIsValid: valid}
}

func (b *backupServer) PrepareSnapshotBackup(stream brpb.Backup_PrepareSnapshotBackupServer) error {
	e := b.e
	md, _ := metadata.FromIncomingContext(stream.Context())
	authority := authorityOf(md)
	e.mu.Lock()
	s := e.storeOf(authority)
	var id uint64
	var mode string
	if s != nil {
		id, mode = s.ID, e.prepareOf(s.ID).mode
	}
	e.mu.Unlock()
	if s == nil {
		return status.Errorf(codes.Unavailable, "no store at %q (the :authority must be a store address PD lists)", authority)
	}
	if mode == modeUnimplemented {
		return status.Errorf(codes.Unimplemented, "unknown method PrepareSnapshotBackup for service backup.Backup (store %d plays a TiKV without it)", id)
	}

	ps := &prepareStream{stream: stream}
	defer ps.close()
	finished := false
	defer func() {
		if !finished {
			e.mu.Lock()
			e.lapseLeases(time.Now())
			e.record(prepareEvent{Store: id, Event: "stream-closed"}, time.Now())
			e.mu.Unlock()
		}
	}()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch req.GetTy() {
		case brpb.PrepareSnapshotBackupRequestType_UpdateLease:
			if err := b.updateLease(ps, id, req.GetLeaseInSeconds()); err != nil {
				return err
			}
		case brpb.PrepareSnapshotBackupRequestType_WaitApply:
			if err := b.waitApply(ps, id, req.GetRegions()); err != nil {
				return err
			}
		case brpb.PrepareSnapshotBackupRequestType_Finish:
			e.mu.Lock()
			now := time.Now()
			e.settle(now)
			p := e.prepareOf(id)
			valid := p.prepared
			p.prepared = false
			e.record(prepareEvent{Store: id, Event: "finish", Valid: boolPtr(valid)}, now)
			e.settle(now) // the placeholder's split for stores registered meanwhile
			e.mu.Unlock()
			logf("store %d: snapshot-backup finish (lease valid %v)", id, valid)
			finished = true
			if err := ps.send(leaseResult(valid), nil); err != nil {
				return err
			}
			return nil
		default:
			return status.Errorf(codes.InvalidArgument, "unknown PrepareSnapshotBackupRequestType %d", req.GetTy())
		}
	}
}

func (b *backupServer) updateLease(ps *prepareStream, id, seconds uint64) error {
	if seconds == 0 || seconds > 24*3600 {
		return status.Errorf(codes.InvalidArgument, "lease_in_seconds must be 1..86400, got %d", seconds)
	}
	e := b.e
	e.mu.Lock()
	now := time.Now()
	e.settle(now)
	p := e.prepareOf(id)
	valid := p.prepared
	p.prepared = true
	p.leaseUntil = now.Add(time.Duration(seconds) * time.Second)
	mode := p.mode
	e.record(prepareEvent{Store: id, Event: "lease", LeaseSeconds: seconds, Valid: boolPtr(valid)}, now)
	e.mu.Unlock()
	if err := ps.send(leaseResult(valid), nil); err != nil {
		return err
	}
	if mode == modeDrop {
		return status.Errorf(codes.Unavailable, "store %d dropped the stream (mode drop)", id)
	}
	return nil
}

// waitApply checks each region at once and answers it now, after its lag, or (never-apply) never. A WaitApply
// on a store that is not prepared is a client error: the stream fails with FailedPrecondition.
func (b *backupServer) waitApply(ps *prepareStream, id uint64, regions []*metapb.Region) error {
	e := b.e
	type answer struct {
		resp  *brpb.PrepareSnapshotBackupResponse
		delay time.Duration
	}
	var answers []answer
	e.mu.Lock()
	now := time.Now()
	e.settle(now)
	p := e.prepareOf(id)
	if !p.prepared {
		e.mu.Unlock()
		return status.Errorf(codes.FailedPrecondition, "store %d is not prepared for snapshot backup: send UpdateLease first (or the lease lapsed)", id)
	}
	for _, r := range regions {
		e.record(prepareEvent{Store: id, Event: "wait-apply", Region: r.GetId()}, now)
		resp := &brpb.PrepareSnapshotBackupResponse{Ty: brpb.PrepareSnapshotBackupEventType_WaitApplyDone, Region: r}
		if resp.Error = e.checkRegionFor(id, r); resp.Error != nil {
			answers = append(answers, answer{resp, 0})
			continue
		}
		if p.mode == modeNeverApply {
			continue
		}
		answers = append(answers, answer{resp, e.applyLag[r.GetId()]})
		delete(e.applyLag, r.GetId())
	}
	e.mu.Unlock()

	for _, a := range answers {
		resp := a.resp
		done := func() {
			e.mu.Lock()
			ev := prepareEvent{Store: id, Event: "wait-apply-done", Region: resp.GetRegion().GetId()}
			if resp.Error != nil {
				ev.Error = resp.Error.GetMessage()
			}
			now := time.Now()
			e.lapseLeases(now)
			e.record(ev, now)
			e.mu.Unlock()
		}
		if a.delay > 0 {
			ps.later(a.delay, func() { _ = ps.send(resp, done) })
			continue
		}
		if err := ps.send(resp, done); err != nil {
			return err
		}
	}
	return nil
}

// checkRegionFor is TiKV's check of a WaitApply region on store storeID: the region must exist, be led
// from this store and have the current epoch. Callers hold e.mu.
func (e *emulator) checkRegionFor(storeID uint64, r *metapb.Region) *errorpb.Error {
	cur := e.regionByID(r.GetId())
	if cur == nil {
		return &errorpb.Error{Message: fmt.Sprintf("region %d not found", r.GetId()),
			RegionNotFound: &errorpb.RegionNotFound{RegionId: r.GetId()}}
	}
	if cur.Leader.StoreID != storeID {
		return &errorpb.Error{Message: fmt.Sprintf("peer is not leader for region %d, leader may be on store %d", cur.ID, cur.Leader.StoreID),
			NotLeader: &errorpb.NotLeader{RegionId: cur.ID, Leader: &metapb.Peer{Id: cur.Leader.ID, StoreId: cur.Leader.StoreID}}}
	}
	if ep := r.GetRegionEpoch(); ep.GetConfVer() != cur.ConfVer || ep.GetVersion() != cur.Version {
		return &errorpb.Error{
			Message: fmt.Sprintf("epoch not match for region %d: request conf_ver %d version %d, current conf_ver %d version %d",
				cur.ID, ep.GetConfVer(), ep.GetVersion(), cur.ConfVer, cur.Version),
			EpochNotMatch: &errorpb.EpochNotMatch{CurrentRegions: []*metapb.Region{cur.meta()}}}
	}
	return nil
}

// ---- control API ----

var versionRE = regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)

// decodeBody decodes a JSON object strictly (unknown fields and trailing data are errors). An empty body is
// allowed only when optional.
func decodeBody(r *http.Request, v any, optional bool) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return nil
		}
		return errors.New("a JSON body is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad JSON: %v", err)
	}
	if dec.More() {
		return errors.New("bad JSON: data after the object")
	}
	return nil
}

func pathID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, "id %q is not a positive integer", r.PathValue("id"))
		return 0, false
	}
	return id, true
}

func (e *emulator) prepareJSON(s *store) map[string]any {
	p := e.prepareOf(s.ID)
	until := int64(0)
	if !p.leaseUntil.IsZero() {
		until = p.leaseUntil.UnixMilli()
	}
	version := s.Version
	if version == "" {
		version = e.storeVersion
	}
	return map[string]any{"store": s.ID, "prepared": p.prepared, "lease_until_ms": until, "mode": p.mode, "version": version}
}

// tikvControl adds the TiKV side's control endpoints to the control API:
//
//	POST   /tikv/stores/{id}/prepare  {"mode":"normal"|"unimplemented"|"drop"|"never-apply","version":"7.1.0"} (either optional)
//	GET    /tikv/stores/{id}/prepare  {"store","prepared","lease_until_ms","mode","version"}
//	POST   /tikv/regions/{id}/lag     {"millis":N} delays the region's next WaitApplyDone by N ms (0 clears)
//	POST   /tikv/regions/{id}/split   {"key":"HEX"} (optional; default a key inside) -> {"regions":[left,right]}
//	GET    /tikv/prepare-events       [{"store","event","region","lease_seconds","valid","error","at_ms"}]
//	DELETE /tikv/prepare-events       clears the list
func (e *emulator) tikvControl(mux *http.ServeMux) {
	// locked runs f with e.mu held, after lapsed leases are recorded.
	locked := func(f func(w http.ResponseWriter, r *http.Request, now time.Time)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			e.mu.Lock()
			defer e.mu.Unlock()
			now := time.Now()
			e.settle(now)
			f(w, r, now)
		}
	}
	storeOr404 := func(w http.ResponseWriter, r *http.Request) *store {
		id, ok := pathID(w, r)
		if !ok {
			return nil
		}
		s := e.storeByID(id)
		if s == nil {
			writeError(w, http.StatusNotFound, "store %d not found", id)
		}
		return s
	}
	regionOr404 := func(w http.ResponseWriter, r *http.Request) *region {
		id, ok := pathID(w, r)
		if !ok {
			return nil
		}
		reg := e.regionByID(id)
		if reg == nil {
			writeError(w, http.StatusNotFound, "region %d not found", id)
		}
		return reg
	}

	mux.HandleFunc("GET /tikv/stores/{id}/prepare", locked(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		if s := storeOr404(w, r); s != nil {
			writeJSON(w, http.StatusOK, e.prepareJSON(s))
		}
	}))
	mux.HandleFunc("POST /tikv/stores/{id}/prepare", locked(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		var req struct {
			Mode    *string `json:"mode"`
			Version *string `json:"version"`
		}
		if err := decodeBody(r, &req, false); err != nil {
			writeError(w, http.StatusBadRequest, "%v", err)
			return
		}
		if req.Mode == nil && req.Version == nil {
			writeError(w, http.StatusBadRequest, "give mode and/or version")
			return
		}
		if req.Mode != nil && !contains([]string{modeNormal, modeUnimplemented, modeDrop, modeNeverApply}, *req.Mode) {
			writeError(w, http.StatusBadRequest, "mode must be normal, unimplemented, drop or never-apply, not %q", *req.Mode)
			return
		}
		if req.Version != nil && !versionRE.MatchString(*req.Version) {
			writeError(w, http.StatusBadRequest, "version must look like 7.1.0, not %q", *req.Version)
			return
		}
		s := storeOr404(w, r)
		if s == nil {
			return
		}
		if req.Mode != nil {
			e.prepareOf(s.ID).mode = *req.Mode
		}
		if req.Version != nil {
			s.Version = strings.TrimPrefix(*req.Version, "v")
			e.save()
		}
		logf("store %d: prepare mode %s version %s", s.ID, e.prepareOf(s.ID).mode, s.Version)
		writeJSON(w, http.StatusOK, e.prepareJSON(s))
	}))
	mux.HandleFunc("POST /tikv/regions/{id}/lag", locked(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		var req struct {
			Millis *int64 `json:"millis"`
		}
		if err := decodeBody(r, &req, false); err != nil {
			writeError(w, http.StatusBadRequest, "%v", err)
			return
		}
		if req.Millis == nil || *req.Millis < 0 || time.Duration(*req.Millis)*time.Millisecond > maxApplyLag {
			writeError(w, http.StatusBadRequest, "millis must be 0..%d", maxApplyLag.Milliseconds())
			return
		}
		reg := regionOr404(w, r)
		if reg == nil {
			return
		}
		if *req.Millis == 0 {
			delete(e.applyLag, reg.ID)
		} else {
			e.applyLag[reg.ID] = time.Duration(*req.Millis) * time.Millisecond
		}
		writeJSON(w, http.StatusOK, map[string]any{"region": reg.ID, "millis": *req.Millis})
	}))
	mux.HandleFunc("POST /tikv/regions/{id}/split", locked(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		var req struct {
			Key *string `json:"key"`
		}
		if err := decodeBody(r, &req, true); err != nil {
			writeError(w, http.StatusBadRequest, "%v", err)
			return
		}
		var key []byte
		if req.Key != nil {
			var err error
			if key, err = hex.DecodeString(*req.Key); err != nil {
				writeError(w, http.StatusBadRequest, "key must be hex: %v", err)
				return
			}
		}
		reg := regionOr404(w, r)
		if reg == nil {
			return
		}
		if key == nil {
			key = midKey(reg.StartKey, reg.EndKey)
		}
		if !inside(key, reg.StartKey, reg.EndKey) {
			writeError(w, http.StatusBadRequest, "key %X is not inside region %d [%X, %X)", key, reg.ID, reg.StartKey, reg.EndKey)
			return
		}
		if leader := reg.Leader.StoreID; e.isPrepared(leader) {
			e.record(prepareEvent{Store: leader, Event: "refused-split", Region: reg.ID}, now)
			writeError(w, http.StatusConflict, "store %d is prepared for snapshot backup", leader)
			return
		}
		left := e.splitRegion(reg, key)
		e.save()
		logf("split region %d at %X: new region %d", reg.ID, key, left.ID)
		writeJSON(w, http.StatusOK, map[string]any{"regions": []any{regionJSON(left), regionJSON(reg)}})
	}))
	mux.HandleFunc("GET /tikv/prepare-events", locked(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		out := e.prepareEvents
		if out == nil {
			out = []prepareEvent{}
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("DELETE /tikv/prepare-events", locked(func(w http.ResponseWriter, r *http.Request, now time.Time) {
		e.prepareEvents = nil
		writeJSON(w, http.StatusOK, map[string]any{"cleared": true})
	}))
}

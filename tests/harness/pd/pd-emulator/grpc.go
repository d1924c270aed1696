package main

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pdServer implements the few pdpb.PD RPCs the operator (and the smoke test) use. Every other RPC answers
// codes.Unimplemented through the embedded UnimplementedPDServer.
type pdServer struct {
	pdpb.UnimplementedPDServer
	e *emulator
}

func (e *emulator) header() *pdpb.ResponseHeader { return &pdpb.ResponseHeader{ClusterId: e.ClusterID} }

func (e *emulator) notBootstrappedHeader() *pdpb.ResponseHeader {
	return &pdpb.ResponseHeader{ClusterId: e.ClusterID, Error: &pdpb.Error{
		Type: pdpb.ErrorType_NOT_BOOTSTRAPPED, Message: "cluster is not bootstrapped"}}
}

// validate is PD's validateRoleInRequest: a wrong (or zero) cluster id is a FailedPrecondition status.
func (e *emulator) validate(h *pdpb.RequestHeader) error {
	if got := h.GetClusterId(); got != e.ClusterID {
		return status.Errorf(codes.FailedPrecondition, "mismatch cluster id, need %d but got %d", e.ClusterID, got)
	}
	return nil
}

func (s *pdServer) GetMembers(ctx context.Context, req *pdpb.GetMembersRequest) (*pdpb.GetMembersResponse, error) {
	e := s.e
	e.mu.Lock()
	defer e.mu.Unlock()
	m := &pdpb.Member{Name: e.name, MemberId: e.memberID, PeerUrls: e.peerURLs, ClientUrls: e.clientURLs,
		DeployPath: e.deployPath, BinaryVersion: pdVersion, GitHash: pdGitHash}
	return &pdpb.GetMembersResponse{Header: e.header(), Members: []*pdpb.Member{m}, Leader: m, EtcdLeader: m}, nil
}

func (s *pdServer) UpdateServiceGCSafePoint(ctx context.Context, req *pdpb.UpdateServiceGCSafePointRequest) (*pdpb.UpdateServiceGCSafePointResponse, error) {
	e := s.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	if !e.bootstrapped() {
		return &pdpb.UpdateServiceGCSafePointResponse{Header: e.notBootstrappedHeader()}, nil
	}
	now := time.Now()
	minSSP, err := e.updateServiceGCSafePoint(string(req.GetServiceId()), req.GetTTL(), req.GetSafePoint(), now)
	if err != nil {
		return nil, status.Error(codes.Unknown, err.Error())
	}
	logf("UpdateServiceGCSafePoint %q TTL %d safe_point %d -> min %q %d", req.GetServiceId(), req.GetTTL(), req.GetSafePoint(), minSSP.ServiceID, minSSP.SafePoint)
	return &pdpb.UpdateServiceGCSafePointResponse{
		Header: e.header(), ServiceId: []byte(minSSP.ServiceID),
		TTL: minSSP.ExpiredAt - now.Unix(), MinSafePoint: minSSP.SafePoint,
	}, nil
}

func (s *pdServer) GetGCSafePoint(ctx context.Context, req *pdpb.GetGCSafePointRequest) (*pdpb.GetGCSafePointResponse, error) {
	e := s.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	if !e.bootstrapped() {
		return &pdpb.GetGCSafePointResponse{Header: e.notBootstrappedHeader()}, nil
	}
	return &pdpb.GetGCSafePointResponse{Header: e.header(), SafePoint: e.GCSafePoint}, nil
}

func (s *pdServer) UpdateGCSafePoint(ctx context.Context, req *pdpb.UpdateGCSafePointRequest) (*pdpb.UpdateGCSafePointResponse, error) {
	e := s.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.validate(req.GetHeader()); err != nil {
		return nil, err
	}
	if !e.bootstrapped() {
		return &pdpb.UpdateGCSafePointResponse{Header: e.notBootstrappedHeader()}, nil
	}
	newSP := req.GetSafePoint()
	if newSP > e.GCSafePoint {
		e.GCSafePoint = newSP
		e.save()
	} else {
		newSP = e.GCSafePoint
	}
	return &pdpb.UpdateGCSafePointResponse{Header: e.header(), NewSafePoint: newSP}, nil
}

func (s *pdServer) Tso(stream pdpb.PD_TsoServer) error {
	e := s.e
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		e.mu.Lock()
		if err := e.validate(req.GetHeader()); err != nil {
			e.mu.Unlock()
			return err
		}
		if req.GetCount() == 0 {
			e.mu.Unlock()
			return status.Error(codes.Unknown, "tso count should be positive")
		}
		physical, logical := e.tso(req.GetCount())
		resp := &pdpb.TsoResponse{Header: e.header(), Count: req.GetCount(),
			Timestamp: &pdpb.Timestamp{Physical: physical, Logical: logical}}
		e.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

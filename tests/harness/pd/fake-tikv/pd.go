package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// tlsFiles names the PEM files used to talk to a PD that requires mutual TLS.
type tlsFiles struct {
	CA, Cert, Key string
}

func (t tlsFiles) enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" }

// clientTLS builds the TLS config used for both gRPC and HTTP calls to PD.
func (t tlsFiles) clientTLS(serverName string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate found in %s", t.CA)
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" || t.Key != "" {
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// dialPD opens a gRPC connection to the PD at pdURL ("http://host:port", "https://host:port" or "host:port").
// TLS is used for https URLs or whenever TLS files are given.
func dialPD(pdURL string, files tlsFiles) (*grpc.ClientConn, error) {
	target, useTLS, host, err := parsePDURL(pdURL)
	if err != nil {
		return nil, err
	}
	var creds credentials.TransportCredentials
	if useTLS || files.enabled() {
		cfg, err := files.clientTLS(host)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	} else {
		creds = insecure.NewCredentials()
	}
	return grpc.Dial(target, grpc.WithTransportCredentials(creds))
}

func parsePDURL(pdURL string) (target string, useTLS bool, host string, err error) {
	s := strings.TrimSpace(pdURL)
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", false, "", fmt.Errorf("bad PD url %q: %w", pdURL, err)
	}
	if u.Host == "" {
		return "", false, "", fmt.Errorf("bad PD url %q: no host", pdURL)
	}
	return u.Host, u.Scheme == "https", u.Hostname(), nil
}

// pdError turns a non-OK response header into an error (PD's second error channel, see pd-facts §1.2).
func pdError(h *pdpb.ResponseHeader) error {
	if h == nil || h.Error == nil || h.Error.Type == pdpb.ErrorType_OK {
		return nil
	}
	return &headerError{Type: h.Error.Type, Message: h.Error.Message}
}

type headerError struct {
	Type    pdpb.ErrorType
	Message string
}

func (e *headerError) Error() string { return fmt.Sprintf("PD error %s: %s", e.Type, e.Message) }

func isHeaderError(err error, t pdpb.ErrorType) bool {
	var he *headerError
	return errors.As(err, &he) && he.Type == t
}

// waitForLeader polls GetMembers until PD reports a leader and a cluster id; it returns the cluster id.
func waitForLeader(ctx context.Context, c pdpb.PDClient) (uint64, error) {
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := c.GetMembers(cctx, &pdpb.GetMembersRequest{Header: &pdpb.RequestHeader{}})
		cancel()
		if err == nil {
			err = pdError(resp.GetHeader())
		}
		if err == nil && resp.GetLeader() != nil && resp.GetHeader().GetClusterId() != 0 {
			return resp.GetHeader().GetClusterId(), nil
		}
		if err == nil {
			err = errors.New("no leader yet")
		}
		if last == nil || err.Error() != last.Error() {
			logf("waiting for PD leader: %v", err)
		}
		last = err
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("PD has no leader: %v (%w)", last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Command fake-tikv keeps a bare pd-server company: it bootstraps the PD cluster with one placeholder
// store and region, registers fake TiKV stores named like TiDB Operator's TiKV pods, and keeps all of
// them Up (store heartbeats, a region heartbeat and min-resolved-ts reports every --interval).
// An HTTP control API (--control) registers stores; see README.md next to the build script.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
)

var logger = log.New(os.Stderr, "fake-tikv ", log.LstdFlags|log.Lmicroseconds)

var verbose bool

func logf(format string, args ...any) { logger.Printf(format, args...) }

func main() {
	pdURL := flag.String("pd", "http://127.0.0.1:2379", "PD client URL (http:// or https://)")
	control := flag.String("control", "127.0.0.1:20190", "listen address of the HTTP control API")
	cacert := flag.String("cacert", "", "CA certificate (PEM) that signed PD's certificate")
	cert := flag.String("cert", "", "client certificate (PEM) to present to PD")
	key := flag.String("key", "", "client private key (PEM)")
	version := flag.String("store-version", "8.5.5", "TiKV version reported by every store (semver, sets PD's cluster-version)")
	interval := flag.Duration("interval", time.Second, "heartbeat / min-resolved-ts report interval")
	startTimeout := flag.Duration("start-timeout", 60*time.Second, "how long to wait for PD at start-up")
	flag.BoolVar(&verbose, "v", false, "log every operator step received from PD")
	flag.Parse()

	conn, err := dialPD(*pdURL, tlsFiles{CA: *cacert, Cert: *cert, Key: *key})
	if err != nil {
		logger.Fatalf("dial PD: %v", err)
	}
	defer conn.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	f := newFakeTiKV(pdpb.NewPDClient(conn), *version, *interval)

	// Listen first so callers can poll /healthz (503 until ready) from the moment the process runs.
	ln, err := net.Listen("tcp", *control)
	if err != nil {
		logger.Fatalf("listen %s: %v", *control, err)
	}
	srv := &http.Server{Handler: f.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			logger.Fatalf("control API: %v", err)
		}
	}()
	logf("control API on http://%s, PD %s", ln.Addr(), *pdURL)

	if err := f.start(ctx, *startTimeout); err != nil {
		fmt.Fprintf(os.Stderr, "fake-tikv: start: %v\n", err)
		os.Exit(1)
	}
	logf("ready")
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	logf("stopped")
}

// Command pd-emulator stands in for a real pd-server v8.5.5 plus fake-tikv when no pd-server binary can be
// built. It serves, on one port like PD, the HTTP API (HTTP/1.1 and HTTP/2) and the pdpb.PD gRPC service
// (HTTP/2, h2c without TLS), emulating only the endpoints the operator uses; and, on --control, the same
// control API as fake-tikv. Behaviour and JSON shapes follow ../OBSERVED.md. See ../README.md.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	brpb "github.com/pingcap/kvproto/pkg/brpb"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"google.golang.org/grpc"
)

//go:embed pd-config-v8.5.5.json
var defaultConfigJSON []byte

var logger = log.New(os.Stderr, "pd-emulator ", log.LstdFlags|log.Lmicroseconds)

func logf(format string, args ...any) { logger.Printf(format, args...) }

func main() {
	// Flags named like pd-server's (pd-facts §10.1), plus the fake-tikv ones the emulator also plays.
	name := flag.String("name", "pd", "member name")
	dataDir := flag.String("data-dir", "", "directory for the emulator's persisted state (default: in memory)")
	clientURLs := flag.String("client-urls", "http://127.0.0.1:2379", "URL to serve the HTTP API and gRPC on")
	advClientURLs := flag.String("advertise-client-urls", "", "client URL to advertise (default --client-urls)")
	peerURLs := flag.String("peer-urls", "http://127.0.0.1:2380", "peer URL (only reported; nothing listens on it)")
	advPeerURLs := flag.String("advertise-peer-urls", "", "peer URL to advertise (default --peer-urls)")
	configFile := flag.String("config", "", "pd.toml (a subset is understood: top-level keys, [schedule], [replication], [pd-server], [log] level)")
	logFile := flag.String("log-file", "", "log file (default stderr)")
	flag.String("log-level", "info", "accepted for compatibility; ignored")
	flag.String("L", "info", "accepted for compatibility; ignored")
	cacert := flag.String("cacert", "", "CA certificate (PEM); when set, clients must present a certificate it signed")
	cert := flag.String("cert", "", "server certificate (PEM)")
	key := flag.String("key", "", "server private key (PEM)")
	control := flag.String("control", "", "listen address of fake-tikv's HTTP control API (empty: none)")
	storeVersion := flag.String("store-version", "8.5.5", "TiKV version of every fake store (sets cluster-version)")
	bootstrap := flag.Bool("bootstrap", true, "bootstrap at start with the placeholder store, as fake-tikv does; with false the first POST /clusters does it")
	printVersion := flag.Bool("V", false, "print version and exit")
	flag.Parse()

	if *printVersion {
		fmt.Printf("Release Version: %s (pd-emulator)\nGit Commit Hash: %s\n", pdVersion, pdGitHash)
		return
	}
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			logger.Fatalf("log file: %v", err)
		}
		logger.SetOutput(f)
	}
	if *advClientURLs == "" {
		*advClientURLs = *clientURLs
	}
	if *advPeerURLs == "" {
		*advPeerURLs = *peerURLs
	}
	listenURL, err := url.Parse(strings.Split(*clientURLs, ",")[0])
	if err != nil || listenURL.Host == "" {
		logger.Fatalf("bad --client-urls %q", *clientURLs)
	}
	useTLS := listenURL.Scheme == "https"
	if useTLS != (*cert != "") {
		logger.Fatalf("https client URLs need --cert/--key, and --cert needs https client URLs")
	}

	exe, _ := os.Executable()
	e := &emulator{
		memberID: rand.Uint64(), name: *name, clientURLs: strings.Split(*advClientURLs, ","),
		peerURLs: strings.Split(*advPeerURLs, ","), deployPath: filepath.Dir(exe), startTime: time.Now(),
		storeVersion: *storeVersion, pauses: map[string]pause{},
	}
	if *dataDir != "" {
		if err := os.MkdirAll(*dataDir, 0o755); err != nil {
			logger.Fatal(err)
		}
		e.statePath = dataPath(*dataDir, "emulator-state.json")
	}
	if err := e.initConfig(*configFile, *dataDir, *logFile, *cacert, *cert, *key, *clientURLs, *peerURLs); err != nil {
		logger.Fatal(err)
	}
	if *bootstrap {
		e.bootstrap()
	}
	e.save()

	ln, err := net.Listen("tcp", listenURL.Host)
	if err != nil {
		logger.Fatalf("listen %s: %v", listenURL.Host, err)
	}
	srv := e.newServer()
	if useTLS {
		cfg, err := serverTLS(*cacert, *cert, *key)
		if err != nil {
			logger.Fatalf("TLS: %v", err)
		}
		srv.TLSConfig = cfg
	}
	go func() {
		if useTLS {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && err != http.ErrServerClosed {
			logger.Fatalf("serve: %v", err)
		}
	}()

	var ctlSrv *http.Server
	if *control != "" {
		cln, err := net.Listen("tcp", *control)
		if err != nil {
			logger.Fatalf("listen %s: %v", *control, err)
		}
		ctlSrv = &http.Server{Handler: e.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := ctlSrv.Serve(cln); err != nil && err != http.ErrServerClosed {
				logger.Fatalf("control API: %v", err)
			}
		}()
		logf("control API on http://%s", cln.Addr())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		t := time.NewTicker(heartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				e.heartbeat(now)
			}
		}
	}()
	logf("serving PD %s (cluster %d) on %s", pdVersion, e.ClusterID, *clientURLs)
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	if ctlSrv != nil {
		_ = ctlSrv.Shutdown(shutdownCtx)
	}
	e.mu.Lock()
	e.save()
	e.mu.Unlock()
	logf("stopped")
}

// newServer returns the server for the client port. One port serves both, like PD: gRPC requests are HTTP/2
// with a gRPC content type; everything else is the HTTP API (HTTP/1.1 or HTTP/2).
func (e *emulator) newServer() *http.Server {
	grpcSrv := grpc.NewServer()
	pdpb.RegisterPDServer(grpcSrv, &pdServer{e: e})
	brpb.RegisterBackupServer(grpcSrv, &backupServer{e: e}) // the TiKV stores' side, picked by :authority
	api := e.apiHandler()
	root := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcSrv.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge, as tonic and grpc-go speak it
	return &http.Server{Handler: root, Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(logger.Writer(), "pd-emulator http ", log.LstdFlags)}
}

func serverTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate found in %s", caFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert // PD: cacert set => ClientCertAuth
	}
	return cfg, nil
}

// initConfig loads the persisted state (a restart) or creates a fresh cluster, and fills in the /config
// template. As in PD, persisted schedule/replication/pd-server values win over the config file on restart.
func (e *emulator) initConfig(configFile, dataDir, logFile, cacert, cert, key, clientURLs, peerURLs string) error {
	tmpl, err := parseObject(defaultConfigJSON)
	if err != nil {
		return fmt.Errorf("embedded config: %w", err)
	}
	restarted, err := e.load()
	if err != nil {
		return err
	}
	if !restarted {
		e.ClusterID = newClusterID()
		e.NextID = 1
		e.Schedule, e.Replication, e.PDServer = tmpl.child("schedule"), tmpl.child("replication"), tmpl.child("pd-server")
		e.Schedule.setValue("store-limit", map[string]any{})
	}
	if e.SafePoints == nil {
		e.SafePoints = map[string]*serviceSafePoint{}
	}
	if e.TTL == nil {
		e.TTL = map[string]ttlEntry{}
	}
	now := time.Now()
	for _, s := range e.Stores {
		s.lastBeat = now
	}
	e.prepares, e.applyLag = map[uint64]*tikvPrepare{}, map[uint64]time.Duration{}
	if e.bootstrapped() && len(e.Regions) == 0 { // state written before the emulator modelled regions
		e.firstRegion(e.allocID(), e.allocID())
		e.giveRegions(now)
	}
	if err := e.checkRegions(); err != nil {
		return fmt.Errorf("%s: %w", e.statePath, err)
	}

	for k, v := range map[string]string{"client-urls": clientURLs, "peer-urls": peerURLs,
		"advertise-client-urls": strings.Join(e.clientURLs, ","), "advertise-peer-urls": strings.Join(e.peerURLs, ","),
		"name": e.name, "data-dir": dataDir, "initial-cluster": e.name + "=" + strings.Join(e.peerURLs, ",")} {
		tmpl.setValue(k, v)
	}
	logObj := tmpl.child("log")
	if f := logObj.child("file"); f != nil {
		f.setValue("filename", logFile)
		logObj.setValue("file", f)
	}
	if sec := tmpl.child("security"); sec != nil {
		sec.setValue("cacert-path", cacert)
		sec.setValue("cert-path", cert)
		sec.setValue("key-path", key)
		tmpl.setValue("security", sec)
	}

	if configFile != "" {
		items, err := readTOML(configFile)
		if err != nil {
			return err
		}
		for _, it := range items {
			var target *object
			switch it.section {
			case "":
				target = tmpl
			case "log":
				target = logObj
			case "schedule", "replication", "pd-server":
				if restarted {
					continue
				}
				target = e.configSection(it.section)
			default:
				logf("config %s: [%s] %s ignored by the emulator", configFile, it.section, it.key)
				continue
			}
			cur, ok := target.get(it.key)
			if !ok {
				logf("config %s: unknown item %s.%s ignored", configFile, it.section, it.key)
				continue
			}
			raw, err := coerce(cur, it.value)
			if err != nil {
				return fmt.Errorf("config %s: %s.%s: %v", configFile, it.section, it.key, err)
			}
			target.set(it.key, raw)
		}
	}
	tmpl.setValue("log", logObj)
	e.config = tmpl
	if restarted {
		logf("restarted on persisted state %s (cluster %d)", e.statePath, e.ClusterID)
	}
	return nil
}

type tomlItem struct {
	section, key string
	value        any
}

// readTOML understands the flat subset of TOML that ../start and PD_CONFIG_EXTRA write:
// [section] headers and key = "string" | 'string' | true | false | number.
func readTOML(path string) ([]tomlItem, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []tomlItem
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[] ")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: cannot parse %q", path, n, line)
		}
		k, v = strings.Trim(strings.TrimSpace(k), `"`), strings.TrimSpace(v)
		var value any
		switch {
		case strings.HasPrefix(v, `"`):
			s, err := strconv.Unquote(v[:strings.LastIndex(v, `"`)+1])
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %v", path, n, err)
			}
			value = s
		case strings.HasPrefix(v, `'`):
			value = strings.Trim(v[:strings.LastIndex(v, `'`)+1], `'`)
		default:
			if i := strings.Index(v, "#"); i >= 0 {
				v = strings.TrimSpace(v[:i])
			}
			var j any
			if err := json.Unmarshal([]byte(v), &j); err != nil {
				return nil, fmt.Errorf("%s:%d: unsupported value %q", path, n, v)
			}
			value = j
		}
		out = append(out, tomlItem{section, k, value})
	}
	return out, sc.Err()
}

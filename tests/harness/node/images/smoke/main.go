// smoke is the node's smoke-test container (tests/harness/node/smoke). It serves
//
//	GET /healthz           200 "ok" (the readiness probe)
//	GET /env?name=X        the value of the environment variable X
//	GET /probe?url=U       a GET of U from inside the pod; for https it sends the pod's ServiceAccount
//	                       token and trusts its CA, as an in-cluster client does. Replies
//	                       "<status code>\n<body>" or 502 with the error.
//
// and logs one line per request, so `kubectl logs` has something to show.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"
)

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	addr := ":8080"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, os.Getenv(r.URL.Query().Get("name")))
	})
	http.HandleFunc("/probe", probe)
	log.Printf("smoke: listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, logRequests(http.DefaultServeMux)))
}

func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			log.Printf("smoke: %s %s", r.Method, r.URL.RequestURI())
		}
		next.ServeHTTP(w, r)
	})
}

func probe(w http.ResponseWriter, r *http.Request) {
	url := r.URL.Query().Get("url")
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	client := &http.Client{Timeout: 10 * time.Second}
	if strings.HasPrefix(url, "https://") {
		token, err := os.ReadFile(serviceAccount + "/token")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		ca, err := os.ReadFile(serviceAccount + "/ca.crt")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	resp, err := client.Do(req)
	if err != nil {
		log.Printf("smoke: probe %s: %v", url, err)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	log.Printf("smoke: probe %s: %d", url, resp.StatusCode)
	fmt.Fprintf(w, "%d\n%s", resp.StatusCode, body)
}

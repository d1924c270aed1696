package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The control API is the same as fake-tikv's (see ../fake-tikv/control.go), so tests do not care which PD
// implementation runs.

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

type storeJSON struct {
	ID      uint64 `json:"id"`
	Address string `json:"address"`
	Pod     string `json:"pod"`
	Paused  bool   `json:"heartbeat_paused,omitempty"`
}

type clusterJSON struct {
	Name      string      `json:"name"`
	Namespace string      `json:"namespace"`
	Stores    []storeJSON `json:"stores"`
}

func storesJSON(list []*store) []storeJSON {
	out := []storeJSON{}
	for _, s := range list {
		if s != nil {
			out = append(out, storeJSON{ID: s.ID, Address: s.Address, Pod: s.Pod, Paused: s.paused})
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// controlHandler serves:
//
//	GET  /healthz                 200 {"status":"ok",...}
//	POST /clusters                {"name","namespace","stores"} -> {"name","namespace","stores":[{id,address,pod}]}
//	GET  /clusters                {"cluster_id","placeholder_store_id","clusters":[...]}
//	POST /stores/{id}/heartbeat   {"paused":true|false} stops/resumes heartbeats of one store
//	GET  /pause-windows           [{"start","end","lapsed"}] when schedulers were paused (DELETE clears)
//	/tikv/...                     the TiKV side of snapshot-backup preparation (see tikvControl)
func (e *emulator) controlHandler() http.Handler {
	mux := http.NewServeMux()
	e.tikvControl(mux)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		defer e.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{
			"status":          "ok",
			"cluster_id":      e.ClusterID,
			"bootstrapped":    e.bootstrapped(),
			"last_ts":         composeTS(time.Now(), 1),
			"last_tick_error": "",
			"emulator":        true,
		})
	})
	mux.HandleFunc("/pause-windows", e.pauseWindowsHandler)
	mux.HandleFunc("/clusters", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			e.mu.Lock()
			defer e.mu.Unlock()
			groups := map[clusterKey][]*store{}
			for _, s := range e.Stores {
				if s.Name == "" {
					continue
				}
				k := clusterKey{s.Namespace, s.Name}
				list := groups[k]
				for len(list) <= s.Index {
					list = append(list, nil)
				}
				list[s.Index] = s
				groups[k] = list
			}
			keys := make([]clusterKey, 0, len(groups))
			for k := range groups {
				keys = append(keys, k)
			}
			sort.Slice(keys, func(i, j int) bool {
				if keys[i].namespace != keys[j].namespace {
					return keys[i].namespace < keys[j].namespace
				}
				return keys[i].name < keys[j].name
			})
			out := []clusterJSON{}
			for _, k := range keys {
				out = append(out, clusterJSON{Name: k.name, Namespace: k.namespace, Stores: storesJSON(groups[k])})
			}
			writeJSON(w, http.StatusOK, map[string]any{"cluster_id": e.ClusterID, "placeholder_store_id": e.PlaceholderID, "clusters": out})
		case http.MethodPost:
			var req struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
				Stores    int    `json:"stores"`
			}
			dec := json.NewDecoder(r.Body)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req); err != nil {
				writeError(w, http.StatusBadRequest, "bad JSON: %v", err)
				return
			}
			if !dnsLabel.MatchString(req.Name) || !dnsLabel.MatchString(req.Namespace) {
				writeError(w, http.StatusBadRequest, "name and namespace must be DNS labels")
				return
			}
			if req.Stores < 1 || req.Stores > 1000 {
				writeError(w, http.StatusBadRequest, "stores must be 1..1000")
				return
			}
			e.mu.Lock()
			list := e.register(req.Name, req.Namespace, req.Stores)
			resp := clusterJSON{Name: req.Name, Namespace: req.Namespace, Stores: storesJSON(list)}
			e.mu.Unlock()
			writeJSON(w, http.StatusOK, resp)
		default:
			writeError(w, http.StatusMethodNotAllowed, "use GET or POST")
		}
	})
	mux.HandleFunc("/stores/", func(w http.ResponseWriter, r *http.Request) {
		rest := strings.TrimPrefix(r.URL.Path, "/stores/")
		idStr, action, _ := strings.Cut(rest, "/")
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil || action != "heartbeat" || r.Method != http.MethodPost {
			writeError(w, http.StatusNotFound, "use POST /stores/{id}/heartbeat {\"paused\":bool}")
			return
		}
		var req struct {
			Paused bool `json:"paused"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "bad JSON: %v", err)
			return
		}
		e.mu.Lock()
		s := e.storeByID(id)
		if s != nil {
			e.setPaused(s, req.Paused)
		}
		e.mu.Unlock()
		if s == nil {
			writeError(w, http.StatusNotFound, "store %d is not a fake-tikv store", id)
			return
		}
		logf("store %d heartbeat paused=%v", id, req.Paused)
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "heartbeat_paused": req.Paused, "at": time.Now().UTC()})
	})
	return mux
}

type clusterKey struct{ namespace, name string }

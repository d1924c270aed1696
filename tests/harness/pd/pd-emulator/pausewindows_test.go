package main

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"
)

func TestPauseWindowsSpanFirstPauseToLastResume(t *testing.T) {
	te := newTestEnv(t)
	windows := func() []pauseWindow {
		rec := httptest.NewRecorder()
		te.e.pauseWindowsHandler(rec, httptest.NewRequest("GET", "/pause-windows", nil))
		var got []pauseWindow
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := windows(); len(got) != 0 {
		t.Fatalf("windows before any pause: %+v", got)
	}
	start := time.Now()
	te.call("POST", "schedulers/balance-leader-scheduler", `{"delay":60}`, 200, nil)
	te.call("POST", "schedulers/balance-region-scheduler", `{"delay":60}`, 200, nil)
	te.call("POST", "schedulers/balance-leader-scheduler", `{"delay":0}`, 200, nil)
	if got := windows(); len(got) != 1 || got[0].End != nil || got[0].Start.Before(start) {
		t.Fatalf("one open window expected while a scheduler is still paused: %+v", got)
	}
	te.call("POST", "schedulers/balance-region-scheduler", `{"delay":0}`, 200, nil)
	got := windows()
	if len(got) != 1 || got[0].End == nil || got[0].Lapsed || got[0].End.Before(got[0].Start) {
		t.Fatalf("one closed window expected after the last resume: %+v", got)
	}
	// A pause that runs out on its own ends its window when it lapses.
	te.call("POST", "schedulers/all", `{"delay":1}`, 200, nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = windows()
		if len(got) == 2 && got[1].End != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lapsed pause's window never closed: %+v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !got[1].Lapsed {
		t.Fatalf("a pause that ran out must read as lapsed: %+v", got[1])
	}
}

package main

import (
	"net/http"
	"time"
)

// pauseWindow is one stretch of time during which at least one scheduler was paused, as this PD saw it:
// from the request that paused the first to the request that resumed the last (or, when the pauses ran out
// on their own, the moment the last one lapsed). Benchmarks read these instead of polling, so the window
// they report has the resolution of the clock, not of a poll loop.
type pauseWindow struct {
	Start  time.Time  `json:"start"`
	End    *time.Time `json:"end"`
	Lapsed bool       `json:"lapsed"`
}

// anyPauseAt reports whether a scheduler pause is in force at now, and when the last one runs out. Callers
// hold e.mu.
func (e *emulator) anyPauseAt(now time.Time) (bool, time.Time) {
	var last int64
	for _, pz := range e.pauses {
		if pz.until > last {
			last = pz.until
		}
	}
	return now.Unix() < last, time.Unix(last, 0)
}

// notePauses is called around every change to e.pauses: before is what anyPauseAt said just before it.
// Callers hold e.mu.
func (e *emulator) notePauses(before bool, now time.Time) {
	after, _ := e.anyPauseAt(now)
	switch {
	case !before && after:
		e.pauseWindows = append(e.pauseWindows, pauseWindow{Start: now})
	case before && !after:
		e.closePauseWindow(now, false)
	}
}

// closeLapsedPauseWindow ends an open window whose pauses ran out without a resume request.
func (e *emulator) closeLapsedPauseWindow(now time.Time) {
	if paused, lapsedAt := e.anyPauseAt(now); !paused {
		e.closePauseWindow(lapsedAt, true)
	}
}

func (e *emulator) closePauseWindow(at time.Time, lapsed bool) {
	if n := len(e.pauseWindows); n > 0 && e.pauseWindows[n-1].End == nil {
		e.pauseWindows[n-1].End = &at
		e.pauseWindows[n-1].Lapsed = lapsed
	}
}

// pauseWindowsHandler serves GET /pause-windows (every window since the last DELETE, oldest first) and
// DELETE /pause-windows.
func (e *emulator) pauseWindowsHandler(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		e.closeLapsedPauseWindow(time.Now())
		windows := e.pauseWindows
		if windows == nil {
			windows = []pauseWindow{}
		}
		writeJSON(w, http.StatusOK, windows)
	case http.MethodDelete:
		e.pauseWindows = nil
		writeJSON(w, http.StatusOK, []pauseWindow{})
	default:
		writeError(w, http.StatusMethodNotAllowed, "GET or DELETE /pause-windows")
	}
}

package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
)

// API request and response bodies, shared with the CLI.

// VIPAddRequest adds a VIP.
type VIPAddRequest struct {
	VIP         string `json:"vip"`
	Forward     string `json:"forward"`
	RingSize    uint32 `json:"ring_size"`
	MinActive   int    `json:"min_active"`
	UDPTimeout  string `json:"udp_timeout"`
	Policy      string `json:"policy,omitempty"`
	PromoteCmd  string `json:"promote_cmd,omitempty"`
	PromoteURL  string `json:"promote_url,omitempty"`
	DemoteCmd   string `json:"demote_cmd,omitempty"`
	HookTimeout string `json:"hook_timeout,omitempty"`
	Failback    bool   `json:"failback,omitempty"`
}

// BackendAddRequest adds a backend to a VIP.
type BackendAddRequest struct {
	VIP     string        `json:"vip"`
	Backend state.Backend `json:"backend"`
}

// BackendActionRequest changes one backend: del, drain, undrain, disable, enable.
type BackendActionRequest struct {
	VIP    string `json:"vip"`
	Addr   string `json:"addr"`
	Action string `json:"action"`
}

// ApplyRequest replaces the desired state.
type ApplyRequest struct {
	State  state.State `json:"state"`
	DryRun bool        `json:"dry_run"`
}

// ApplyResponse reports an apply.
type ApplyResponse struct {
	Diff     []string `json:"diff"`
	Revision uint64   `json:"revision"`
	Changed  bool     `json:"changed"`
}

// RingResponse is a VIP's ring read back from the kernel.
type RingResponse struct {
	VIP      string   `json:"vip"`
	RingSize int      `json:"ring_size"`
	Slots    []string `json:"slots"`
}

// ErrorResponse carries an error message.
type ErrorResponse struct {
	Error string `json:"error"`
}

type httpError struct {
	code int
	err  error
}

func (e httpError) Error() string { return e.err.Error() }
func (e httpError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return httpError{http.StatusBadRequest, fmt.Errorf(format, args...)}
}

func notFound(format string, args ...any) error {
	return httpError{http.StatusNotFound, fmt.Errorf(format, args...)}
}

func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, fn func(*http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			out, err := fn(r)
			w.Header().Set("Content-Type", "application/json")
			if err != nil {
				code := http.StatusBadRequest
				var he httpError
				if errors.As(err, &he) {
					code = he.code
				}
				w.WriteHeader(code)
				json.NewEncoder(w).Encode(ErrorResponse{Error: err.Error()})
				return
			}
			json.NewEncoder(w).Encode(out)
		})
	}
	handle("GET /v1/status", func(*http.Request) (any, error) { return d.Status() })
	handle("GET /v1/state", func(*http.Request) (any, error) { return d.State(), nil })
	handle("POST /v1/apply", d.apiApply)
	handle("POST /v1/vips", d.apiVIPAdd)
	handle("DELETE /v1/vips", func(r *http.Request) (any, error) {
		k, err := state.ParseVIPKey(r.URL.Query().Get("vip"))
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return d.Change(r.Context(), "vip del "+state.FormatVIPKey(k), func(s *state.State) error {
			i := s.FindVIP(k)
			if i < 0 {
				return notFound("vip %s: no such vip", state.FormatVIPKey(k))
			}
			s.VIPs = append(s.VIPs[:i], s.VIPs[i+1:]...)
			return nil
		})
	})
	handle("GET /v1/ring", d.apiRing)
	handle("POST /v1/backends", d.apiBackendAdd)
	handle("POST /v1/backends/action", d.apiBackendAction)
	handle("GET /v1/backup", func(*http.Request) (any, error) { return state.NewSnapshot(d.State(), time.Now()) })
	handle("POST /v1/restore", func(r *http.Request) (any, error) {
		data, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		if err != nil {
			return nil, err
		}
		snap, err := state.ParseSnapshot(data)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return d.Change(r.Context(), fmt.Sprintf("backup restored (snapshot revision %d)", snap.Revision), func(s *state.State) error {
			s.VIPs = state.KeepFailover(s.VIPs, snap.VIPs)
			return nil
		})
	})
	handle("GET /v1/backups", func(*http.Request) (any, error) { return d.store.Archive() })
	handle("POST /v1/drills", func(r *http.Request) (any, error) {
		var req DrillRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return d.Drill(r.Context(), req)
	})
	handle("GET /v1/drills", func(*http.Request) (any, error) { return d.Drills() })
	handle("GET /v1/counters", func(*http.Request) (any, error) { return d.Counters() })
	handle("GET /v1/availability", func(*http.Request) (any, error) { return d.Availability() })
	handle("POST /v1/promote", func(r *http.Request) (any, error) {
		var req PromoteRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return d.Promote(r.Context(), req.VIP, req.Addr)
	})
	handle("GET /v1/ha/status", func(*http.Request) (any, error) { return d.HAStatus(), nil })
	handle("POST /v1/ha/failover", func(*http.Request) (any, error) {
		if d.pair == nil {
			return nil, httpError{http.StatusConflict, errors.New("ha failover: this daemon is not part of an LB pair (start it with --ha-peer)")}
		}
		return d.pair.handoff()
	})
	mux.HandleFunc("GET /v1/events", d.apiEvents)
	return mux
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	return nil
}

func (d *Daemon) apiVIPAdd(r *http.Request) (any, error) {
	var req VIPAddRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, err := state.ParseVIPKey(req.VIP)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	v := state.VIP{VIP: state.FormatVIPKey(k), Forward: req.Forward, RingSize: req.RingSize, MinActive: req.MinActive,
		Policy: req.Policy, PromoteCmd: req.PromoteCmd, PromoteURL: req.PromoteURL, DemoteCmd: req.DemoteCmd, Failback: req.Failback}
	if req.HookTimeout != "" {
		t, err := time.ParseDuration(req.HookTimeout)
		if err != nil || t <= 0 {
			return nil, badRequest("--hook-timeout %q: want a positive duration such as 10s", req.HookTimeout)
		}
		v.HookTimeout = state.Duration(t)
	}
	if req.UDPTimeout != "" {
		t, err := time.ParseDuration(req.UDPTimeout)
		if err != nil || t <= 0 {
			return nil, badRequest("--udp-timeout %q: want a positive duration such as 30s", req.UDPTimeout)
		}
		v.UDPTimeout = state.Duration(t)
	}
	return d.Change(r.Context(), "vip add "+v.VIP, func(s *state.State) error {
		if s.FindVIP(k) >= 0 {
			return httpError{http.StatusConflict, fmt.Errorf("vip %s: already exists", v.VIP)}
		}
		s.VIPs = append(s.VIPs, v)
		return nil
	})
}

func (d *Daemon) apiBackendAdd(r *http.Request) (any, error) {
	var req BackendAddRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, err := state.ParseVIPKey(req.VIP)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	addr, err := netip.ParseAddr(req.Backend.Addr)
	if err != nil {
		return nil, badRequest("backend address %q: not an IP address", req.Backend.Addr)
	}
	return d.Change(r.Context(), fmt.Sprintf("backend add %s %s", state.FormatVIPKey(k), addr), func(s *state.State) error {
		i := s.FindVIP(k)
		if i < 0 {
			return notFound("vip %s: no such vip", state.FormatVIPKey(k))
		}
		if s.VIPs[i].FindBackend(addr) >= 0 {
			return httpError{http.StatusConflict, fmt.Errorf("backend %s of %s: already exists", addr, state.FormatVIPKey(k))}
		}
		if k.Port == 0 && req.Backend.Check.Port == 0 && req.Backend.Check.Type != string(health.None) {
			return badRequest("--check-port: required for a VIP on port 0 (or --check none)")
		}
		s.VIPs[i].Backends = append(s.VIPs[i].Backends, req.Backend)
		return nil
	})
}

func (d *Daemon) apiBackendAction(r *http.Request) (any, error) {
	var req BackendActionRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, err := state.ParseVIPKey(req.VIP)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	addr, err := netip.ParseAddr(req.Addr)
	if err != nil {
		return nil, badRequest("backend address %q: not an IP address", req.Addr)
	}
	switch req.Action {
	case "del", "drain", "undrain", "disable", "enable":
	default:
		return nil, badRequest("action %q: want del, drain, undrain, disable or enable", req.Action)
	}
	return d.Change(r.Context(), fmt.Sprintf("backend %s %s %s", req.Action, state.FormatVIPKey(k), addr), func(s *state.State) error {
		i := s.FindVIP(k)
		if i < 0 {
			return notFound("vip %s: no such vip", state.FormatVIPKey(k))
		}
		v := &s.VIPs[i]
		j := v.FindBackend(addr)
		if j < 0 {
			return notFound("backend %s of %s: no such backend", addr, state.FormatVIPKey(k))
		}
		switch req.Action {
		case "del":
			v.Backends = append(v.Backends[:j], v.Backends[j+1:]...)
		case "drain":
			v.Backends[j].Drain = true
		case "undrain":
			v.Backends[j].Drain = false
		case "disable":
			v.Backends[j].Disabled = true
		case "enable":
			v.Backends[j].Disabled = false
		}
		return nil
	})
}

func (d *Daemon) apiRing(r *http.Request) (any, error) {
	k, err := state.ParseVIPKey(r.URL.Query().Get("vip"))
	if err != nil {
		return nil, badRequest("%v", err)
	}
	if st := d.State(); st.FindVIP(k) < 0 {
		return nil, notFound("vip %s: no such vip", state.FormatVIPKey(k))
	}
	ring, err := d.dp.Ring(k)
	if err != nil {
		return nil, err
	}
	bes, err := d.dp.Backends()
	if err != nil {
		return nil, err
	}
	out := RingResponse{VIP: state.FormatVIPKey(k), RingSize: len(ring), Slots: make([]string, len(ring))}
	for i, s := range ring {
		if b, ok := bes[s]; ok && s != 0 {
			out.Slots[i] = b.Addr.String()
		}
	}
	return out, nil
}

func (d *Daemon) apiApply(r *http.Request) (any, error) {
	var req ApplyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	next := req.State.Clone()
	next.Normalize()
	if err := next.Validate(); err != nil {
		return nil, badRequest("%v", err)
	}
	cur := d.State()
	diff := state.Diff(cur, next)
	if req.DryRun || len(diff) == 0 {
		return ApplyResponse{Diff: diff, Revision: cur.Revision}, nil
	}
	st, err := d.Change(r.Context(), "apply", func(s *state.State) error {
		s.VIPs = state.KeepFailover(s.VIPs, next.VIPs)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ApplyResponse{Diff: diff, Revision: st.Revision, Changed: st.Revision != cur.Revision}, nil
}

func (d *Daemon) apiEvents(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for _, e := range d.events.List() {
		enc.Encode(e)
	}
	if r.URL.Query().Get("follow") == "" {
		return
	}
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	c, stop := d.events.Follow()
	defer stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-c:
			if enc.Encode(e) != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}

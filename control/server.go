package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// maxBody bounds a request body read from the socket.
const maxBody = 64 << 20

// statusOf maps a refusal to its HTTP status: domain code returns plain
// errors of a kind (state.ErrNotFound, state.ErrConflict, ErrNotMaster);
// anything else is bad input.
func statusOf(err error) int {
	switch {
	case errors.Is(err, state.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, state.ErrConflict), errors.Is(err, ErrNotMaster):
		return http.StatusConflict
	}
	return http.StatusBadRequest
}

// handler serves one API call as JSON. Changes run under the daemon's
// context, never the request's: a client that goes away (Ctrl-C) after
// sending a change must not leave it committed but half applied.
type handler func(*http.Request) (any, error)

func (h handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out, err := h(r)
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(statusOf(err))
		out = api.ErrorResponse{Error: err.Error()}
	}
	json.NewEncoder(w).Encode(out)
}

// apiHandler is the daemon's API on its unix socket.
func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	d.stateRoutes(mux)
	d.failoverRoutes(mux)
	mux.Handle("GET /v1/status", handler(func(*http.Request) (any, error) { return d.Status() }))
	mux.Handle("GET /v1/counters", handler(func(*http.Request) (any, error) { return d.Counters() }))
	mux.Handle("GET /v1/ring", handler(d.apiRing))
	mux.Handle("GET /v1/ha/status", handler(func(*http.Request) (any, error) { return d.HAStatus(), nil }))
	mux.Handle("POST /v1/ha/failover", handler(func(*http.Request) (any, error) {
		if d.pair == nil {
			return nil, state.Conflict("ha failover: this daemon is not part of an LB pair (it was started without peers)")
		}
		return d.pair.Handoff()
	}))
	mux.Handle("GET /v1/bgp", handler(func(r *http.Request) (any, error) { return d.BGPStatus(r.Context()) }))
	mux.Handle("POST /v1/node/drain", handler(func(r *http.Request) (any, error) { return d.Drain(r.Context()) }))
	mux.Handle("POST /v1/node/undrain", handler(func(r *http.Request) (any, error) { return d.Undrain(r.Context()) }))
	mux.Handle("GET /v1/cluster", handler(func(r *http.Request) (any, error) { return d.ClusterStatus(r.Context()), nil }))
	mux.HandleFunc("GET /v1/events", d.apiEvents)
	return mux
}

// stateRoutes change and read the desired state and its backups.
func (d *Daemon) stateRoutes(mux *http.ServeMux) {
	mux.Handle("GET /v1/state", handler(func(*http.Request) (any, error) { return d.State(), nil }))
	mux.Handle("POST /v1/apply", handler(d.apiApply))
	mux.Handle("POST /v1/vips", handler(d.apiVIPAdd))
	mux.Handle("DELETE /v1/vips", handler(d.apiVIPDel))
	mux.Handle("POST /v1/backends", handler(d.apiBackendAdd))
	mux.Handle("POST /v1/backends/action", handler(d.apiBackendAction))
	mux.Handle("GET /v1/backup", handler(func(*http.Request) (any, error) { return state.NewSnapshot(d.State(), time.Now()) }))
	mux.Handle("POST /v1/restore", handler(d.apiRestore))
	mux.Handle("GET /v1/backups", handler(func(*http.Request) (any, error) { return d.store.Archive() }))
}

// failoverRoutes run promotions and drills and report availability.
func (d *Daemon) failoverRoutes(mux *http.ServeMux) {
	mux.Handle("POST /v1/drills", handler(func(r *http.Request) (any, error) {
		var req api.DrillRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return d.Drill(d.ctx, req)
	}))
	mux.Handle("GET /v1/drills", handler(func(*http.Request) (any, error) { return d.Drills() }))
	mux.Handle("GET /v1/availability", handler(func(*http.Request) (any, error) { return d.Availability() }))
	mux.Handle("POST /v1/promote", handler(func(r *http.Request) (any, error) {
		var req api.PromoteRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return d.Promote(d.ctx, req.VIP, req.Addr)
	}))
}

func (d *Daemon) apiVIPDel(r *http.Request) (any, error) {
	k, err := state.ParseVIPKey(r.URL.Query().Get("vip"))
	if err != nil {
		return nil, err
	}
	return d.Change(d.ctx, "vip del "+state.FormatVIPKey(k), func(s *state.State) error {
		i, err := s.LookupVIP(k)
		if err != nil {
			return err
		}
		s.VIPs = append(s.VIPs[:i], s.VIPs[i+1:]...)
		return nil
	})
}

// apiRestore checks a snapshot completely before it changes anything, on
// the same path as state.RestoreSnapshot.
func (d *Daemon) apiRestore(r *http.Request) (any, error) {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("request body: %w", err)
	}
	change, rev, err := state.Restore(data)
	if err != nil {
		return nil, err
	}
	return d.Change(d.ctx, fmt.Sprintf("backup restored (snapshot revision %d)", rev), change)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %v", err)
	}
	return nil
}

func (d *Daemon) apiVIPAdd(r *http.Request) (any, error) {
	var req api.VIPAddRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, err := state.ParseVIPKey(req.VIP)
	if err != nil {
		return nil, err
	}
	v := req.Model()
	v.VIP = state.FormatVIPKey(k)
	return d.Change(d.ctx, "vip add "+v.VIP, func(s *state.State) error {
		if s.FindVIP(k) >= 0 {
			return state.Conflict("vip %s: already exists", v.VIP)
		}
		s.VIPs = append(s.VIPs, v)
		return nil
	})
}

// vipAndBackend parses a request's VIP and backend address.
func vipAndBackend(vip, addr string) (state.VIPKey, netip.Addr, error) {
	k, err := state.ParseVIPKey(vip)
	if err != nil {
		return state.VIPKey{}, netip.Addr{}, err
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return state.VIPKey{}, netip.Addr{}, fmt.Errorf("backend address %q: not an IP address", addr)
	}
	return k, a, nil
}

func (d *Daemon) apiBackendAdd(r *http.Request) (any, error) {
	var req api.BackendAddRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, addr, err := vipAndBackend(req.VIP, req.Backend.Addr)
	if err != nil {
		return nil, err
	}
	return d.Change(d.ctx, fmt.Sprintf("backend add %s %s", state.FormatVIPKey(k), addr), func(s *state.State) error {
		i, err := s.LookupVIP(k)
		if err != nil {
			return err
		}
		if s.VIPs[i].FindBackend(addr) >= 0 {
			return state.Conflict("backend %s of %s: already exists", addr, state.FormatVIPKey(k))
		}
		s.VIPs[i].Backends = append(s.VIPs[i].Backends, req.Backend)
		return nil
	})
}

func (d *Daemon) apiBackendAction(r *http.Request) (any, error) {
	var req api.BackendActionRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, addr, err := vipAndBackend(req.VIP, req.Addr)
	if err != nil {
		return nil, err
	}
	switch req.Action {
	case "del", "drain", "undrain", "disable", "enable":
	default:
		return nil, fmt.Errorf("action %q: want del, drain, undrain, disable or enable", req.Action)
	}
	return d.Change(d.ctx, fmt.Sprintf("backend %s %s %s", req.Action, state.FormatVIPKey(k), addr), func(s *state.State) error {
		i, err := s.LookupVIP(k)
		if err != nil {
			return err
		}
		v := &s.VIPs[i]
		j := v.FindBackend(addr)
		if j < 0 {
			return state.NotFound("backend %s of %s: no such backend", addr, state.FormatVIPKey(k))
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
		return nil, err
	}
	if st := d.State(); st.FindVIP(k) < 0 {
		return nil, state.NotFound("vip %s: no such vip", state.FormatVIPKey(k))
	}
	ring, err := d.rec.ReadRing(k)
	if err != nil {
		return nil, err
	}
	bes, err := d.dp.Backends()
	if err != nil {
		return nil, err
	}
	out := api.RingResponse{VIP: state.FormatVIPKey(k), RingSize: len(ring), Slots: make([]string, len(ring))}
	for i, s := range ring {
		if b, ok := bes[s]; ok && s != 0 {
			out.Slots[i] = b.Addr.String()
		}
	}
	return out, nil
}

func (d *Daemon) apiApply(r *http.Request) (any, error) {
	var req api.ApplyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	next := req.State.Clone()
	next.Normalize()
	if err := next.Validate(); err != nil {
		return nil, err
	}
	cur := d.State()
	diff := state.Diff(cur, next)
	if req.DryRun || len(diff) == 0 {
		return api.ApplyResponse{Diff: diff, Revision: cur.Revision}, nil
	}
	st, err := d.Change(d.ctx, "apply", func(s *state.State) error {
		s.VIPs = state.KeepFailover(s.VIPs, next.VIPs)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return api.ApplyResponse{Diff: diff, Revision: st.Revision, Changed: st.Revision != cur.Revision}, nil
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

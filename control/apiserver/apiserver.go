// Package apiserver is the daemon's HTTP API on its unix socket: it maps
// each request to the core, the topology, the route announcer or the
// failover manager, and domain errors (state.ErrNotFound,
// state.ErrConflict, anything else: bad input) to status codes. It holds
// no rule of its own.
package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// Core is the desired state, its changes and what the data plane holds.
type Core interface {
	State() state.State
	Change(ctx context.Context, what string, change func(*state.State) error) (state.State, error)
	Status() (api.Status, error)
	Counters() (map[string]map[string]uint64, error)
	Ring(k state.VIPKey) (api.RingResponse, error)
	Archive() ([]state.ArchiveEntry, error)
	Availability() (api.AvailabilityReport, error)
}

// Topology is the pair's and the cluster's part of the API.
type Topology interface {
	HAStatus() api.HAStatus
	Handoff() (api.HAStatus, error)
	ClusterStatus(ctx context.Context) api.ClusterStatus
}

// Routes are BGP's part.
type Routes interface {
	Status(ctx context.Context) (api.BGPStatus, error)
	Drain(ctx context.Context) (api.BGPStatus, error)
	Undrain(ctx context.Context) (api.BGPStatus, error)
}

// Failover runs promotions and drills.
type Failover interface {
	Promote(ctx context.Context, vip, addr string) (api.PromoteResult, error)
	Drill(ctx context.Context, req api.DrillRequest) (api.DrillReport, error)
	Drills() ([]api.DrillReport, error)
}

// Events are the daemon's recent events and their followers.
type Events interface {
	List() []api.Event
	Follow() (<-chan api.Event, func())
}

// Server is the API. Changes run under Ctx, the daemon's context, never
// the request's: a client that goes away (Ctrl-C) after sending a change
// must not leave it committed but half applied.
type Server struct {
	Ctx      context.Context
	Core     Core
	Topology Topology
	Routes   Routes
	Failover Failover
	Events   Events
}

// maxBody bounds a request body read from the socket.
const maxBody = 64 << 20

// statusOf maps a refusal to its HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, state.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, state.ErrConflict):
		return http.StatusConflict
	}
	return http.StatusBadRequest
}

// handler serves one API call as JSON.
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

// read answers with what fn reads.
func read[T any](fn func() (T, error)) handler {
	return func(*http.Request) (any, error) { return fn() }
}

// Handler is the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.stateRoutes(mux)
	s.failoverRoutes(mux)
	mux.Handle("GET /v1/status", read(s.Core.Status))
	mux.Handle("GET /v1/counters", read(s.Core.Counters))
	mux.Handle("GET /v1/ring", handler(func(r *http.Request) (any, error) {
		k, err := state.ParseVIPKey(r.URL.Query().Get("vip"))
		if err != nil {
			return nil, err
		}
		return s.Core.Ring(k)
	}))
	mux.Handle("GET /v1/ha/status", handler(func(*http.Request) (any, error) { return s.Topology.HAStatus(), nil }))
	mux.Handle("POST /v1/ha/failover", read(s.Topology.Handoff))
	mux.Handle("GET /v1/bgp", handler(func(r *http.Request) (any, error) { return s.Routes.Status(r.Context()) }))
	mux.Handle("POST /v1/node/drain", handler(func(r *http.Request) (any, error) { return s.Routes.Drain(r.Context()) }))
	mux.Handle("POST /v1/node/undrain", handler(func(r *http.Request) (any, error) { return s.Routes.Undrain(r.Context()) }))
	mux.Handle("GET /v1/cluster", handler(func(r *http.Request) (any, error) { return s.Topology.ClusterStatus(r.Context()), nil }))
	mux.HandleFunc("GET /v1/events", s.events)
	return mux
}

// stateRoutes change and read the desired state and its backups.
func (s *Server) stateRoutes(mux *http.ServeMux) {
	mux.Handle("GET /v1/state", handler(func(*http.Request) (any, error) { return s.Core.State(), nil }))
	mux.Handle("POST /v1/apply", handler(s.apply))
	mux.Handle("POST /v1/vips", handler(func(r *http.Request) (any, error) {
		var req api.VIPAddRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		k, err := state.ParseVIPKey(req.VIP)
		if err != nil {
			return nil, err
		}
		return s.Core.Change(s.Ctx, "vip add "+k.String(), state.AddVIP(req.Model()))
	}))
	mux.Handle("DELETE /v1/vips", handler(func(r *http.Request) (any, error) {
		k, err := state.ParseVIPKey(r.URL.Query().Get("vip"))
		if err != nil {
			return nil, err
		}
		return s.Core.Change(s.Ctx, "vip del "+k.String(), state.DeleteVIP(k))
	}))
	mux.Handle("POST /v1/backends", handler(s.backendAdd))
	mux.Handle("POST /v1/backends/action", handler(s.backendAction))
	mux.Handle("GET /v1/backup", handler(func(*http.Request) (any, error) { return state.NewSnapshot(s.Core.State(), time.Now()) }))
	mux.Handle("POST /v1/restore", handler(s.restore))
	mux.Handle("GET /v1/backups", read(s.Core.Archive))
}

// failoverRoutes run promotions and drills and report availability.
func (s *Server) failoverRoutes(mux *http.ServeMux) {
	mux.Handle("POST /v1/drills", handler(func(r *http.Request) (any, error) {
		var req api.DrillRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return s.Failover.Drill(s.Ctx, req)
	}))
	mux.Handle("GET /v1/drills", read(s.Failover.Drills))
	mux.Handle("GET /v1/availability", read(s.Core.Availability))
	mux.Handle("POST /v1/promote", handler(func(r *http.Request) (any, error) {
		var req api.PromoteRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return s.Failover.Promote(s.Ctx, req.VIP, req.Addr)
	}))
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %v", err)
	}
	return nil
}

func (s *Server) backendAdd(r *http.Request) (any, error) {
	var req api.BackendAddRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, addr, err := state.ParseBackend(req.VIP, req.Backend.Addr)
	if err != nil {
		return nil, err
	}
	return s.Core.Change(s.Ctx, fmt.Sprintf("backend add %s %s", k, addr), state.AddBackend(k, req.Backend))
}

func (s *Server) backendAction(r *http.Request) (any, error) {
	var req api.BackendActionRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, addr, err := state.ParseBackend(req.VIP, req.Addr)
	if err != nil {
		return nil, err
	}
	if err := state.ValidBackendAction(req.Action); err != nil {
		return nil, err
	}
	return s.Core.Change(s.Ctx, fmt.Sprintf("backend %s %s %s", req.Action, k, addr), state.ChangeBackend(k, addr, req.Action))
}

// restore checks a snapshot completely before it changes anything, on
// the same path as state.RestoreSnapshot.
func (s *Server) restore(r *http.Request) (any, error) {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("request body: %w", err)
	}
	change, rev, err := state.Restore(data)
	if err != nil {
		return nil, err
	}
	return s.Core.Change(s.Ctx, fmt.Sprintf("backup restored (snapshot revision %d)", rev), change)
}

func (s *Server) apply(r *http.Request) (any, error) {
	var req api.ApplyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	next := req.State.Clone()
	next.Normalize()
	if err := next.Validate(); err != nil {
		return nil, err
	}
	cur := s.Core.State()
	diff := state.Diff(cur, next)
	if req.DryRun || len(diff) == 0 {
		return api.ApplyResponse{Diff: diff, Revision: cur.Revision}, nil
	}
	st, err := s.Core.Change(s.Ctx, "apply", state.ReplaceVIPs(next.VIPs))
	if err != nil {
		return nil, err
	}
	return api.ApplyResponse{Diff: diff, Revision: st.Revision, Changed: st.Revision != cur.Revision}, nil
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for _, e := range s.Events.List() {
		enc.Encode(e)
	}
	if r.URL.Query().Get("follow") == "" {
		return
	}
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	c, stop := s.Events.Follow()
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

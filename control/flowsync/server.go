package flowsync

import (
	"context"
	"net/http"
	"net/netip"

	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/loader"
)

func (s *Syncer) refuse(reason string) { s.refused.WithLabelValues(reason).Inc() }

// serve answers live nodes only, maxConns at a time, with read and idle
// timeouts, until ctx ends.
func (s *Syncer) serve(ctx context.Context) {
	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: readTimeout, ReadTimeout: readTimeout,
		WriteTimeout: dumpTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: headerBytes}
	go srv.Serve(&ha.PeerListener{Listener: s.ln, Allowed: s.isPeer, Refused: s.refuse, Slots: make(chan struct{}, maxConns)})
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
}

// maxRequest bounds a request body of kind.
func maxRequest(kind string) int64 {
	if kind == "flows" {
		return maxBatchBody
	}
	return 0 // a dump request carries nothing
}

// maxResponse bounds an answer of kind.
func (s *Syncer) maxResponse(kind string) int64 {
	if kind == "flows-dump" {
		n := s.opts.MaxFlows
		if n <= 0 {
			n = 2 * loader.DefaultFlowTableSize
		}
		return int64(n) * ha.MaxFlowEntry
	}
	return maxAnswer
}

func (s *Syncer) handler() http.Handler {
	mux := http.NewServeMux()
	serve := func(pattern, kind string, fn func(body []byte) ([]byte, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			body, code, reason, err := ha.ReadBody(r, maxRequest(kind))
			if err != nil {
				s.refuse(reason)
				http.Error(w, kind+": "+err.Error(), code)
				return
			}
			if _, err := s.verify.Verify(r.Header, kind, body); err != nil {
				s.refuse(ha.Reason(err))
				http.Error(w, "refused: "+ha.Reason(err), http.StatusForbidden)
				return
			}
			out, err := fn(body)
			if err != nil {
				s.refuse("malformed")
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			ha.SignResponse(s.opts.Key, r.Header, w.Header(), kind, out)
			w.Write(out)
		})
	}
	serve("POST /flowsync/flows", "flows", func(body []byte) ([]byte, error) {
		fs, err := ha.UnmarshalFlows(body)
		if err != nil {
			return nil, err
		}
		applied, unknown := Apply(s.host, s.dp, fs, s.log)
		s.entries.WithLabelValues("received", "applied").Add(float64(applied))
		s.entries.WithLabelValues("received", "unknown").Add(float64(unknown))
		return nil, nil
	})
	serve("GET /flowsync/flows-dump", "flows-dump", func([]byte) ([]byte, error) {
		flows, err := s.dp.Flows()
		if err != nil {
			return nil, err
		}
		return ha.MarshalFlows(Entries(s.host.BackendAddrs(), flows)), nil
	})
	return mux
}

// Entries turns data-plane flows into synced entries: each backend index
// becomes its address (indexes differ between nodes).
func Entries(addrs map[uint32]netip.Addr, flows []loader.Flow) []ha.FlowEntry {
	out := make([]ha.FlowEntry, 0, len(flows))
	for _, f := range flows {
		addr, ok := addrs[f.Backend]
		if !ok {
			continue
		}
		out = append(out, ha.FlowEntry{Src: f.Src, Dst: f.Dst, Proto: uint8(f.Proto), Backend: addr})
	}
	return out
}

// Logger is what Apply logs to.
type Logger interface {
	Warn(msg string, args ...any)
}

// Apply writes synced entries with this node's backend indexes; an entry
// for a backend this node does not know is skipped and counted.
func Apply(host Host, dp Datapath, fs []ha.FlowEntry, log Logger) (applied, unknown int) {
	now := loader.MonotonicCoarseNow()
	for _, f := range fs {
		idx, ok := host.FlowBackend(f.Dst, loader.Proto(f.Proto), f.Backend)
		if !ok {
			unknown++
			continue
		}
		if err := dp.SetFlow(loader.Flow{Src: f.Src, Dst: f.Dst, Proto: loader.Proto(f.Proto), Backend: idx, LastSeenNano: now}); err != nil {
			log.Warn("write synced flow", "err", err)
			unknown++
			continue
		}
		applied++
	}
	return applied, unknown
}

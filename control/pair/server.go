package pair

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

// Limits of the sync server. Every request body is read before its MAC
// can be checked, so each kind may carry only what it needs, only peers
// may connect, and only a few at a time.
const (
	maxSyncConns     = 4
	maxFlowBatchBody = flowsync.BatchMax * ha.MaxFlowEntry // a batch of flowLoop's
	maxAnswer        = 4 << 10                             // a push's or a batch's answer: empty
	syncReadTimeout  = 5 * time.Second
	syncIdleTimeout  = 30 * time.Second
	syncHeaderBytes  = 8 << 10
)

// Reasons a sync connection or request is refused, counted in
// sluice_ha_sync_refused_total{reason}; a bad MAC or replay counts under
// the advert reasons' names.
var syncRefusals = []string{"unknown-peer", "busy", "too-large", "read", "mac", "replay", "malformed"}

// maxRequest bounds a request body of kind.
func maxRequest(kind string) int64 {
	switch kind {
	case "state":
		return state.MaxStateSize
	case "flows":
		return maxFlowBatchBody
	}
	return 0 // pulls and dumps carry nothing
}

// maxResponse bounds an answer of kind.
func (p *Pair) maxResponse(kind string) int64 {
	switch kind {
	case "state-pull":
		return 2 * state.MaxStateSize // the state, and its usable view
	case "flows-dump":
		n := p.opts.MaxFlows
		if n <= 0 {
			n = 2 * loader.DefaultFlowTableSize
		}
		return int64(n) * ha.MaxFlowEntry
	}
	return maxAnswer
}

func (p *Pair) refuseSync(reason string) { p.syncRefused.WithLabelValues(reason).Inc() }

// listenSync listens on the HA port of each local address that faces a
// peer (the source address the kernel picks to reach it): not on
// addresses clients reach, such as the VIPs.
func (p *Pair) listenSync() ([]net.Listener, error) {
	seen := map[netip.Addr]bool{}
	var out []net.Listener
	for _, peer := range p.opts.Peers {
		local, err := ha.SourceFor(peer.Addr())
		if err != nil {
			return nil, errors.Join(fmt.Errorf("ha sync listener: %w", err), closeAll(out))
		}
		if seen[local] {
			continue
		}
		seen[local] = true
		l, err := net.Listen("tcp", netip.AddrPortFrom(local, p.opts.Port).String())
		if err != nil {
			return nil, errors.Join(fmt.Errorf("ha sync listener on %s port %d: %w", local, p.opts.Port, err), closeAll(out))
		}
		out = append(out, l)
	}
	return out, nil
}

func closeAll(ls []net.Listener) error {
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// serveSync serves the sync listeners until ctx ends: only configured
// peers' connections are kept, maxSyncConns at most, with read and idle
// timeouts.
func (p *Pair) serveSync(ctx context.Context) {
	allowed := map[netip.Addr]bool{}
	for _, peer := range p.opts.Peers {
		allowed[peer.Addr().Unmap()] = true
	}
	srv := &http.Server{Handler: p.syncHandler(), ReadHeaderTimeout: syncReadTimeout, ReadTimeout: syncReadTimeout,
		WriteTimeout: dumpTimeout, IdleTimeout: syncIdleTimeout, MaxHeaderBytes: syncHeaderBytes}
	slots := make(chan struct{}, maxSyncConns) // shared by every listener
	for _, l := range p.tcp {
		go srv.Serve(&ha.PeerListener{Listener: l, Allowed: func(a netip.Addr) bool { return allowed[a] }, Refused: p.refuseSync, Slots: slots})
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
}

// readBody reads a request of kind within its bound; what is larger is
// refused unread.
func (p *Pair) readBody(r *http.Request, kind string) ([]byte, int, error) {
	body, code, reason, err := ha.ReadBody(r, maxRequest(kind))
	if err != nil {
		p.refuseSync(reason)
		return nil, code, fmt.Errorf("%s: %w", kind, err)
	}
	return body, 0, nil
}

// syncHandler serves the peer's state pushes and pulls and flow sync.
func (p *Pair) syncHandler() http.Handler {
	mux := http.NewServeMux()
	serve := func(pattern, kind string, fn func(body []byte) ([]byte, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			body, code, err := p.readBody(r, kind)
			if err != nil {
				http.Error(w, err.Error(), code)
				return
			}
			if _, err := p.verify.Verify(r.Header, kind, body); err != nil {
				p.refuseSync(ha.Reason(err))
				http.Error(w, "refused: "+ha.Reason(err), http.StatusForbidden)
				return
			}
			out, err := fn(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusConflict)
				return
			}
			ha.SignResponse(p.opts.Key, r.Header, w.Header(), kind, out)
			w.Write(out)
		})
	}
	serve("POST /ha/state", "state", p.servePush)
	serve("GET /ha/state-pull", "state-pull", func([]byte) ([]byte, error) {
		return json.Marshal(syncView{State: p.host.State(), Usable: p.host.UsableView()})
	})
	serve("POST /ha/flows", "flows", func(body []byte) ([]byte, error) {
		fs, err := ha.UnmarshalFlows(body)
		if err != nil {
			return nil, err
		}
		p.applyFlows(fs)
		return nil, nil
	})
	serve("GET /ha/flows-dump", "flows-dump", func([]byte) ([]byte, error) {
		flows, err := p.dp.Flows()
		if err != nil {
			return nil, err
		}
		return ha.MarshalFlows(p.flowEntries(flows)), nil
	})
	return mux
}

// servePush applies a state the master pushed.
func (p *Pair) servePush(body []byte) ([]byte, error) {
	if p.node.Role() == ha.Master {
		return nil, errors.New("this node is master: it keeps its own state")
	}
	var st state.State
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, err
	}
	if st.Revision <= p.host.Revision() {
		// A push that arrives late (held up while this node was
		// unreachable) must not roll back what a pull brought since.
		// Pulls, which answer this node's own request, always apply.
		return nil, nil
	}
	return nil, p.host.ApplyReplica(st)
}

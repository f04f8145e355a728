package pair

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/peer"
	"github.com/sluicelb/sluice/control/state"
)

// Limits of the sync server. Every request body is read before its MAC
// can be checked, so each kind may carry only what it needs, only peers
// may connect, and only a few at a time.
const (
	maxSyncConns = 4
	maxAnswer    = 4 << 10 // a push's answer: empty
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
	}
	return flowsync.Limit(kind) // pulls carry nothing
}

// maxResponse bounds an answer of kind.
func (p *Pair) maxResponse(kind string) int64 {
	switch kind {
	case "state-pull":
		return 2 * state.MaxStateSize // the state, and its usable view
	case "state":
		return maxAnswer
	}
	return flowsync.AnswerLimit(kind, p.opts.MaxFlows)
}

func (p *Pair) refuseSync(reason string) { p.syncRefused.WithLabelValues(reason).Inc() }

// listenSync listens on the HA port of each local address that faces a
// peer (the source address the kernel picks to reach it): not on
// addresses clients reach, such as the VIPs.
func (p *Pair) listenSync() ([]net.Listener, error) {
	seen := map[netip.Addr]bool{}
	var out []net.Listener
	for _, pe := range p.opts.Peers {
		local, err := peer.SourceFor(pe.Addr())
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
// peers' connections are kept, maxSyncConns at most from each address, with read and idle
// timeouts.
func (p *Pair) serveSync(ctx context.Context) {
	allowed := map[netip.Addr]bool{}
	for _, pe := range p.opts.Peers {
		allowed[pe.Addr().Unmap()] = true
	}
	p.srv.Serve(ctx, p.syncHandler(), p.tcp, func(a netip.Addr) bool { return allowed[a] }, maxSyncConns, dumpTimeout)
}

// syncHandler serves the peer's state pushes and pulls and flow sync.
func (p *Pair) syncHandler() http.Handler {
	mux := http.NewServeMux()
	p.srv.Handle(mux, "POST /ha/state", "state", p.servePush)
	p.srv.Handle(mux, "GET /ha/state-pull", "state-pull", func([]byte) ([]byte, error) {
		return json.Marshal(syncView{State: p.host.State(), Usable: p.host.UsableView()})
	})
	p.flows.Handle(mux, p.srv)
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

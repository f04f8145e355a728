package pair

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/peer"
	"github.com/sluicelb/sluice/control/state"
)

// committed is called after every committed change on this node.
func (p *Pair) Committed() {
	select {
	case p.pushq <- struct{}{}:
	default:
	}
}

// pushLoop follows committed revisions: the master updates its VIP
// addresses and streams the state to every peer.
func (p *Pair) pushLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.pushq:
		}
		p.roleMu.Lock()
		if p.node.Role() != ha.Master {
			p.roleMu.Unlock()
			continue
		}
		st := p.host.State()
		if err := p.owner.set(ctx, vipAddrs(st), nil, true); err != nil {
			p.log.Error("vip addresses", "err", err)
		}
		p.roleMu.Unlock()
		body, err := json.Marshal(st)
		if err != nil {
			continue
		}
		for _, peer := range p.opts.Peers {
			if _, err := p.call(ctx, http.MethodPost, peer, "state", body); err != nil {
				p.log.Debug("push state", "peer", peer, "revision", st.Revision, "err", err)
			}
		}
	}
}

// call sends a signed request of kind to peer and returns the verified
// response body.
func (p *Pair) call(ctx context.Context, method string, to netip.AddrPort, kind string, body []byte) ([]byte, error) {
	c := p.client
	if kind == "flows-dump" {
		c = p.bulk
	}
	return peer.Call(ctx, c, p.signer, p.opts.Key, method, peer.URL(to)+"/ha/"+kind, kind, body, p.maxResponse(kind))
}

// pull copies the master's state and, once per backup term, its whole
// connection table.
func (p *Pair) pull(peer netip.AddrPort) error {
	body, err := p.call(p.ctx, http.MethodGet, peer, "state-pull", nil)
	if err != nil {
		return err
	}
	var view syncView
	if err := json.Unmarshal(body, &view); err != nil {
		return fmt.Errorf("state from %s: %w", peer, err)
	}
	st := view.State
	if err := p.host.ApplyReplica(st); err != nil {
		return err
	}
	p.mu.Lock()
	p.masterUsable = append([]string{}, view.Usable...) // non-nil: pulled
	p.mu.Unlock()
	if p.flowsDone.Load() {
		return nil
	}
	applied, unknown, err := p.flows.Copy(p.ctx, peer)
	if err != nil {
		return err
	}
	p.flowsDone.Store(true)
	p.log.Info("flow table copied from master", "peer", peer, "entries", applied, "unknown", unknown)
	p.event(api.Event{Kind: "ha", Reason: fmt.Sprintf("ha: copied %d flows from %s (%d for unknown backends)", applied, peer, unknown), Revision: st.Revision})
	return nil
}

// invalidate drops the synced flag at once when this node's state or
// health view changes; checkSync re-derives it on its next tick.
func (p *Pair) Invalidate() { p.synced.Store(false) }

// syncView is what a backup pulls: the master's state and which backends
// it forwards to, so that the backup pre-empts only with the same view.
type syncView struct {
	State  state.State `json:"state"`
	Usable []string    `json:"usable"`
}

// peerUp says whether adverts arrive from peer.
func (p *Pair) peerUp(peer netip.AddrPort) bool {
	key := ha.PeerKey(peer.Addr())
	for _, pe := range p.node.Status(time.Now()).Peers {
		if pe.Addr == key {
			return pe.Up
		}
	}
	return false
}

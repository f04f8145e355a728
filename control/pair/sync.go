package pair

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/ha"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
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
func (p *Pair) call(ctx context.Context, method string, peer netip.AddrPort, kind string, body []byte) ([]byte, error) {
	c := p.client
	if kind == "flows-dump" {
		c = p.bulk
	}
	return ha.Call(ctx, c, p.signer, p.opts.Key, method, ha.PeerURL(peer)+"/ha/"+kind, kind, body, p.maxResponse(kind))
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
	body, err = p.call(p.ctx, http.MethodGet, peer, "flows-dump", nil)
	if err != nil {
		return err
	}
	fs, err := ha.UnmarshalFlows(body)
	if err != nil {
		return fmt.Errorf("flow table from %s: %w", peer, err)
	}
	applied, unknown := p.applyFlows(fs)
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

// applyFlows writes synced entries with this node's backend indexes.
func (p *Pair) applyFlows(fs []ha.FlowEntry) (applied, unknown int) {
	applied, unknown = flowsync.Apply(p.host, p.dp, fs, p.log)
	p.syncEntries.WithLabelValues("received", "applied").Add(float64(applied))
	p.syncEntries.WithLabelValues("received", "unknown").Add(float64(unknown))
	return applied, unknown
}

// flowEntries turns data-plane flows into synced entries.
func (p *Pair) flowEntries(flows []loader.Flow) []ha.FlowEntry {
	return flowsync.Entries(p.host.BackendAddrs(), flows)
}

// flowLoop hands each batch of connection-table writes to every peer's
// sender; a slow peer loses batches (counted), not the reader.
func (p *Pair) flowLoop(ctx context.Context, r FlowReader) {
	queues := map[netip.AddrPort]chan flowsync.Batch{}
	for _, peer := range p.opts.Peers {
		q := make(chan flowsync.Batch, 64)
		queues[peer] = q
		go p.sendFlows(ctx, peer, q)
	}
	flowsync.Batches(ctx, r, p.host.BackendAddrs, p.log, func(b flowsync.Batch) {
		for _, q := range queues {
			select {
			case q <- b:
			default:
				p.syncEntries.WithLabelValues("sent", "dropped").Add(float64(b.N))
			}
		}
	})
}

func (p *Pair) sendFlows(ctx context.Context, peer netip.AddrPort, q chan flowsync.Batch) {
	key := ha.PeerKey(peer.Addr())
	for {
		var b flowsync.Batch
		select {
		case <-ctx.Done():
			return
		case b = <-q:
		}
		if !p.peerUp(key) {
			p.syncEntries.WithLabelValues("sent", "dropped").Add(float64(b.N))
			continue
		}
		t0 := time.Now()
		_, err := p.call(ctx, http.MethodPost, peer, "flows", b.Body)
		p.log.Debug("flow batch", "peer", peer, "entries", b.N, "post", time.Since(t0), "queued", len(q), "age", loader.MonotonicNow()-b.Oldest)
		if err != nil {
			p.syncEntries.WithLabelValues("sent", "dropped").Add(float64(b.N))
			p.log.Debug("flow sync", "peer", peer, "err", err)
			continue
		}
		lag := loader.MonotonicNow() - b.Oldest
		p.syncLag.Observe(lag.Seconds())
		p.syncEntries.WithLabelValues("sent", "ok").Add(float64(b.N))
		p.mu.Lock()
		p.lastLag = lag
		p.mu.Unlock()
	}
}

func (p *Pair) peerUp(key string) bool {
	for _, pe := range p.node.Status(time.Now()).Peers {
		if pe.Addr == key {
			return pe.Up
		}
	}
	return false
}

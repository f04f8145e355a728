package control

import (
	"log/slog"
	"net/netip"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
)

// clusterHost is the daemon as its cluster node sees it (cluster.Host).
type clusterHost struct{ d *Daemon }

func (h clusterHost) ApplyReplica(next state.State) error { return h.d.applyReplica(next) }
func (h clusterHost) KeepLocal(st state.State) (state.State, error) {
	return h.d.store.Replace(st)
}
func (h clusterHost) State() state.State          { return h.d.State() }
func (h clusterHost) Status() (api.Status, error) { return h.d.Status() }
func (h clusterHost) Event(e api.Event)           { h.d.events.Add(e) }
func (h clusterHost) Elected()                    { h.d.checkPrimaries() }
func (h clusterHost) Log() *slog.Logger           { return h.d.log }
func (h clusterHost) LocalHealth() map[string]map[string]string {
	out := map[string]map[string]string{}
	v := h.d.applied.Load()
	if v == nil {
		return out
	}
	for _, sv := range v.State.VIPs {
		k, _ := state.ParseVIPKey(sv.VIP)
		m := map[string]string{}
		for _, b := range sv.Backends {
			m[b.Addr] = "down"
			if v.Of(k, netip.MustParseAddr(b.Addr)).Health.State == health.Up {
				m[b.Addr] = "up"
			}
		}
		out[sv.VIP] = m
	}
	return out
}

// Reapply applies the state again under the cluster's new verdict.
func (h clusterHost) Reapply() {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	if _, err := h.d.applyLocked(h.d.ctx); err != nil {
		h.d.log.Error("cluster: apply the cluster's health verdict", "err", err)
	}
}

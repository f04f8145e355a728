package control

import (
	"net/netip"
	"slices"

	"github.com/sluicelb/sluice/control/pair"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

// pairHost is the daemon as its LB pair sees it (pair.Host).
type pairHost struct{ d *Daemon }

func (h pairHost) State() state.State                  { return h.d.State() }
func (h pairHost) Revision() uint64                    { return h.d.revision() }
func (h pairHost) ApplyReplica(next state.State) error { return h.d.applyReplica(next) }

// UsableView lists "VIP backend" for every backend the data plane may use.
func (h pairHost) UsableView() []string {
	var out []string
	for _, v := range h.d.State().VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		view, _, _ := h.d.rec.View(k)
		for a, bv := range view {
			if bv.Usable {
				out = append(out, v.VIP+" "+a.String())
			}
		}
	}
	slices.Sort(out)
	return out
}

func (h pairHost) FlowBackend(dst netip.AddrPort, proto loader.Proto, addr netip.Addr) (uint32, bool) {
	return h.d.rec.FlowBackend(dst, proto, addr)
}

func (h pairHost) BackendAddrs() map[uint32]netip.Addr {
	refs := h.d.rec.BackendRefs()
	out := make(map[uint32]netip.Addr, len(refs))
	for idx, ref := range refs {
		out[idx] = ref.Addr
	}
	return out
}

// pairDatapath is the data plane as the pair sees it (pair.Datapath).
type pairDatapath struct{ *loader.Datapath }

func (p pairDatapath) FlowEvents() (pair.FlowReader, error) {
	r, err := p.Datapath.FlowEvents()
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return r, nil
}

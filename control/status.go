package control

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/reconcile"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
)

// Status reads the desired state, health and the kernel's maps.
func (c *core) Status() (api.Status, error) {
	lk := c.Look()
	cur := lk.State
	out := api.Status{Revision: cur.Revision, Role: c.topo.Role(), Iface: c.iface,
		Uptime: time.Since(c.started).Round(time.Second).String(), VIPs: []api.VIPStatus{}}
	if hs := c.topo.HAStatus(); hs.Enabled {
		out.HA = &hs
	}
	for _, v := range cur.VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		vs := api.VIPStatus{VIP: v.VIP, Forward: v.Forward, RingSize: v.RingSize, MinActive: v.MinActive,
			Policy: v.Policy, Primary: v.Primary, Epoch: v.Epoch, Backends: []api.BackendStatus{}}
		view, id, ok := c.rec.View(k)
		vs.RingRebuilds = c.rec.Rebuilds()[k]
		slots := map[uint32]int{}
		if ok {
			if n, err := c.dp.VIPCounter(id); err == nil {
				vs.Packets, vs.Bytes = n.Packets, n.Bytes
			}
			if ring, err := c.rec.ReadRing(k); err == nil {
				// Hash each slot's backend address, not its local index:
				// indexes differ between nodes, the addresses must not.
				addrOf := map[uint32][16]byte{}
				for a, bv := range view {
					addrOf[bv.Index] = a.As16()
				}
				h := sha256.New()
				for _, s := range ring {
					slots[s]++
					a := addrOf[s]
					h.Write(a[:])
				}
				vs.RingSHA256 = hex.EncodeToString(h.Sum(nil))
			}
		}
		for _, b := range v.Backends {
			addr := netip.MustParseAddr(b.Addr)
			bs := api.BackendStatus{Addr: b.Addr, Weight: b.Weight, Standby: b.Standby, Priority: b.Priority}
			bv := view[addr]
			bs.Usable = bv.Usable
			bs.RingSlots = slots[bv.Index]
			if bv.Index != 0 {
				if n, err := c.dp.BackendCounter(bv.Index); err == nil {
					bs.Packets, bs.Bytes = n.Packets, n.Bytes
				}
			}
			backendState(lk.Of(k, addr), b, bv, &bs)
			vs.Backends = append(vs.Backends, bs)
		}
		out.VIPs = append(out.VIPs, vs)
	}
	return out, nil
}

// Counters reads every backend's packet counter, by VIP: a cheap view for
// sampling (status also reads and hashes the rings).
func (c *core) Counters() (map[string]map[string]uint64, error) {
	st := c.State()
	out := map[string]map[string]uint64{}
	for _, v := range st.VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		view, _, _ := c.rec.View(k)
		m := map[string]uint64{}
		for _, b := range v.Backends {
			bv := view[netip.MustParseAddr(b.Addr)]
			if bv.Index == 0 {
				continue
			}
			n, err := c.dp.BackendCounter(bv.Index)
			if err != nil {
				return nil, err
			}
			m[b.Addr] = n.Packets
		}
		out[v.VIP] = m
	}
	return out, nil
}

// backendState fills in a backend's state, weights and the reasons for
// them from its view: its health check's, its agent's and its weight's.
func backendState(in view.Backend, b state.Backend, bv reconcile.BackendView, bs *api.BackendStatus) {
	hs := in.Health.State
	bs.LastChange, bs.Reason = in.Health.Since, in.Health.Reason
	wv := in.Weight
	bs.Agent, bs.Load, bs.WeightReason = wv.Agent, wv.Load, wv.Reason
	bs.EffectiveWeight = float64(b.Weight) * float64(wv.Percent) / 100
	switch {
	case b.Disabled:
		bs.State, bs.Reason = "disabled", "disabled by the operator"
	case hs != health.Up && wv.Down:
		bs.State, bs.Reason = "down", "health: "+bs.Reason+"; "+wv.Reason
	case hs != health.Up:
		bs.State = "down"
	case wv.Down:
		bs.State, bs.Reason = "down", wv.Reason
	case b.Drain || b.Weight == 0 || wv.Drain:
		bs.State = "draining"
		if wv.Drain {
			bs.Reason = wv.Reason
		}
	default:
		bs.State = "up"
	}
	if bs.State != "up" || !bv.InRing {
		bs.EffectiveWeight = 0
	}
	if bv.MACErr != nil {
		bs.Reason = bv.MACErr.Error()
	}
}

// Ring reads VIP k's ring back from the kernel, slot by slot.
func (c *core) Ring(k state.VIPKey) (api.RingResponse, error) {
	if st := c.State(); st.FindVIP(k) < 0 {
		return api.RingResponse{}, state.NotFound("vip %s: no such vip", k)
	}
	ring, err := c.rec.ReadRing(k)
	if err != nil {
		return api.RingResponse{}, err
	}
	bes, err := c.dp.Backends()
	if err != nil {
		return api.RingResponse{}, err
	}
	out := api.RingResponse{VIP: k.String(), RingSize: len(ring), Slots: make([]string, len(ring))}
	for i, s := range ring {
		if b, ok := bes[s]; ok && s != 0 {
			out.Slots[i] = b.Addr.String()
		}
	}
	return out, nil
}

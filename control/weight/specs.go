package weight

import (
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
)

// Specs are the engine's specs for every backend of a desired state
// (valid, normalised). dial, when set, opens the agents' and metrics'
// connections.
func Specs(s state.State, dial health.Dialer) []Spec {
	var out []Spec
	for _, v := range s.VIPs {
		for _, b := range v.Backends {
			sp := Spec{Key: Key{VIP: v.VIP, Addr: b.Addr}, Active: !b.Drain && !b.Disabled && b.Weight > 0,
				Timeout: time.Duration(b.Check.Timeout), SlowStart: time.Duration(b.SlowStart), Rise: b.Check.Rise, Fall: b.Check.Fall}
			if v.Policy == state.PolicyFailover {
				sp.SlowStart = 0 // one primary takes everything: nothing to share
			}
			if a := b.Agent; a != nil {
				addr := netip.MustParseAddr(b.Addr)
				sp.Agent = &health.Agent{Addr: netip.AddrPortFrom(addr, a.Port), Send: a.Send, Dial: dial}
				sp.AgentEvery = time.Duration(a.Interval)
			}
			if l := b.Load; l != nil {
				if m, err := health.ParseLoadMetric(l.Metric); err == nil {
					m.Dial = dial
					sp.Load, sp.LoadEvery, sp.LoadTarget = &m, time.Duration(l.Interval), l.Target
				}
			}
			out = append(out, sp)
		}
	}
	return out
}

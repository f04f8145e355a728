package health

import (
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/control/state"
)

// For is the check of backend b of the VIP whose key is vip, from the
// model: a probe of the backend's address, or of the VIP through the data
// plane to the backend (check via vip). The model has validated b.
func For(vip state.VIPKey, b state.Backend) Check {
	c := b.Check
	port := c.Port
	if port == 0 {
		port = vip.Port
	}
	t, _ := state.ParseCheckType(c.Type)
	addr := netip.MustParseAddr(b.Addr)
	target, via := netip.AddrPortFrom(addr, port), netip.Addr{}
	if c.Via == state.CheckViaVIP {
		target, via = netip.AddrPortFrom(vip.Addr, port), addr
	}
	return Check{
		Probe: Probe{Type: t, Addr: target, Via: via, Method: c.Method, Path: c.Path,
			Codes: c.Codes, BodyContain: c.Body, TLSVerify: c.TLSVerify, Payload: c.Payload, Service: c.Service, TLS: c.TLS},
		Settings: Settings{Interval: time.Duration(c.Interval), Timeout: time.Duration(c.Timeout),
			FastInter: time.Duration(c.FastInter), Rise: c.Rise, Fall: c.Fall, MarkDown: c.OnError == "mark-down"},
	}
}

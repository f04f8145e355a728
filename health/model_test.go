package health

import (
	"fmt"
	"testing"

	"github.com/sluicelb/sluice/control/state"
)

// TestCheckVia: a backend's check goes where its check.via says, or its
// VIP's check_via when it says nothing: to the VIP's address through the
// data plane (the probe names the backend it must reach), or to the
// backend's own address.
func TestCheckVia(t *testing.T) {
	s := state.State{VIPs: []state.VIP{
		{VIP: "10.0.0.1:80/tcp", CheckVia: "VIP", Backends: []state.Backend{{Addr: "10.0.0.2"}, {Addr: "10.0.0.3", Check: state.Check{Via: "addr"}}}},
		{VIP: "10.0.0.1:443/tcp", CheckVia: "addr", Backends: []state.Backend{{Addr: "10.0.0.2"}, {Addr: "10.0.0.3", Check: state.Check{Via: "vip", Port: 443}}}},
		{VIP: "10.0.0.1:0/tcp", Backends: []state.Backend{{Addr: "10.0.0.2", Check: state.Check{Via: "vip", Port: 22}}}},
	}}
	s.Normalize()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ // vip backend -> probe target, via
		"10.0.0.1:0/tcp 10.0.0.2":   "10.0.0.1:22 via 10.0.0.2",
		"10.0.0.1:443/tcp 10.0.0.2": "10.0.0.2:443 via invalid IP",
		"10.0.0.1:443/tcp 10.0.0.3": "10.0.0.1:443 via 10.0.0.3",
		"10.0.0.1:80/tcp 10.0.0.2":  "10.0.0.1:80 via 10.0.0.2",
		"10.0.0.1:80/tcp 10.0.0.3":  "10.0.0.3:80 via invalid IP",
	}
	for _, v := range s.VIPs {
		k, _ := state.ParseVIPKey(v.VIP)
		for _, b := range v.Backends {
			p := For(k, b).Probe
			if got := fmt.Sprintf("%s via %s", p.Addr, p.Via); got != want[v.VIP+" "+b.Addr] {
				t.Errorf("%s %s: probe %s, want %s", v.VIP, b.Addr, got, want[v.VIP+" "+b.Addr])
			}
		}
	}
	for _, v := range s.VIPs { // sorted: :0, :443 (check_via addr, the default), :80
		if want := map[string]string{"10.0.0.1:80/tcp": "vip"}[v.VIP]; v.CheckVia != want {
			t.Errorf("%s: check_via normalised to %q, want %q", v.VIP, v.CheckVia, want)
		}
	}
}

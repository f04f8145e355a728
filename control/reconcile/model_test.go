package reconcile

import (
	"net/netip"
	"testing"

	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

// TestModelMatchesTheDataPlane: the model's limits, defaults, protocols
// and forwarding modes are the data plane's, and DataKey maps a key
// field for field (the model owns its types; this is where they meet).
func TestModelMatchesTheDataPlane(t *testing.T) {
	for _, c := range []struct {
		what        string
		model, data int64
	}{
		{"max VIPs", state.MaxVIPs, loader.MaxVIPs},
		{"max backends", state.MaxBackends, loader.MaxBackends},
		{"max ring size", state.MaxRingSize, loader.MaxRingSize},
		{"default GUE port", state.DefaultGUEPort, loader.DefaultGUEPort},
		{"default UDP timeout", int64(state.DefaultUDPTimeout), int64(loader.DefaultUDPTimeout)},
		{"tcp", int64(state.TCP), int64(loader.TCP)},
		{"udp", int64(state.UDP), int64(loader.UDP)},
	} {
		if c.model != c.data {
			t.Errorf("%s: the model has %d, the data plane %d", c.what, c.model, c.data)
		}
	}
	for _, f := range []string{state.ForwardIPIP, state.ForwardGUE, state.ForwardDSR} {
		if got, err := loader.ParseForward(f); err != nil || got.String() != f {
			t.Errorf("forward %s: the data plane reads %v, %v", f, got, err)
		}
	}
	k := state.VIPKey{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443, Proto: state.UDP}
	if got := DataKey(k); got.String() != k.String() || modelKey(got) != k {
		t.Errorf("DataKey(%v) = %v, back %v", k, got, modelKey(got))
	}
}

package flowsync

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestFlowsRoundTrip(t *testing.T) {
	fs := []FlowEntry{
		{Src: netip.MustParseAddrPort("10.77.0.1:40000"), Dst: netip.MustParseAddrPort("10.77.1.100:80"), Proto: 6, Backend: netip.MustParseAddr("10.77.0.11")},
		{Src: netip.MustParseAddrPort("[fd77::1]:5353"), Dst: netip.MustParseAddrPort("[fd77:1::100]:53"), Proto: 17, Backend: netip.MustParseAddr("fd77::12")},
		{Src: netip.MustParseAddrPort("[fd77::1]:1"), Dst: netip.MustParseAddrPort("[fd77:1::100]:443"), Proto: 6, Backend: netip.MustParseAddr("10.77.0.13")},
	}
	b := MarshalFlows(fs)
	if len(b) != 19+55+43 {
		t.Fatalf("encoded %d bytes", len(b))
	}
	got, err := UnmarshalFlows(b)
	if err != nil || !reflect.DeepEqual(got, fs) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range [][]byte{b[:len(b)-1], {4, 4, 6}, {5, 4, 6, 0, 0, 0, 0}, append([]byte{4, 4, 1, 0, 0, 0, 0}, make([]byte, 12)...)} {
		if _, err := UnmarshalFlows(bad); err == nil {
			t.Errorf("accepted %x", bad)
		}
	}
}

// FuzzFlows: no input panics, and what is accepted re-encodes to itself.
func FuzzFlows(f *testing.F) {
	f.Add(MarshalFlows([]FlowEntry{{Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("10.0.0.2:2"), Proto: 6, Backend: netip.MustParseAddr("fd00::1")}}))
	f.Add([]byte{6, 6, 17})
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := UnmarshalFlows(b)
		if err != nil {
			return
		}
		if again := MarshalFlows(fs); string(again) != string(b) {
			t.Fatalf("%x re-encodes to %x", b, again)
		}
	})
}

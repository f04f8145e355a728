package ha

import (
	"errors"
	"net/http"
	"net/netip"
	"reflect"
	"testing"
)

func TestSyncSigning(t *testing.T) {
	s := &Signer{Key: key, Node: "lb-a", Boot: 5}
	v := &Verifier{Key: key}
	body := []byte("revision 7")
	h := http.Header{}
	s.Sign(h, "state", body)
	if node, err := v.Verify(h, "state", body); err != nil || node != "lb-a" {
		t.Fatalf("verify: %q %v", node, err)
	}
	cases := []struct {
		name string
		h    http.Header
		kind string
		body []byte
		key  []byte
		want error
	}{
		{"replayed", h, "state", body, key, ErrReplay},
		{"other body", signed(s, "state", body), "state", []byte("revision 8"), key, ErrMAC},
		{"other kind", signed(s, "state", body), "flows", body, key, ErrMAC},
		{"wrong key", signed(s, "state", body), "state", body, []byte("other"), ErrMAC},
		{"no headers", http.Header{}, "state", body, key, ErrMalformed},
	}
	for _, c := range cases {
		vv := v
		if string(c.key) != string(key) {
			vv = &Verifier{Key: c.key}
		}
		if _, err := vv.Verify(c.h, c.kind, c.body); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// A response is bound to its request.
	req1, req2 := signed(s, "dump", nil), signed(s, "dump", nil)
	resp := http.Header{}
	SignResponse(key, req1, resp, "dump", body)
	if err := VerifyResponse(key, req1, resp, "dump", body); err != nil {
		t.Fatal(err)
	}
	if err := VerifyResponse(key, req2, resp, "dump", body); !errors.Is(err, ErrMAC) {
		t.Fatalf("response replayed to another request: %v", err)
	}
}

func signed(s *Signer, kind string, body []byte) http.Header {
	h := http.Header{}
	s.Sign(h, kind, body)
	return h
}

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

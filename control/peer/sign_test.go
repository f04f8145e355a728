package peer

import (
	"errors"
	"net/http"
	"testing"
)

var key = []byte("0123456789abcdef0123456789abcdef")

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

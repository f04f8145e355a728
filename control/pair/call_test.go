package pair

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/control/flowsync"
	"github.com/sluicelb/sluice/control/peer"
	"github.com/sluicelb/sluice/control/state"
)

// TestAnswersAreBounded: a peer's answer larger than its kind may carry is
// refused unread, before its MAC is checked; one within the bound is read.
func TestAnswersAreBounded(t *testing.T) {
	key := []byte("0123456789abcdef")
	sizes := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := strings.TrimPrefix(r.URL.Path, "/ha/")
		body := bytes.Repeat([]byte("x"), sizes[kind])
		peer.SignResponse(key, r.Header, w.Header(), kind, body)
		w.Write(body)
	}))
	defer srv.Close()
	to := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	p := &Pair{opts: Options{Key: key, MaxFlows: 1000}, signer: &peer.Signer{Key: key, Node: "a", Boot: 1}, client: srv.Client(), bulk: srv.Client()}
	cases := []struct {
		kind string
		size int
		ok   bool
	}{
		{"state-pull", 2 * state.MaxStateSize, true},
		{"state-pull", 2*state.MaxStateSize + 1, false},
		{"flows-dump", 1000 * flowsync.MaxFlowEntry, true},
		{"flows-dump", 1000*flowsync.MaxFlowEntry + 1, false},
		{"flows", maxAnswer, true},
		{"flows", 64 << 20, false},
		{"state", maxAnswer + 1, false},
	}
	for _, c := range cases {
		sizes[c.kind] = c.size
		out, err := p.call(context.Background(), http.MethodGet, to, c.kind, nil)
		switch {
		case c.ok && (err != nil || len(out) != c.size):
			t.Errorf("%s of %d bytes: %d read, %v", c.kind, c.size, len(out), err)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), "refused at the bound")):
			t.Errorf("%s of %d bytes: %v, want it refused at the bound", c.kind, c.size, err)
		}
	}
}

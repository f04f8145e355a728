package flowsync

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sluicelb/sluice/loader"
)

// node is one syncer's world: its table, its backend indexes (which
// differ between nodes) and its peer list.
type node struct {
	mu      sync.Mutex
	table   map[[2]netip.AddrPort]uint32
	indexOf map[netip.Addr]uint32
	peers   []netip.Addr
	known   bool
	events  chan loader.FlowEvent
	closed  chan struct{}
	once    sync.Once
}

func newNode(indexes map[string]uint32) *node {
	n := &node{table: map[[2]netip.AddrPort]uint32{}, indexOf: map[netip.Addr]uint32{}, known: true,
		events: make(chan loader.FlowEvent, 16), closed: make(chan struct{})}
	for a, i := range indexes {
		n.indexOf[netip.MustParseAddr(a)] = i
	}
	return n
}

func (n *node) PeerAddrs() ([]netip.Addr, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]netip.Addr(nil), n.peers...), n.known
}
func (n *node) FlowBackend(_ netip.AddrPort, _ loader.Proto, a netip.Addr) (uint32, bool) {
	i, ok := n.indexOf[a]
	return i, ok
}
func (n *node) BackendAddrs() map[uint32]netip.Addr {
	out := map[uint32]netip.Addr{}
	for a, i := range n.indexOf {
		out[i] = a
	}
	return out
}
func (n *node) Flows() ([]loader.Flow, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []loader.Flow
	for k, b := range n.table {
		out = append(out, loader.Flow{Src: k[0], Dst: k[1], Proto: loader.TCP, Backend: b})
	}
	return out, nil
}
func (n *node) SetFlow(f loader.Flow) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.table[[2]netip.AddrPort{f.Src, f.Dst}] = f.Backend
	return nil
}
func (n *node) backend(src, dst netip.AddrPort) (uint32, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	b, ok := n.table[[2]netip.AddrPort{src, dst}]
	return b, ok
}
func (n *node) Read(deadline time.Time) (loader.FlowEvent, error) {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		timeout = time.After(time.Until(deadline))
	}
	select {
	case ev := <-n.events:
		return ev, nil
	case <-timeout:
		return loader.FlowEvent{}, os.ErrDeadlineExceeded
	case <-n.closed:
		return loader.FlowEvent{}, loader.ErrClosed
	}
}
func (n *node) Close() error { n.once.Do(func() { close(n.closed) }); return nil }

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

var key = []byte("flowsync-unit-test-key-0123")

func start(t *testing.T, ctx context.Context, name, addr string, port uint16, n *node) *Syncer {
	t.Helper()
	s, err := New(Options{Node: name, Key: key, Boot: 1, Local: netip.MustParseAddr(addr), Port: port}, n, n, n,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	go s.Run(ctx, n)
	return s
}

func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSyncBetweenTwoNodes: a write on A reaches B under B's own index
// for the same backend address; B, started later, first copies A's
// whole table; requests from a non-peer, with a wrong key, or too large
// are refused and counted.
func TestSyncBetweenTwoNodes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port := freePort(t)
	a := newNode(map[string]uint32{"10.0.0.11": 1, "10.0.0.12": 2})
	b := newNode(map[string]uint32{"10.0.0.11": 7, "10.0.0.12": 9})
	a.peers, b.peers = []netip.Addr{netip.MustParseAddr("127.0.0.2")}, []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	vip := netip.MustParseAddrPort("10.77.1.100:80")
	old := netip.MustParseAddrPort("10.78.0.1:40000")
	a.SetFlow(loader.Flow{Src: old, Dst: vip, Proto: loader.TCP, Backend: 2})
	sa := start(t, ctx, "a", "127.0.0.1", port, a)
	sb := start(t, ctx, "b", "127.0.0.2", port, b)
	eventually(t, "B copied A's table", sb.Copied)
	if got, ok := b.backend(old, vip); !ok || got != 9 {
		t.Fatalf("B's copy of A's flow: backend %d (%v), want 9 (10.0.0.12 here)", got, ok)
	}
	fresh := netip.MustParseAddrPort("10.78.0.1:40001")
	a.events <- loader.FlowEvent{Flow: loader.Flow{Src: fresh, Dst: vip, Proto: loader.TCP, Backend: 1}, At: loader.MonotonicNow()}
	eventually(t, "A's new flow on B", func() bool { got, ok := b.backend(fresh, vip); return ok && got == 7 })

	url := "http://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String() + "/flowsync/flows"
	// From 127.0.0.3, no peer of A's: closed before anything is read.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 2 * time.Second}
	if _, err := hc.Post(url, "application/octet-stream", bytes.NewReader([]byte("x"))); err == nil {
		t.Fatal("a non-peer's request was answered")
	}
	eventually(t, "unknown-peer counted", func() bool { return value(sa.refused.WithLabelValues("unknown-peer")) == 1 })
	// From B's address: a request without a valid MAC, and one too large.
	d = net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	hc = &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 2 * time.Second}
	for _, c := range []struct {
		body   []byte
		status int
		reason string
	}{
		{[]byte("not signed"), http.StatusForbidden, "malformed"},
		{make([]byte, maxBatchBody+1), http.StatusRequestEntityTooLarge, "too-large"},
	} {
		resp, err := hc.Post(url, "application/octet-stream", bytes.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status || value(sa.refused.WithLabelValues(c.reason)) != 1 {
			t.Errorf("%d bytes: status %d, refused{%s} %v; want %d and 1", len(c.body), resp.StatusCode, c.reason,
				value(sa.refused.WithLabelValues(c.reason)), c.status)
		}
	}
	if n := value(sb.link.entries.WithLabelValues("received", "applied")); n != 1 {
		t.Errorf("B applied %v pushed entries, want 1", n)
	}
}
